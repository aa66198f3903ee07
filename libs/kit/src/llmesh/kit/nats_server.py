"""Runs a private `nats-server` with JetStream (used by `llmesh up` and by the tests)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time

_LISTENING = re.compile(r"Listening for client connections on [^\s]*:(\d+)")


class NatsServerProcess:
    def __init__(
        self,
        store_dir: str,
        *,
        host: str = "127.0.0.1",
        port: int = -1,
        log_path: str | None = None,
        config_file: str | None = None,
    ):
        """port -1 lets nats-server pick a free port; `url` tells which once started. `config_file`
        adds a nats-server configuration (e.g. `region_config`: JetStream domain, leaf nodes); the
        host, port and store directory given here override its own."""
        self.store_dir = store_dir
        self.config_file = config_file
        self.host = host
        self.requested_port = port
        self.log_path = log_path
        self.process: subprocess.Popen | None = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def start(self, timeout_s: float = 15.0) -> "NatsServerProcess":
        binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
        if not os.path.exists(binary):
            raise FileNotFoundError("nats-server not found; run `make setup` (installs the Debian package)")
        os.makedirs(self.store_dir, exist_ok=True)
        config = ["-c", self.config_file] if self.config_file else []
        self.process = subprocess.Popen(
            [binary, *config, "-a", self.host, "-p", str(self.requested_port), "-js", "-sd", self.store_dir, "-m", "0"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        found = threading.Event()
        log_file = open(self.log_path, "a") if self.log_path else None

        def pump() -> None:  # keeps reading so nats-server never blocks on a full pipe
            assert self.process and self.process.stderr
            try:
                for line in self.process.stderr:
                    if log_file:
                        log_file.write(line)
                        log_file.flush()
                    match = _LISTENING.search(line)
                    if match and not found.is_set():
                        self.port = int(match.group(1))
                        found.set()
            finally:  # the server exited: a restarted one opens the log again
                if log_file:
                    log_file.close()

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + timeout_s
        while not found.wait(0.05):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"nats-server did not start (exit {self.process.returncode})")
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def region_config(
    region: str,
    *,
    leaf_listen_port: int | None = None,
    hub_leaf_urls: tuple[str, ...] = (),
    host: str = "127.0.0.1",
) -> str:
    """nats-server configuration of one region (ADR 0017): JetStream in the region's own domain;
    the hub region listens for leaf nodes on `leaf_listen_port`, the others dial `hub_leaf_urls`
    (nats-leaf://host:port). Cache invalidations do not cross the leaf link as plain messages:
    each region's stream sources the others' (`StreamSpec.sourcing`)."""
    lines = [f"server_name: llmesh-{region}", f"jetstream {{ domain: {region} }}"]
    leaf = []
    if leaf_listen_port is not None:
        leaf.append(f"host: {host}, port: {leaf_listen_port}")
    if hub_leaf_urls:
        urls = ", ".join(f'"{url}"' for url in hub_leaf_urls)
        denied = '["llmesh.cache.invalidate.>"]'
        leaf.append(f"reconnect: 1, remotes: [ {{ urls: [{urls}], deny_imports: {denied}, deny_exports: {denied} }} ]")
    if leaf:
        lines.append("leafnodes { " + ", ".join(leaf) + " }")
    return "\n".join(lines) + "\n"
