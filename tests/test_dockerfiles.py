"""Each service's Dockerfile, checked statically (no container engine runs here): every COPY source
exists in the build context (and .dockerignore keeps it), the entrypoint module exists, the image's
user is not root, its bases are pinned, it has a HEALTHCHECK on the gRPC health service, and no
compiler reaches the final image. The checker is shown to catch each fault on a bad Dockerfile."""

from __future__ import annotations

import dataclasses
import fnmatch
import glob
import pathlib
import re
import shlex
import subprocess
import sys
import tomllib

import pytest
from llmesh.kit.defaults import DEFAULT_PORTS, SERVICES

pytestmark = pytest.mark.timeout(120)

ROOT = pathlib.Path(__file__).resolve().parents[1]
COMPILERS = re.compile(r"\b(build-essential|gcc|g\+\+|clang|cmake|make|ninja-build|cc|c\+\+|gfortran)\b")
FULL_VERSION = re.compile(r"\d+\.\d+\.\d+")


@dataclasses.dataclass
class Instruction:
    keyword: str
    args: str


@dataclasses.dataclass
class Stage:
    name: str
    base: str  # an image reference, or the name of an earlier stage
    instructions: list[Instruction]


def parse(text: str) -> tuple[dict[str, str], list[Stage]]:
    """The global ARG defaults and the stages of a Dockerfile (continuations joined, comments dropped)."""
    lines, current = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    if current:
        lines.append(current)
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in lines:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            parts = args.split()
            base = parts[0]
            for name, value in global_args.items():
                base = base.replace(f"${{{name}}}", value).replace(f"${name}", value)
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(name, base, []))
        elif not stages:
            if keyword == "ARG":
                name, _, value = args.partition("=")
                global_args[name.strip()] = value.strip().strip('"')
        else:
            stages[-1].instructions.append(Instruction(keyword, args.strip()))
    return global_args, stages


def _flags(args: str) -> tuple[dict[str, str], list[str]]:
    words = shlex.split(args)
    flags = {}
    while words and words[0].startswith("--"):
        key, _, value = words.pop(0)[2:].partition("=")
        flags[key] = value
    return flags, words


def _json_or_shell(args: str) -> list[str]:
    args = args.strip()
    if args.startswith("["):
        import json

        return json.loads(args)
    return shlex.split(args)


def _dockerignore(root: pathlib.Path) -> list[str]:
    path = root / ".dockerignore"
    if not path.is_file():
        return []
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def ignored(rel: str, patterns: list[str]) -> bool:
    """Whether the build context leaves `rel` out (.dockerignore: last matching pattern wins;
    a folder's pattern covers what is inside it)."""
    result = False
    parts = rel.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        if any(fnmatch.fnmatch(p, pattern) or fnmatch.fnmatch(p, pattern.replace("**/", "")) for p in prefixes):
            result = not negate
    return result


def chain(stages: list[Stage], stage: Stage) -> list[Stage]:
    """The stage and the earlier stages it is built FROM, oldest first."""
    by_name = {s.name: s for s in stages}
    found = [stage]
    while found[0].base in by_name:
        found.insert(0, by_name[found[0].base])
    return found


def image_stages(stages: list[Stage]) -> list[Stage]:
    """Stages that become images: those no other stage copies files from."""
    sources = {
        _flags(i.args)[0].get("from")
        for s in stages
        for i in s.instructions
        if i.keyword == "COPY" and "from" in _flags(i.args)[0]
    }
    return [s for s in stages if s.name not in sources]


