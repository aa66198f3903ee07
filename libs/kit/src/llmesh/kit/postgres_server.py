"""Runs a private PostgreSQL (Debian's postgresql-15 binaries: initdb, pg_ctl) in a folder of its
own on a free port, for the tests; never the server the machine may already run. As root (CI,
containers) the server runs as the `postgres` user the Debian package creates, since PostgreSQL
refuses to run as root."""

from __future__ import annotations

import glob
import os
import pathlib
import pwd
import shutil
import subprocess

from llmesh.kit.testing import free_port

_SEARCH = ("/usr/lib/postgresql/*/bin", "/usr/local/bin", "/usr/bin")


def postgres_bin_dir() -> pathlib.Path | None:
    """The folder with initdb and pg_ctl, or None when PostgreSQL is not installed."""
    on_path = shutil.which("initdb")
    candidates = [pathlib.Path(on_path).resolve().parent] if on_path else []
    for pattern in _SEARCH:
        candidates += [pathlib.Path(p) for p in sorted(glob.glob(pattern), reverse=True)]
    for folder in candidates:
        if (folder / "initdb").exists() and (folder / "pg_ctl").exists():
            return folder
    return None


class PostgresServerProcess:
    def __init__(self, base_dir: str, *, host: str = "127.0.0.1", port: int = 0, database: str = "llmesh"):
        self.base_dir = pathlib.Path(base_dir)
        self.data_dir = self.base_dir / "data"
        self.host = host
        self.port = port or free_port(host)
        self.database = database
        self.user = "llmesh"
        self._bin: pathlib.Path | None = None
        self._run_as: str | None = None

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.database}"

    def admin_url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"

    def _run(self, *args: str, timeout_s: float) -> None:
        done = subprocess.run(self._cmd(*args), capture_output=True, text=True, timeout=timeout_s)
        if done.returncode != 0:
            raise RuntimeError(
                f"{pathlib.Path(args[0]).name} failed ({done.returncode}): {done.stderr.strip()[-2000:]}"
            )

    def _cmd(self, *args: str) -> list[str]:
        if self._run_as is None:
            return list(args)
        return ["runuser", "-u", self._run_as, "--", *args]

    def start(self, timeout_s: float = 60.0) -> "PostgresServerProcess":
        self._bin = postgres_bin_dir()
        if self._bin is None:
            raise FileNotFoundError("PostgreSQL binaries (initdb, pg_ctl) not found; run `make setup`")
        self.base_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            self._run_as = "postgres"
            entry = pwd.getpwnam("postgres")
            for path in (self.base_dir, *self.base_dir.parents):
                if path == pathlib.Path("/"):
                    break
                # The server user must reach its folder through the test's temporary folders.
                path.chmod(path.stat().st_mode | 0o011)
            os.chown(self.base_dir, entry.pw_uid, entry.pw_gid)
        self._run(
            str(self._bin / "initdb"),
            "-D",
            str(self.data_dir),
            "-U",
            self.user,
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
            timeout_s=timeout_s,
        )
        self.resume(timeout_s)
        self.create_database(self.database)
        return self

    def resume(self, timeout_s: float = 60.0) -> None:
        """Starts the server again on its data folder and port, after `stop()`."""
        assert self._bin is not None, "start() first"
        options = (
            f"-h {self.host} -p {self.port} -k {self.base_dir} -c fsync=off -c synchronous_commit=off "
            "-c full_page_writes=off -c max_connections=100 -c shared_buffers=16MB"
        )
        self._run(
            str(self._bin / "pg_ctl"),
            "-D",
            str(self.data_dir),
            "-l",
            str(self.base_dir / "postgres.log"),
            "-o",
            options,
            "-w",
            "-t",
            str(int(timeout_s)),
            "start",
            timeout_s=timeout_s + 5,
        )

    def create_database(self, name: str) -> str:
        """Creates database `name`; returns its URL."""
        assert self._bin is not None, "start() first"
        psql = self._bin / "psql"
        subprocess.run(
            self._cmd(
                str(psql),
                "-h",
                self.host,
                "-p",
                str(self.port),
                "-U",
                self.user,
                "-d",
                "postgres",
                "-q",
                "-c",
                f'CREATE DATABASE "{name}"',
            ),
            check=True,
            capture_output=True,
            timeout=30,
        )
        return f"postgresql://{self.user}@{self.host}:{self.port}/{name}"

    def stop(self, timeout_s: float = 30.0) -> None:
        if self._bin is None or not (self.data_dir / "postmaster.pid").exists():
            return
        subprocess.run(
            self._cmd(str(self._bin / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop"),
            capture_output=True,
            timeout=timeout_s,
        )
