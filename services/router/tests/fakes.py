"""In-test stand-ins for tenancy, classifier, cache and inference: real gRPC servicers (hosted on
a real server on port 0) whose behaviour a test steers with markers in the last user message:

  [tier:N]          classifier answers tier N          [restricted]   sensitivity RESTRICTED
  [slow]            classify and lookup take 200 ms    [classifier:fail] / [cache:fail]  they fail
  [gated]           inference sends one delta, then waits for the test's release event
  [hang]            inference sends one delta, then never finishes
  [exhausted] / [unavailable]   inference fails with that status
  [length]          inference stops with FINISH_REASON_LENGTH
  [ttft:N]          inference waits N ms before its first delta
  [classify:N]      the classifier waits N ms before it answers

The cache answers exact matches of stored answers (not to a semantic_only lookup);
`semantic[text]` makes a full or semantic_only lookup (not exact_only) of that last user message
a semantic hit, after `semantic_delay_s[text]` seconds
(the delay applies to misses too: the embedding runs either way).

and, per model (tests of fallback, breakers and escalation): `down` models fail UNAVAILABLE,
`cut_after[model] = k` cuts the stream with UNAVAILABLE after k deltas, `answers[model]` replaces
the words of the answer, `token_delay_s[model]` waits before each delta.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import re
import time

from llmesh.cache.v1 import cache_pb2, cache_pb2_grpc
from llmesh.classifier.v1 import classifier_pb2, classifier_pb2_grpc
from llmesh.common.v1 import common_pb2
from llmesh.inference.v1 import inference_pb2, inference_pb2_grpc
from llmesh.kit import errors
from llmesh.kit.server import ServiceApp
from llmesh.tenancy.v1 import tenancy_pb2, tenancy_pb2_grpc

SLOW_S = 0.2
# The catalog inference lists: tiny-1 serves tiers 1-2 and is the fallback of last resort, big-3
# serves no tier of its own (the router tests map it by settings), cloud-x is the external tier 3
# with catalog prices and data up to internal.
CLOUD_PRICE = (7.0, 9.0)
MODELS = [
    inference_pb2.ModelInfo(
        name="tiny-1",
        backend="llama_cpp",
        tiers=[1, 2],
        hosting=inference_pb2.HOSTING_SELF_HOSTED,
        max_sensitivity=common_pb2.SENSITIVITY_RESTRICTED,
        fallback=True,
    ),
    inference_pb2.ModelInfo(
        name="big-3",
        backend="triton",
        hosting=inference_pb2.HOSTING_SELF_HOSTED,
        max_sensitivity=common_pb2.SENSITIVITY_RESTRICTED,
    ),
    inference_pb2.ModelInfo(
        name="cloud-x",
        backend="openai",
        tiers=[3],
        hosting=inference_pb2.HOSTING_EXTERNAL,
        max_sensitivity=common_pb2.SENSITIVITY_INTERNAL,
        prompt_price_per_1k=CLOUD_PRICE[0],
        completion_price_per_1k=CLOUD_PRICE[1],
    ),
]


def last_user_text(messages) -> str:
    return [m.content for m in messages if m.role == common_pb2.ROLE_USER][-1]


def request_id_of(context) -> str:
    return dict(context.invocation_metadata() or ()).get("x-request-id", "")


@dataclasses.dataclass
class Span:
    started: float
    ended: float = 0.0


class FakeTenancy(tenancy_pb2_grpc.TenancyServiceServicer):
    def __init__(self):
        self.principals: dict[str, common_pb2.Principal] = {}
        self.calls: collections.Counter[str] = collections.Counter()
        # every Authenticate fails UNAVAILABLE (its database down)
        self.unavailable = False

    def add_key(
        self, api_key: str, tenant_id: str, key_id: str, clearance: int = common_pb2.SENSITIVITY_INTERNAL
    ) -> None:
        self.principals[api_key] = common_pb2.Principal(
            tenant_id=tenant_id, tenant_name=tenant_id, business_unit="bu", clearance=clearance, key_id=key_id
        )

    async def Authenticate(self, request, context):
        self.calls[request.api_key] += 1
        if self.unavailable:
            raise errors.Unavailable("the tenancy database is unreachable")
        principal = self.principals.get(request.api_key)
        if principal is None:
            raise errors.Unauthenticated("unknown or revoked API key")
        return tenancy_pb2.AuthenticateResponse(principal=principal)


class FakeClassifier(classifier_pb2_grpc.ClassifierServiceServicer):
    def __init__(self):
        self.spans: dict[str, Span] = {}
        # text → tier, for tests that change a request's classification between calls
        self.tier_overrides: dict[str, int] = {}
        self.restricted_texts: set[str] = set()
        # answered as the complexity model version ("": none, the router memoises nothing)
        self.model_version = ""
        # classifications per tenant
        self.classified: collections.Counter[str] = collections.Counter()

    async def Classify(self, request, context):
        self.classified[request.tenant_id] += 1
        span = self.spans[request.request_id] = Span(time.monotonic())
        text = last_user_text(request.messages)
        try:
            if "[slow]" in text:
                await asyncio.sleep(SLOW_S)
            if delay := re.search(r"\[classify:(\d+)\]", text):
                await asyncio.sleep(int(delay.group(1)) / 1000.0)
            if "[classifier:fail]" in text:
                raise errors.Unavailable("classifier model not loaded")
            found = re.search(r"\[tier:(\d)\]", text)
            tier = self.tier_overrides.get(text, int(found.group(1)) if found else 1)
            sensitivity = (
                common_pb2.SENSITIVITY_RESTRICTED
                if "[restricted]" in text or text in self.restricted_texts
                else common_pb2.SENSITIVITY_INTERNAL
            )
            return classifier_pb2.ClassifyResponse(
                complexity_score=tier / 3,
                tier=tier,
                confidence=0.9,
                sensitivity=sensitivity,
                model_name="fake",
                model_version=self.model_version,
            )
        finally:
            span.ended = time.monotonic()

    async def Feedback(self, request, context):
        return classifier_pb2.FeedbackResponse()


class FakeCache(cache_pb2_grpc.CacheServiceServicer):
    """A working exact cache: entries keyed by the serialized CacheKey."""

    def __init__(self):
        self.entries: dict[bytes, cache_pb2.StoreRequest] = {}
        # the first lookup of each request (the one beside the classifier)
        self.lookups: dict[str, Span] = {}
        # what each lookup of a request asked, in order: "exact" (exact_only), "semantic"
        # (semantic_only) or "full"
        self.lookup_modes: dict[str, list[str]] = collections.defaultdict(list)
        self.stores: dict[str, cache_pb2.StoreRequest] = {}
        self.semantic: dict[str, cache_pb2.CachedAnswer] = {}
        self.semantic_delay_s: dict[str, float] = {}
        # when each request's full lookup (not exact_only) answered (time.monotonic)
        self.semantic_ended: dict[str, float] = {}
        # when the caller cancelled a request's full lookup (time.monotonic)
        self.cancelled: dict[str, float] = {}

    @staticmethod
    def _key(key: cache_pb2.CacheKey) -> bytes:
        key = cache_pb2.CacheKey.FromString(key.SerializeToString())
        key.ClearField("sensitivity")  # not part of the key
        return key.SerializeToString(deterministic=True)

    async def Lookup(self, request, context):
        rid = request_id_of(context)
        span = self.lookups.setdefault(rid, Span(time.monotonic()))
        self.lookup_modes[rid].append(
            "exact" if request.exact_only else "semantic" if request.semantic_only else "full"
        )
        text = last_user_text(request.key.messages)
        try:
            if "[slow]" in text:
                await asyncio.sleep(SLOW_S)
            if "[cache:fail]" in text:
                raise errors.Unavailable("cache store unreachable")
            entry = None if request.semantic_only else self.entries.get(self._key(request.key))
            if entry is None and not request.exact_only and text in self.semantic_delay_s:
                try:
                    await asyncio.sleep(self.semantic_delay_s[text])
                except asyncio.CancelledError:
                    self.cancelled[rid] = time.monotonic()
                    raise
            if entry is None and not request.exact_only and text in self.semantic:
                return cache_pb2.LookupResponse(
                    outcome=cache_pb2.LOOKUP_OUTCOME_SEMANTIC_HIT, answer=self.semantic[text], similarity=0.95
                )
            if entry is None:
                return cache_pb2.LookupResponse(outcome=cache_pb2.LOOKUP_OUTCOME_MISS)
            return cache_pb2.LookupResponse(
                outcome=cache_pb2.LOOKUP_OUTCOME_EXACT_HIT,
                answer=cache_pb2.CachedAnswer(
                    entry_id="e1",
                    content=entry.content,
                    model=entry.model,
                    backend=entry.backend,
                    tier=entry.tier,
                    usage=entry.usage,
                    cost_usd=entry.cost_usd,
                ),
            )
        finally:
            span.ended = time.monotonic()
            if not request.exact_only:
                self.semantic_ended[rid] = time.monotonic()

    async def Store(self, request, context):
        if "[cache:fail]" in last_user_text(request.key.messages):
            raise errors.Unavailable("cache store unreachable")
        self.stores[request_id_of(context)] = request
        if request.key.sensitivity == common_pb2.SENSITIVITY_RESTRICTED:
            return cache_pb2.StoreResponse(stored=False, reason="restricted requests are not cached")
        self.entries[self._key(request.key)] = request
        return cache_pb2.StoreResponse(entry_id="e1", stored=True)


class FakeInference(inference_pb2_grpc.InferenceServiceServicer):
    def __init__(self, models: list[inference_pb2.ModelInfo] | None = None):
        self.models = models if models is not None else MODELS
        self.down: set[str] = set()
        self.cut_after: dict[str, int] = {}
        self.answers: dict[str, list[str]] = {}
        # seconds before each delta (a simulated decode rate; benches)
        self.token_delay_s: dict[str, float] = {}
        # model of each Generate call, in order
        self.calls: list[str] = []
        self.requests: dict[str, inference_pb2.GenerateRequest] = {}
        # when each request's Generate call arrived (time.monotonic)
        self.started: dict[str, float] = {}
        self.sent: collections.Counter[str] = collections.Counter()
        self.releases: dict[str, asyncio.Event] = {}
        self.cancelled: set[str] = set()
        self.region_down = False  # every Generate fails with UNAVAILABLE (a region's backends gone)

    async def ListModels(self, request, context):
        return inference_pb2.ListModelsResponse(models=self.models)

    async def Generate(self, request, context):
        rid = request.request_id
        self.started[rid] = time.monotonic()
        self.requests[rid] = request
        text = last_user_text(request.messages)
        if self.region_down:
            raise errors.Unavailable("every backend of this region is down")
        if "[exhausted]" in text:
            raise errors.ResourceExhausted("all 2 slots of the model are busy", retry_after_s=1.5)
        self.calls.append(request.model)
        if "[unavailable]" in text or request.model in self.down:
            raise errors.Unavailable("the backend is down")
        words = self.answers.get(request.model, ["answer ", "to ", "the ", "question"])
        ttft = re.search(r"\[ttft:(\d+)\]", text)
        try:
            if ttft:
                await asyncio.sleep(int(ttft.group(1)) / 1000.0)
            for i, word in enumerate(words):
                if self.cut_after.get(request.model) == i:
                    raise errors.Unavailable("the backend died mid-answer")
                if request.model in self.token_delay_s:
                    await asyncio.sleep(self.token_delay_s[request.model])
                yield inference_pb2.GenerateResponse(delta=word)
                self.sent[rid] += 1
                if i == 0 and "[gated]" in text:
                    await asyncio.wait_for(self.releases[rid].wait(), timeout=10)
                if i == 0 and "[hang]" in text:
                    await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.add(rid)
            raise
        finish = common_pb2.FINISH_REASON_LENGTH if "[length]" in text else common_pb2.FINISH_REASON_STOP
        yield inference_pb2.GenerateResponse(
            completion=inference_pb2.GenerateCompletion(
                usage=common_pb2.Usage(prompt_tokens=10 * len(request.messages), completion_tokens=len(words)),
                finish_reason=finish,
                model=request.model,
                backend={m.name: m.backend for m in self.models}[request.model],
            )
        )


class FakeUpstreams(ServiceApp):
    """The four upstream services on one server (the router reaches each by its own address)."""

    name = "fake-upstreams"

    def __init__(self, models: list[inference_pb2.ModelInfo] | None = None):
        self.tenancy = FakeTenancy()
        self.classifier = FakeClassifier()
        self.cache = FakeCache()
        self.inference = FakeInference(models)

    def register(self, server):
        tenancy_pb2_grpc.add_TenancyServiceServicer_to_server(self.tenancy, server)
        classifier_pb2_grpc.add_ClassifierServiceServicer_to_server(self.classifier, server)
        cache_pb2_grpc.add_CacheServiceServicer_to_server(self.cache, server)
        inference_pb2_grpc.add_InferenceServiceServicer_to_server(self.inference, server)
        return [
            "llmesh.tenancy.v1.TenancyService",
            "llmesh.classifier.v1.ClassifierService",
            "llmesh.cache.v1.CacheService",
            "llmesh.inference.v1.InferenceService",
        ]