def dockerfile_problems(text: str, service: str, root: pathlib.Path = ROOT) -> list[str]:
    """Every fault of the Dockerfile of `service`, for a build context at `root`."""
    problems: list[str] = []
    _, stages = parse(text)
    if not stages:
        return ["no FROM"]
    names = {s.name for s in stages}
    patterns = _dockerignore(root)
    for stage in stages:
        if stage.base in names:
            continue
        image, _, digest = stage.base.partition("@")
        tag = image.rsplit("/", 1)[-1].partition(":")[2]
        if not digest and (not tag or tag == "latest" or not FULL_VERSION.search(tag)):
            problems.append(f"stage {stage.name}: base {stage.base!r} is not pinned to a version tag or digest")
        for instruction in stage.instructions:
            if instruction.keyword in ("COPY", "ADD"):
                flags, words = _flags(instruction.args)
                if "from" in flags:
                    continue
                for source in words[:-1]:
                    rel = source.rstrip("/") or "."
                    if not glob.glob(str(root / rel)):
                        problems.append(f"COPY {source}: not in the build context")
                    elif ignored(rel, patterns):
                        problems.append(f"COPY {source}: left out of the build context by .dockerignore")
    module_main = root / "services" / service / "src" / "llmesh" / "services" / service / "__main__.py"
    for stage in image_stages(stages):
        instructions = [i for s in chain(stages, stage) for i in s.instructions]
        users = [i.args.split(":")[0].strip() for i in instructions if i.keyword == "USER"]
        if not users or users[-1] in ("root", "0"):
            problems.append(f"stage {stage.name}: runs as root (no USER, or USER root)")
        healthchecks = [i.args for i in instructions if i.keyword == "HEALTHCHECK"]
        if not healthchecks or healthchecks[-1].upper().startswith("NONE"):
            problems.append(f"stage {stage.name}: no HEALTHCHECK")
        elif "llmesh.kit.health_probe" not in healthchecks[-1]:
            problems.append(f"stage {stage.name}: the HEALTHCHECK does not ask the gRPC health service")
        entry = [i.args for i in instructions if i.keyword in ("ENTRYPOINT", "CMD")]
        command = _json_or_shell(entry[-1]) if entry else []
        module = command[command.index("-m") + 1] if "-m" in command[:-1] else ""
        if module != f"llmesh.services.{service}":
            problems.append(f"stage {stage.name}: the entrypoint is {command}, not python -m llmesh.services.{service}")
        elif not module_main.is_file():
            problems.append(f"stage {stage.name}: {module_main.relative_to(root)} does not exist")
        for instruction in instructions:
            if instruction.keyword == "RUN" and re.search(
                r"\b(apt-get|apt|apk|yum|dnf)\b.*\binstall\b", instruction.args
            ):
                if COMPILERS.search(instruction.args.split("install", 1)[1]):
                    problems.append(f"stage {stage.name}: installs a compiler: {instruction.args[:120]}")
            if instruction.keyword == "COPY" and "from" in _flags(instruction.args)[0]:
                copied = _flags(instruction.args)[1][:-1]
                if any(p.startswith(("/usr/bin", "/usr/lib/gcc", "/usr/local/bin")) for p in copied):
                    problems.append(f"stage {stage.name}: copies toolchain paths {copied}")
    return problems


def workspace_members() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    members = []
    for pattern in config["tool"]["uv"]["workspace"]["members"]:
        members += sorted(str(p.parent.relative_to(ROOT)) for p in ROOT.glob(f"{pattern}/pyproject.toml"))
    return members


