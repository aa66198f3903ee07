"""Secret settings read from the file named by `<VARIABLE>_FILE` (a mounted Kubernetes Secret)."""

from __future__ import annotations

import dataclasses

import pytest
from llmesh.kit.config import ConfigError, ServerSettings, load_settings, setting, settings_table

pytestmark = pytest.mark.timeout(10)


def _token_check(value: str) -> str | None:
    return None if not value or len(value) >= 16 else "must be at least 16 characters"


@dataclasses.dataclass(frozen=True)
class Settings(ServerSettings):
    token: str = setting("LLMESH_TEST_TOKEN", "", "a bearer token", _token_check, secret=True)
    limit: int = setting("LLMESH_TEST_LIMIT", 1, "a plain setting", secret=False)


def test_secret_is_read_from_the_file_and_its_trailing_newline_stripped(tmp_path):
    path = tmp_path / "token"
    path.write_text("s3cret-token-0123456789\n")
    assert load_settings(Settings, environ={"LLMESH_TEST_TOKEN_FILE": str(path)}).token == "s3cret-token-0123456789"
    path.write_text("s3cret-token-0123456789\r\n\n")
    assert load_settings(Settings, environ={"LLMESH_TEST_TOKEN_FILE": str(path)}).token == "s3cret-token-0123456789"
    # Inner and leading characters are the secret's own.
    path.write_text(" a token with spaces \n")
    assert load_settings(Settings, environ={"LLMESH_TEST_TOKEN_FILE": str(path)}).token == " a token with spaces "


def test_the_variable_itself_still_works_and_an_empty_file_variable_is_unset():
    loaded = load_settings(
        Settings, environ={"LLMESH_TEST_TOKEN": "direct-token-0123456789", "LLMESH_TEST_TOKEN_FILE": ""}
    )
    assert loaded.token == "direct-token-0123456789"
    assert load_settings(Settings, environ={}).token == ""


def test_both_set_is_a_config_error_naming_both(tmp_path):
    path = tmp_path / "token"
    path.write_text("from-the-file-0123456789")
    with pytest.raises(ConfigError) as exc:
        load_settings(
            Settings, environ={"LLMESH_TEST_TOKEN": "direct-token-0123456789", "LLMESH_TEST_TOKEN_FILE": str(path)}
        )
    assert "LLMESH_TEST_TOKEN and LLMESH_TEST_TOKEN_FILE are both set" in str(exc.value)
    assert "0123456789" not in str(exc.value)


def test_unreadable_file_is_a_config_error_naming_it(tmp_path):
    missing = tmp_path / "no-such-token"
    with pytest.raises(ConfigError) as exc:
        load_settings(Settings, environ={"LLMESH_TEST_TOKEN_FILE": str(missing), "LLMESH_TEST_LIMIT": "x"})
    text = str(exc.value)
    assert f"LLMESH_TEST_TOKEN_FILE='{missing}'" in text and "No such file or directory" in text
    assert "LLMESH_TEST_LIMIT" in text  # every bad variable is still reported at once
    with pytest.raises(ConfigError) as exc:
        load_settings(Settings, environ={"LLMESH_TEST_TOKEN_FILE": str(tmp_path)})  # a folder, not a file
    assert f"LLMESH_TEST_TOKEN_FILE='{tmp_path}'" in str(exc.value)


def test_a_value_from_a_file_is_checked_like_any_other_and_never_shown(tmp_path):
    path = tmp_path / "token"
    path.write_text("short\n")
    with pytest.raises(ConfigError) as exc:
        load_settings(Settings, environ={"LLMESH_TEST_TOKEN_FILE": str(path)})
    assert "LLMESH_TEST_TOKEN=<hidden>: must be at least 16 characters" in str(exc.value)
    assert "short" not in str(exc.value)


def test_only_secret_settings_have_a_file_variant(tmp_path):
    path = tmp_path / "limit"
    path.write_text("5")
    assert load_settings(Settings, environ={"LLMESH_TEST_LIMIT_FILE": str(path)}).limit == 1


def test_overrides_win_over_the_file(tmp_path):
    loaded = load_settings(
        Settings, environ={"LLMESH_TEST_TOKEN_FILE": str(tmp_path / "absent")}, token="override-0123456789"
    )
    assert loaded.token == "override-0123456789"


def test_the_table_names_the_file_variant_of_secrets_only():
    table = settings_table(Settings)
    assert "`LLMESH_TEST_TOKEN_FILE`" in table
    assert "LLMESH_TEST_LIMIT_FILE" not in table
