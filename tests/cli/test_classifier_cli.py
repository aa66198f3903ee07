"""`llmesh classifier train` without its data: the dev set is not in the repository, so a missing
file gets one clear message naming --data, the environment variable and the columns."""

from __future__ import annotations

import pytest
from llmesh.cli.classifier import TRAIN_COLUMNS, TRAIN_DATA_ENV
from llmesh.cli.main import main

pytestmark = pytest.mark.timeout(60)


def test_a_missing_data_file_names_what_to_pass(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(TRAIN_DATA_ENV, raising=False)
    missing = tmp_path / "answers.csv"
    assert main(["classifier", "train", "--data", str(missing), "--out", str(tmp_path / "models")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"llmesh classifier train: no training data at {missing} (from --data).")
    assert "--data FILE" in err and TRAIN_DATA_ENV in err and TRAIN_COLUMNS in err
    assert "Traceback" not in err
    assert not (tmp_path / "models").exists()

    monkeypatch.setenv(TRAIN_DATA_ENV, str(missing))
    assert main(["classifier", "train", "--out", str(tmp_path / "models")]) == 2
    assert f"no training data at {missing} (from {TRAIN_DATA_ENV})" in capsys.readouterr().err


def test_a_file_without_the_columns_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    data = tmp_path / "answers.csv"
    data.write_text("question,answer\nwhat?,yes\n")
    monkeypatch.setenv(TRAIN_DATA_ENV, str(data))
    assert main(["classifier", "train", "--out", str(tmp_path / "models")]) == 2
    err = capsys.readouterr().err
    assert "missing columns" in err and f"expected the header {TRAIN_COLUMNS}" in err and err.count("\n") == 1


def test_the_help_documents_the_columns_and_the_variable(capsys):
    with pytest.raises(SystemExit):
        main(["classifier", "train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert TRAIN_COLUMNS in out and f"${TRAIN_DATA_ENV}" in out