def workspace_dependencies(service: str) -> set[str]:
    """The workspace folders the service installs, as the lock file says."""
    uv = pathlib.Path(sys.executable).parent / "uv"
    out = subprocess.run(
        [str(uv), "export", "--frozen", "--package", f"llmesh-{service}", "--no-dev", "--no-editable"]
        + ["--no-hashes", "--no-header", "--no-annotate"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return {line.split()[0].removeprefix("./") for line in out.splitlines() if line.startswith("./")}


@pytest.fixture(scope="module")
def image_context():
    """The generated files the images COPY (build/cache-onnx/), as `make image-context` makes them."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "image_context.py")], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"make image-context failed (run `make setup` first?):\n{result.stderr}"
    return ROOT / "build"


def _dockerfile(service: str) -> str:
    return (ROOT / "services" / service / "Dockerfile").read_text()


@pytest.mark.parametrize("service", SERVICES)
def test_dockerfile_passes_every_check(service, image_context):
    assert dockerfile_problems(_dockerfile(service), service) == []


@pytest.mark.parametrize("service", SERVICES)
def test_dockerfile_installs_from_the_lock_with_the_makefile_uv(service):
    text = _dockerfile(service)
    uv_version = re.search(r"^UV_VERSION := (\S+)", (ROOT / "Makefile").read_text(), re.M).group(1)
    assert f"ARG UV_VERSION={uv_version}" in text
    assert f"--frozen --package llmesh-{service} --no-dev" in text
    assert "--require-hashes" in text
    assert "--all-extras" not in text
    copied = {m.group(1).rstrip("/") for m in re.finditer(r"^COPY (\S+)", text, re.M)}
    # Every member's manifest (uv reads the whole workspace), the sources of those it installs.
    assert {f"{m}/pyproject.toml" for m in workspace_members()} <= copied
    assert workspace_dependencies(service) <= copied


@pytest.mark.parametrize("service", SERVICES)
def test_dockerfile_ports_and_environment(service):
    _, stages = parse(_dockerfile(service))
    env = " ".join(i.args for s in chain(stages, stages[-1]) for i in s.instructions if i.keyword == "ENV")
    port = DEFAULT_PORTS[service]
    for expected in (f"LLMESH_PORT={port}", "LLMESH_METRICS_PORT=9090", "LLMESH_HOST=0.0.0.0", "LLMESH_HOME=/"):
        assert expected in env
    assert f"EXPOSE {port} 9090" in _dockerfile(service)


def test_the_cache_image_ships_the_onnx_export_and_no_torch(image_context):
    text = _dockerfile("cache")
    assert "COPY build/cache-onnx/ /opt/llmesh/onnx/" in text and "LLMESH_CACHE_ONNX_DIR=/opt/llmesh/onnx" in text
    assert "--extra" not in text  # the export extra (torch) is never installed
    files = sorted(p.name for p in (image_context / "cache-onnx").iterdir())
    assert len(files) == 2 and files[0].endswith(".onnx") and files[1] == files[0][:-5] + ".tokenizer.json"


def test_the_inference_image_builds_llama_cpp_in_the_builder_only():
    _, stages = parse(_dockerfile("inference"))
    by_name = {s.name: s for s in stages}
    assert stages[-1].name == "runtime"  # the default target: the production image, without the model
    assert any(COMPILERS.search(i.args) for i in by_name["builder"].instructions if i.keyword == "RUN")
    assert {s.name for s in image_stages(stages)} == {"runtime-base", "with-model", "runtime"}
    with_model_env = " ".join(i.args for i in by_name["with-model"].instructions if i.keyword == "ENV")
    assert "LLMESH_INFERENCE_MODEL_PATH=/opt/models/" in with_model_env


def test_dockerignore_keeps_the_context_small():
    patterns = _dockerignore(ROOT)
    for heavy in (".venv", ".git", ".tools", "bench/results", "services/cache/tests/semantic/data", "build/other"):
        assert ignored(heavy, patterns), heavy
    for needed in ("uv.lock", "libs/kit/src/llmesh/kit/server.py", "build/cache-onnx/x.onnx"):
        assert not ignored(needed, patterns), needed


BAD = """\
ARG BASE=python:latest
FROM ${BASE} AS builder
RUN pip install uv
FROM python:3.11-slim-bookworm@sha256:0123 AS runtime
RUN apt-get update && apt-get install -y gcc libgomp1
COPY services/router/no-such-file.txt /app/
COPY .venv/bin/python /app/
COPY --from=builder /usr/bin/gcc /usr/bin/gcc
ENTRYPOINT ["python", "-m", "llmesh.services.router"]
"""


def test_the_checker_reports_each_fault_of_a_bad_dockerfile():
    problems = "\n".join(dockerfile_problems(BAD, "router"))
    assert "base 'python:latest' is not pinned" in problems
    assert "COPY services/router/no-such-file.txt: not in the build context" in problems
    assert "COPY .venv/bin/python: left out of the build context by .dockerignore" in problems
    assert "stage runtime: runs as root" in problems
    assert "stage runtime: no HEALTHCHECK" in problems
    assert "stage runtime: installs a compiler" in problems
    assert "stage runtime: copies toolchain paths" in problems
    assert "not python -m llmesh.services.tenancy" in "\n".join(dockerfile_problems(BAD, "tenancy"))
    # The real file, with its USER removed, is caught too.
    stripped = _dockerfile("router").replace("USER 10001:10001\n", "")
    assert dockerfile_problems(stripped, "router") == ["stage runtime: runs as root (no USER, or USER root)"]
    unhealthy = re.sub(r"HEALTHCHECK .*?\n(    CMD .*?\n)", "", _dockerfile("router"), flags=re.S)
    assert dockerfile_problems(unhealthy, "router") == ["stage runtime: no HEALTHCHECK"]
