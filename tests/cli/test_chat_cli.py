"""`llmesh chat` against a router with fake upstreams."""

from __future__ import annotations

import argparse
import asyncio
import io

import pytest
from llmesh.cli import chat as chat_cli

pytestmark = pytest.mark.timeout(30)


def parse(argv: list[str]):
    # Only this command's parser: the other command groups are not under test here.
    parser = argparse.ArgumentParser(prog="llmesh")
    chat_cli.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


async def chat(argv: list[str]) -> tuple[int, str, str]:
    args = parse(["chat", *argv])
    out, err = io.StringIO(), io.StringIO()
    # The CLI uses blocking gRPC; the router under test runs on this event loop.
    code = await asyncio.to_thread(args.func, args, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def cli_env(monkeypatch, router_host, client):
    monkeypatch.setenv("LLMESH_ROUTER_ADDR", router_host.address)
    api_key, _, _ = client.new_key()
    monkeypatch.setenv("LLMESH_API_KEY", api_key)
    return client


async def test_streams_the_answer_then_a_summary_line(cli_env):
    code, out, err = await chat(["what is llmesh?", "--max-tokens", "20", "--system", "be brief"])
    assert code == 0, err
    answer, summary = out.rstrip("\n").split("\n")
    assert answer == "answer to the question"
    assert summary.startswith("[tier 1 · tiny-1 · cache: miss · tokens 20/4 · ttft ")
    assert summary.endswith(" ms]")

    code, out, _ = await chat(["what is llmesh?", "--max-tokens", "20", "--system", "be brief"])
    assert code == 0 and "cache: exact_hit" in out
    code, out, _ = await chat(["what is llmesh?", "--max-tokens", "20", "--system", "be brief", "--no-cache"])
    assert code == 0 and "cache: bypassed" in out


async def test_errors_are_one_line_with_the_status_code(cli_env, monkeypatch):
    code, out, err = await chat(["hello", "--model", "nope"])
    assert code == 1 and out == ""
    assert err.startswith("llmesh chat: INVALID_ARGUMENT: unknown model 'nope'") and err.count("\n") == 1

    monkeypatch.setenv("LLMESH_API_KEY", "sk-wrong")
    code, _, err = await chat(["hello"])
    assert code == 1 and err.startswith("llmesh chat: UNAUTHENTICATED: API key rejected")

    monkeypatch.delenv("LLMESH_API_KEY")
    code, _, err = await chat(["hello"])
    assert code == 2 and "LLMESH_API_KEY" in err
