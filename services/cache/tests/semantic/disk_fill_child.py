"""Run by test_disk_full.py in a child process (a SIGBUS would kill pytest itself): the embedded
store on a small file system that gets filled to the last block.

    python disk_fill_child.py FOLDER MIN_FREE_MIB

MIN_FREE_MIB 0 opens the bare store (no guard). Prints one JSON line per step on stdout."""

from __future__ import annotations

import asyncio
import contextlib
import json
import pathlib
import sys
import time

import numpy as np
from llmesh.services.cache.semantic.disk import MIB, DiskFull, DiskGuard, GuardedStore
from llmesh.services.cache.semantic.edge_store import EdgeStore
from llmesh.services.cache.semantic.scope import lookup_scope

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from fakes import entry, query  # noqa: E402

DIM = 384  # the size of the service's embeddings: pages fill as fast as in production


def step(**fields) -> None:
    print(json.dumps(fields), flush=True)


def fill(filler: pathlib.Path) -> int:
    written = 0
    with open(filler, "wb") as out, contextlib.suppress(OSError):
        while True:
            out.write(b"\0" * (1 << 20))
            out.flush()
            written += 1
    return written


async def main(folder: pathlib.Path, min_free_mib: int) -> None:
    path = folder / "store"
    rng = np.random.default_rng(0)

    def batch(start: int, n: int):
        entries = [entry("tenant", f"e{i}", f"question {i}") for i in range(start, start + n)]
        vectors = rng.standard_normal((n, DIM)).astype(np.float32)
        return entries, vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    if min_free_mib:
        store = await GuardedStore.open(lambda: EdgeStore.open(path, DIM), DiskGuard(path, min_free_mib * MIB), 0)
    else:
        store = await EdgeStore.open(path, DIM)
    first, first_vectors = batch(0, 200)
    await store.upsert(first, first_vectors)
    step(step="opened", entries=200)

    filler = folder / "filler"
    step(step="filled", mib=fill(filler))
    refused = stored = 0
    for round_ in range(40):  # ~8,000 entries: far more than the pages one write can fault in
        entries, vectors = batch(1000 + round_ * 200, 200)
        try:
            await store.upsert(entries, vectors)
            stored += 1
        except DiskFull:
            refused += 1
    step(step="writes while full", refused=refused, stored=stored)
    found = await store.nearest(lookup_scope(query("tenant", "question 3")), first_vectors[3])
    step(step="lookup while full", found=[c.entry.entry_id for c in found])

    filler.unlink()
    started = time.monotonic()
    if min_free_mib:
        while not await store.check():
            await asyncio.sleep(0.05)
    entries, vectors = batch(100_000, 200)
    await store.upsert(entries, vectors)
    step(step="writable again", after_s=round(time.monotonic() - started, 3))
    await store.close()
    step(step="closed")


if __name__ == "__main__":
    asyncio.run(main(pathlib.Path(sys.argv[1]), int(sys.argv[2])))
