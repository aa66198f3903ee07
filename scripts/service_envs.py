"""Each service installed alone, from the lock file, into a fresh environment: what it installs,
how big it is, whether it keeps its dependency budget, and whether it starts and answers health.

    python scripts/service_envs.py [--service router ...] [--report docs/reports/images.md]

This is what a service's image installs (`uv export --package llmesh-<svc> --no-dev --frozen`,
then `uv pip install`), minus the base image. `tests/test_service_envs.py` runs the same code.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
SERVICES = ("tenancy", "router", "classifier", "cache", "inference", "edge")

# What each service must not install (issue: dependency budget per service).
HEAVY = {"numpy", "torch", "onnxruntime", "llama-cpp-python", "scipy", "scikit-learn", "sentence-transformers"}
FORBIDDEN = {
    "tenancy": HEAVY,
    "router": HEAVY,
    "classifier": HEAVY - {"numpy"},
    "cache": {"torch", "sentence-transformers", "llama-cpp-python", "scikit-learn", "transformers"},
    "inference": {"torch", "onnxruntime", "sentence-transformers", "scikit-learn", "transformers"},
    "edge": HEAVY,
}


@dataclasses.dataclass
class ServiceEnv:
    service: str
    python: pathlib.Path
    site_packages: pathlib.Path
    packages: dict[str, str]  # normalised name -> version
    install_s: float
    size_bytes: int = 0  # of site-packages, measured once installed (the folder may be gone later)

    def forbidden(self) -> list[str]:
        return sorted(set(self.packages) & FORBIDDEN[self.service])


# The router serves only once inference lists its models: alone, it answers NOT_SERVING.
WAITS_FOR_UPSTREAMS = {"router"}


def health_timeout_s(service: str) -> float:
    return 15.0 if service in WAITS_FOR_UPSTREAMS else 90.0


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def uv() -> str:
    found = shutil.which("uv", path=f"{pathlib.Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if not found:
        raise RuntimeError("uv not found: run `make setup`")
    return found


def requirements(service: str) -> str:
    """The service's locked requirements, workspace packages as (non-editable) local paths."""
    out = subprocess.run(
        [
            uv(),
            "export",
            "--frozen",
            "--package",
            f"llmesh-{service}",
            "--no-dev",
            "--no-editable",
            "--no-hashes",
            "--no-header",
            "--no-annotate",
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return out


def build_env(service: str, where: pathlib.Path) -> ServiceEnv:
    """A fresh venv at `where` holding the service and what the lock says it needs, nothing else."""
    env = dict(os.environ, UV_LINK_MODE=os.environ.get("UV_LINK_MODE", "copy"))
    env.pop("VIRTUAL_ENV", None)
    started = time.monotonic()
    subprocess.run([uv(), "venv", "--quiet", "--python", sys.executable, str(where)], check=True, env=env)
    reqs = where / "requirements.txt"
    reqs.write_text(requirements(service))
    python = where / "bin" / "python"
    subprocess.run(
        # The workspace packages keep their version while their code changes: rebuilt every time, never
        # taken from uv's cache of an earlier build.
        [
            uv(),
            "pip",
            "install",
            "--quiet",
            "--python",
            str(python),
            "--no-deps",
            "-r",
            str(reqs),
            *(f"--refresh-package={name}" for name in ("llmesh-proto", "llmesh-kit", f"llmesh-{service}")),
        ],
        cwd=ROOT,
        check=True,
        env=env,
    )
    listed = subprocess.run(
        [uv(), "pip", "list", "--python", str(python), "--format", "json"], check=True, capture_output=True, text=True
    ).stdout
    packages = {_norm(p["name"]): p["version"] for p in json.loads(listed)}
    site = next((where / "lib").glob("python*/site-packages"))
    size = sum(p.stat().st_size for p in site.rglob("*") if p.is_file() and not p.is_symlink())
    return ServiceEnv(service, python, site, packages, time.monotonic() - started, size)


def start_and_check_health(env: ServiceEnv, nats_url: str, extra_env: dict[str, str], timeout_s: float) -> str:
    """Starts `python -m llmesh.services.<svc>` from the env on free ports and returns the status its
    gRPC health service reports for the whole server (SERVING, or NOT_SERVING while it waits for
    a dependency), then stops it with SIGTERM."""
    from llmesh.kit import identity
    from llmesh.kit.testing import free_port, identity_env

    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        keys = identity.provision(pathlib.Path(tmp) / "identity", [env.service])
        run_env = {
            **identity_env(keys, env.service),
            "PATH": os.environ.get("PATH", ""),
            "HOME": os.environ.get("HOME", tmp),
            "LLMESH_HOME": tmp,
            "LLMESH_PORT": str(port),
            "LLMESH_METRICS_PORT": "0",
            "LLMESH_NATS_URL": nats_url,
            "OMP_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1",
            **extra_env,
        }
        log = open(pathlib.Path(tmp) / "service.log", "w+")
        process = subprocess.Popen(
            [str(env.python), "-m", f"llmesh.services.{env.service}"], env=run_env, stdout=log, stderr=log
        )
        try:
            return _poll_health(env, process, port, pathlib.Path(tmp), timeout_s)
        finally:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
            log.close()


def _poll_health(env, process, port, tmp, timeout_s) -> str:
    # The env's own interpreter asks: grpcio and the health stubs are in every service's env.
    probe = (
        "import sys, grpc\n"
        "from grpc_health.v1 import health_pb2, health_pb2_grpc\n"
        "with grpc.insecure_channel(sys.argv[1]) as ch:\n"
        "    r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=''), timeout=2)\n"
        "print(health_pb2.HealthCheckResponse.ServingStatus.Name(r.status))\n"
    )
    deadline = time.monotonic() + timeout_s
    status = ""
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"{env.service} exited with {process.returncode}:\n{(tmp / 'service.log').read_text()[-3000:]}"
            )
        out = subprocess.run([str(env.python), "-c", probe, f"127.0.0.1:{port}"], capture_output=True, text=True)
        status = out.stdout.strip() or status
        if status == "SERVING":
            return status
        time.sleep(0.5)
    if status:
        return status
    raise RuntimeError(
        f"{env.service} answered no health check in {timeout_s}s:\n{(tmp / 'service.log').read_text()[-3000:]}"
    )


def report(envs: list[ServiceEnv], statuses: dict[str, str]) -> str:
    lines = [
        "# Service images: what each service installs",
        "",
        f"Written by `make images-report` (scripts/service_envs.py) on {datetime.date.today().isoformat()}. Each service is",
        "installed alone from the lock file (`uv export --package llmesh-<svc> --no-dev --frozen`) into a fresh",
        "virtual environment, as its image's build stage does; the size is that of `site-packages` (the",
        "base image, Python itself and, for the cache, the exported ONNX model come on top). Then the service",
        "is started from that environment on free ports and asked for its gRPC health.",
        "",
        "| service | packages | installed size | none of these (budget) | health after start |",
        "| --- | ---: | ---: | --- | --- |",
    ]
    for env in envs:
        bad = env.forbidden()
        budget = "kept" if not bad else "BROKEN: " + ", ".join(bad)
        lines.append(
            f"| {env.service} | {len(env.packages)} | {env.size_bytes / 2**20:.0f} MiB | "
            f"{', '.join(sorted(FORBIDDEN[env.service]))}: {budget} | {statuses.get(env.service, 'not started')} |"
        )
    lines += ["", "## Packages per service", ""]
    for env in envs:
        lines.append(f"- **{env.service}**: " + ", ".join(f"{n} {v}" for n, v in sorted(env.packages.items())))
    lines += [
        "",
        "## Images",
        "",
        "No container engine runs on the development machines, so no image was built here: the",
        "Dockerfiles are checked statically by `tests/test_dockerfiles.py` (every `COPY` source exists,",
        "the entrypoint module exists, a non-root user, a pinned base, a health check). What an image adds",
        "to the figures above is its base (`python:3.11-slim-bookworm`, about 125 MiB) and, for the",
        "inference image, llama.cpp's build is done in the builder stage and not carried over.",
        "",
    ]
    return "\n".join(lines)


def inference_model_env() -> dict[str, str]:
    """Where the developer machine's bundled model lies (an image mounts or ships its own)."""
    out = subprocess.run(
        [sys.executable, "-m", "llmesh.services.inference.model_files"], check=True, capture_output=True, text=True
    ).stdout.strip()
    return {"LLMESH_INFERENCE_MODEL_PATH": out.splitlines()[-1]}


def service_env_vars(service: str) -> dict[str, str]:
    """What a service started alone needs besides the common settings."""
    if service == "inference":
        return inference_model_env()
    if service == "cache":
        onnx_dir = os.environ.get("LLMESH_CACHE_ONNX_DIR", "")
        return {"LLMESH_CACHE_ONNX_DIR": onnx_dir} if onnx_dir else {}
    if service == "edge":
        # Its HTTP API on any free port (8080 may be taken); it serves without the router behind it.
        return {"LLMESH_EDGE_HTTP_PORT": "0"}
    return {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--service", action="append", choices=SERVICES, help="default: every service")
    parser.add_argument("--report", default="", help="write the markdown report here")
    parser.add_argument("--no-start", action="store_true", help="only install and measure")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from llmesh.kit.nats_server import NatsServerProcess

    envs, statuses = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        nats = None
        if not args.no_start:
            nats = NatsServerProcess(str(pathlib.Path(tmp) / "nats"))
            nats.start()
        try:
            for service in args.service or SERVICES:
                env = build_env(service, pathlib.Path(tmp) / service)
                envs.append(env)
                print(
                    f"{service}: {len(env.packages)} packages, {env.size_bytes / 2**20:.0f} MiB, "
                    f"forbidden: {env.forbidden() or 'none'} ({env.install_s:.0f} s)",
                    flush=True,
                )
                if nats is not None:
                    statuses[service] = start_and_check_health(
                        env, nats.url, service_env_vars(service), health_timeout_s(service)
                    )
                    print(f"{service}: health {statuses[service]}", flush=True)
        finally:
            if nats is not None:
                nats.stop()
    if args.report:
        pathlib.Path(args.report).write_text(report(envs, statuses))
    return 1 if any(env.forbidden() for env in envs) else 0


if __name__ == "__main__":
    sys.exit(main())
