// The client's retry of a Generate that failed UNAVAILABLE before any message (docs/adr/0034),
// against a real gRPC server in this process (Connect's Node adapter on HTTP/2, port 0) standing
// in for a router replica that goes away: it records each try's request id and deadline, and
// fails the tries it is told to. No mesh needed.
import assert from "node:assert/strict";
import http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, type HandlerContext } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { GenerateResponseSchema, GenerateSummarySchema, type GenerateResponse } from "../gen/llmesh/router/v1/router_pb.js";
import { LlmeshClient, LlmeshError, RouterService, UNSERVED_RETRY_BACKOFF_MS } from "../src/index.js";

interface Try {
  requestId: string;
  /** The deadline the try arrived with (grpc-timeout), in milliseconds. */
  timeoutMs: number | undefined;
  at: number;
}

/** What the server does on its n-th try (0-based): answer, fail before any message, or fail after one delta. */
type Behaviour = (n: number) => "answer" | "unavailable" | "delta-then-unavailable" | "not-found";

class Replica {
  /** The tries of the calls a test looks at (it may clear them). */
  readonly tries: Try[] = [];
  /** Every try so far, what `behaviour` is given. */
  count = 0;
  private constructor(
    private readonly server: http2.Http2Server,
    readonly address: string,
  ) {}

