"""`llmesh chat PROMPT`: one streamed answer from the router, then a summary line."""

from __future__ import annotations

import os
import sys
import time
import uuid

import grpc
from llmesh.common.v1 import common_pb2
from llmesh.kit import tls
from llmesh.kit.client import unserved_retry_delay
from llmesh.launcher.state import endpoint
from llmesh.router.v1 import router_pb2, router_pb2_grpc

CACHE_OUTCOMES = {
    router_pb2.CACHE_OUTCOME_MISS: "miss",
    router_pb2.CACHE_OUTCOME_EXACT_HIT: "exact_hit",
    router_pb2.CACHE_OUTCOME_SEMANTIC_HIT: "semantic_hit",
    router_pb2.CACHE_OUTCOME_BYPASSED: "bypassed",
}


def register(subparsers) -> None:
    chat = subparsers.add_parser("chat", help="ask the mesh (key from LLMESH_API_KEY) and stream the answer")
    chat.add_argument("prompt")
    chat.add_argument("--use-case", default="", help='namespace for caching and reporting (default "default")')
    chat.add_argument("--max-tokens", type=int, default=0, help="1..4096 (default 256)")
    chat.add_argument("--model", default="", help="pin a model instead of letting the router choose")
    chat.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    chat.add_argument("--system", default="", help="a system message before the prompt")
    chat.add_argument("--timeout", type=float, default=300.0, help="deadline of the whole answer in seconds")
    chat.set_defaults(func=chat_command)


def build_request(args) -> router_pb2.GenerateRequest:
    messages = []
    if args.system:
        messages.append(common_pb2.ChatMessage(role=common_pb2.ROLE_SYSTEM, content=args.system))
    messages.append(common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=args.prompt))
    return router_pb2.GenerateRequest(
        messages=messages,
        max_tokens=args.max_tokens,
        use_case=args.use_case,
        model=args.model,
        cache_policy=router_pb2.CACHE_POLICY_BYPASS if args.no_cache else router_pb2.CACHE_POLICY_ALLOW,
        priority=router_pb2.PRIORITY_INTERACTIVE,
    )


def summary_line(summary: router_pb2.GenerateSummary) -> str:
    return (
        f"[tier {summary.tier} · {summary.model} · cache: {CACHE_OUTCOMES.get(summary.cache_outcome, 'unknown')} · "
        f"tokens {summary.usage.prompt_tokens}/{summary.usage.completion_tokens} · "
        f"ttft {summary.time_to_first_token_ms:.0f} ms · total {summary.total_time_ms:.0f} ms]"
    )


def chat_command(args, *, out=None, err=None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    api_key = os.environ.get("LLMESH_API_KEY", "")
    if not api_key:
        print("llmesh chat: set LLMESH_API_KEY to an API key (`llmesh tenant create NAME` prints one)", file=err)
        return 2
    target = endpoint("router")
    mid_line = False
    # One request id for every try: a try that failed before any message is made again under it
    # (a router replica gone), and the usage ledger bills a request id once (docs/adr/0034).
    metadata = [("authorization", f"Bearer {api_key}"), ("x-request-id", f"chat-{uuid.uuid4().hex}")]
    deadline = time.monotonic() + args.timeout
    retries = 0
    with tls.blocking_channel(target) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        while True:
            call = stub.Generate(
                build_request(args), metadata=metadata, timeout=max(0.001, deadline - time.monotonic())
            )
            received = False
            try:
                for response in call:
                    received = True
                    if response.HasField("summary"):
                        out.write(("\n" if mid_line else "") + summary_line(response.summary) + "\n")
                        mid_line = False
                    else:
                        out.write(response.delta)
                        mid_line = not response.delta.endswith("\n")
                    out.flush()
                break
            except grpc.RpcError as exc:
                delay = unserved_retry_delay(exc, received=received, retries_done=retries, deadline=deadline)
                if delay is not None:
                    retries += 1
                    time.sleep(delay)
                    continue
                if mid_line:
                    out.write("\n")
                    out.flush()
                print(f"llmesh chat: {exc.code().name}: {exc.details()} (router at {target})", file=err)
                return 1
            except KeyboardInterrupt:
                call.cancel()
                print("\nllmesh chat: cancelled", file=err)
                return 130
    return 0
