"""Hit history (hits.py) and the hot-entry listing a cache refresh reads: entries hit often that
expire soon, with the request that generates them again, and the hours of day of the hits."""

from __future__ import annotations

import time

import pytest
from llmesh.kit.chat import Sampling
from llmesh.services.cache.core import LookupQuery, StoreCommand
from llmesh.services.cache.hits import HitHistory
from llmesh.services.cache.keys import exact_key, key_from_doc, request_doc

from services.cache.tests.test_core import answer, key, make

pytestmark = pytest.mark.timeout(30)


def test_hits_are_counted_per_entry_and_by_hour_of_day():
    history = HitHistory(max_entries=2)
    nine = 1_800_000_000 - 1_800_000_000 % 86400 + 9 * 3600  # 09:00 UTC
    for _ in range(3):
        history.record("acme", "support", "e1", nine)
    history.record("acme", "support", "e2", nine + 3600)
    history.record("acme", "sales", "e3", nine + 3600)  # the least recently hit (e1) is forgotten
    assert [row.entry_id for row in history.often_hit("acme", "", 1)] == ["e2", "e3"]
    assert history.hits_by_hour("acme", "support")[9:11] == [3, 1]
    assert sum(history.hits_by_hour("acme")) == 5 and history.hits_by_hour("other") == [0] * 24


def test_a_request_kept_with_its_entry_makes_the_same_key_again():
    original = key("What is the  refund window?", sampling=Sampling(temperature=0.2, stop=("\n",)), max_tokens=40)
    again = key_from_doc(original.tenant_id, original.use_case, request_doc(original))
    assert again == original and exact_key(again) == exact_key(original)


async def test_entries_hit_often_that_expire_soon_are_listed_with_their_request():
    cache, clock, _ = make(semantic=False)
    often, rarely, later = key("often asked"), key("rarely asked"), key("asked often, kept long")
    for k, ttl in ((often, 600), (rarely, 600), (later, 7200)):
        await cache.store(StoreCommand(k, answer(), ttl_s=ttl))
    for k, times in ((often, 3), (rarely, 1), (later, 3)):
        for _ in range(times):
            assert (await cache.lookup(LookupQuery(k))).entry is not None
    clock.now += 60
    found = await cache.hot_entries("acme", "support", min_hits=2, expiring_within_s=1800, limit=10)
    assert [(entry.entry_id, hits.hits) for entry, hits in found] == [(exact_key(often), 3)]
    entry = found[0][0]
    assert key_from_doc(entry.tenant_id, entry.use_case, entry.request) == often
    assert sum(cache.hits.hits_by_hour("acme", "support")) == 7
    assert cache.hits.hits_by_hour("acme", "support")[time.gmtime(clock.now).tm_hour] == 7
    # Another tenant sees none of them.
    assert await cache.hot_entries("other", "", min_hits=1, expiring_within_s=1800, limit=10) == []
