"""The router tests' fake upstreams (fakes.FakeUpstreams) in a process of their own, for tests that
SIGKILL one replica of a service: `python -m services.router.tests.upstream_process READY CALLS`
(from the repository root) serves on a free port, writes {"port": N} to READY once serving, and
appends the request id of every inference Generate it starts to CALLS, one a line."""

from __future__ import annotations

import asyncio
import json
import pathlib
import sys

from llmesh.kit.config import ServerSettings, load_settings
from llmesh.kit.testing import hosted

from services.router.tests.fakes import FakeInference, FakeUpstreams


class RecordingInference(FakeInference):
    def __init__(self, calls: pathlib.Path):
        super().__init__()
        self.calls_file = calls

    async def Generate(self, request, context):
        with self.calls_file.open("a") as calls:
            calls.write(request.request_id + "\n")
        async for response in super().Generate(request, context):
            yield response


async def main(ready: pathlib.Path, calls: pathlib.Path) -> None:
    fakes = FakeUpstreams()
    fakes.inference = RecordingInference(calls)
    fakes.name = "inference"  # the identity it is given (testing.identity_env)
    # identity from LLMESH_IDENTITY_* (testing.identity_env)
    settings = load_settings(ServerSettings, port=0, metrics_port=0)
    async with hosted(fakes, settings, serve_metrics=False) as host:
        ready.write_text(json.dumps({"port": int(host.address.rsplit(":", 1)[1])}))
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])))