  static async start(behaviour: Behaviour): Promise<Replica> {
    let replica: Replica | undefined;
    const handler = connectNodeAdapter({
      routes: (router) =>
        router.service(RouterService, {
          async *generate(_request, context: HandlerContext): AsyncGenerator<GenerateResponse> {
            const requestId = context.requestHeader.get("x-request-id") ?? "";
            replica!.tries.push({ requestId, timeoutMs: context.timeoutMs(), at: performance.now() });
            const what = behaviour(replica!.count++);
            if (what === "unavailable") throw new ConnectError("the replica is gone", Code.Unavailable);
            if (what === "not-found") throw new ConnectError("no such model", Code.NotFound);
            yield create(GenerateResponseSchema, { event: { case: "delta", value: "Hello" } });
            if (what === "delta-then-unavailable") throw new ConnectError("the replica died mid-answer", Code.Unavailable);
            yield create(GenerateResponseSchema, {
              event: { case: "summary", value: create(GenerateSummarySchema, { requestId, model: "tiny-1" }) },
            });
          },
        }),
    });
    const server = http2.createServer(handler);
    server.on("session", (session) => {
      replica!.sessions.add(session);
      session.on("close", () => replica!.sessions.delete(session));
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    replica = new Replica(server, `127.0.0.1:${(server.address() as AddressInfo).port}`);
    return replica;
  }

  private readonly sessions = new Set<http2.ServerHttp2Session>();

  /** Gone: the listener closed and the clients' connections dropped, as when a process dies. */
  async stop(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    for (const session of this.sessions) session.destroy();
    await closed;
  }
}

async function withReplica(behaviour: Behaviour, body: (replica: Replica, client: LlmeshClient) => Promise<void>) {
  const replica = await Replica.start(behaviour);
  const client = new LlmeshClient({ address: replica.address, apiKey: "llm_test" });
  try {
    await body(replica, client);
  } finally {
    await replica.stop();
  }
}

test("a try that failed UNAVAILABLE before any message is made again under the same request id", { timeout: 20_000 }, async () => {
  await withReplica(
    (n) => (n === 0 ? "unavailable" : "answer"),
    async (replica, client) => {
      const retried: [Code, number][] = [];
      const { text, summary } = await client.chat("hi", { onRetry: (error, retry) => retried.push([error.code, retry]) });
      assert.equal(text, "Hello");
      assert.equal(replica.tries.length, 2);
      assert.deepEqual(retried, [[Code.Unavailable, 1]]);
      const [first, second] = replica.tries;
      assert.match(first.requestId, /^[0-9a-f]{32}$/, "a request id of the client's own when the caller gave none");
      assert.equal(second.requestId, first.requestId);
      assert.equal(summary.requestId, first.requestId, "answered under the id the client sent");
      const waited = second.at - first.at;
      assert.ok(waited >= UNSERVED_RETRY_BACKOFF_MS[0] * 0.75 - 5, `waited ${waited} ms before the retry`);
    },
  );
});

test("at most two retries, with the caller's request id, then the UNAVAILABLE failure", { timeout: 20_000 }, async () => {
  await withReplica(
    () => "unavailable",
    async (replica, client) => {
      await assert.rejects(client.chat("hi", { requestId: "caller-id-1", timeoutMs: 10_000 }), (error: unknown) => {
        assert.ok(error instanceof LlmeshError);
        assert.equal(error.code, Code.Unavailable);
        assert.equal(error.requestId, "caller-id-1");
        return true;
      });
      assert.deepEqual(
        replica.tries.map((t) => t.requestId),
        ["caller-id-1", "caller-id-1", "caller-id-1"],
      );
      // Each retry carries what is left of the one deadline, not a new one.
      const [a, b, c] = replica.tries.map((t) => t.timeoutMs ?? Infinity);
      assert.ok(a <= 10_000 && b < a && c < b, `deadlines ${a}, ${b}, ${c}`);
      assert.ok(a - c >= (UNSERVED_RETRY_BACKOFF_MS[0] + UNSERVED_RETRY_BACKOFF_MS[1]) * 0.75 - 10);
    },
  );
});

test("a stream that delivered a message is never tried again", { timeout: 20_000 }, async () => {
  await withReplica(
    () => "delta-then-unavailable",
    async (replica, client) => {
      const deltas: string[] = [];
      await assert.rejects(
        (async () => {
          for await (const event of client.generate("hi")) if ("delta" in event) deltas.push(event.delta);
        })(),
        (error: unknown) => error instanceof LlmeshError && error.code === Code.Unavailable,
      );
      assert.deepEqual(deltas, ["Hello"]);
      assert.equal(replica.tries.length, 1);
    },
  );
});

test("no retry that would end after the deadline", { timeout: 20_000 }, async () => {
  await withReplica(
    (n) => (n === 0 ? "answer" : "unavailable"),
    async (replica, client) => {
      await client.chat("warm up"); // the connection is open: a try fails at once
      replica.tries.length = 0;
      // The first retry's wait (75–125 ms) never fits in 60 ms.
      const started = performance.now();
      await assert.rejects(client.chat("hi", { timeoutMs: 60 }), (error: unknown) => {
        assert.ok(error instanceof LlmeshError);
        assert.equal(error.code, Code.Unavailable);
        return true;
      });
      assert.equal(replica.tries.length, 1);
      assert.ok(performance.now() - started < 60 + 250, "failed without waiting out a retry");
      // 350 ms: the first retry fits, the second (300–500 ms more) never does.
      replica.tries.length = 0;
      await assert.rejects(
        client.chat("hi", { timeoutMs: 350 }),
        (error: unknown) => error instanceof LlmeshError && error.code === Code.Unavailable,
      );
      assert.equal(replica.tries.length, 2);
      const second = replica.tries[1];
      assert.ok((second.timeoutMs ?? Infinity) <= 350 - 75 + 5, `the retry had ${second.timeoutMs} ms left, not 350`);
    },
  );
});

test("other failures, and a client or call that turned retries off, are not retried", { timeout: 20_000 }, async () => {
  await withReplica(
    (n) => (n === 0 ? "not-found" : "unavailable"),
    async (replica, client) => {
      await assert.rejects(client.chat("hi"), (error: unknown) => error instanceof LlmeshError && error.code === Code.NotFound);
      assert.equal(replica.tries.length, 1);
      await assert.rejects(client.chat("hi", { retryUnserved: false }), (error: unknown) => error instanceof LlmeshError && error.code === Code.Unavailable);
      assert.equal(replica.tries.length, 2);
      const off = new LlmeshClient({ address: replica.address, apiKey: "llm_test", retryUnserved: false });
      await assert.rejects(off.chat("hi"), (error: unknown) => error instanceof LlmeshError && error.code === Code.Unavailable);
      assert.equal(replica.tries.length, 3);
    },
  );
});

test("a router that is not there at all: tried three times, then UNAVAILABLE", { timeout: 20_000 }, async () => {
  const replica = await Replica.start(() => "answer");
  const address = replica.address;
  await replica.stop(); // nothing listens on its port any more
  const client = new LlmeshClient({ address, apiKey: "llm_test" });
  const retries: number[] = [];
  await assert.rejects(client.chat("hi", { onRetry: (_e, n) => retries.push(n) }), (error: unknown) => {
    assert.ok(error instanceof LlmeshError);
    assert.equal(error.code, Code.Unavailable);
    return true;
  });
  assert.deepEqual(retries, [1, 2]);
});
