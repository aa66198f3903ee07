// Against a running mesh (tests/e2e/test_typescript_client.py starts one and runs `npm test`):
// LLMESH_ROUTER_ADDR, LLMESH_API_KEY and LLMESH_EDGE_URL name it.
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { test } from "node:test";
import { Code } from "@connectrpc/connect";
import OpenAI from "openai";
import { CacheOutcome, LlmeshClient, LlmeshError } from "../src/index.js";

const address = process.env.LLMESH_ROUTER_ADDR ?? "127.0.0.1:50051";
const apiKey = process.env.LLMESH_API_KEY ?? "";
const edgeUrl = process.env.LLMESH_EDGE_URL ?? "http://127.0.0.1:8080/v1";
const options = { maxTokens: 12, temperature: 0, seed: 1 };

test("a streamed answer, then an exact hit on the repeat", async () => {
  const client = new LlmeshClient({ address, apiKey });
  const prompt = `Name a colour. (${randomUUID()})`;
  const deltas: string[] = [];
  let summary;
  const requestId = `ts-${randomUUID()}`;
  for await (const event of client.generate(prompt, { ...options, requestId })) {
    if ("delta" in event) deltas.push(event.delta);
    else summary = event.summary;
  }
  assert.ok(deltas.length > 1, "the answer arrives in several deltas");
  assert.equal(summary?.requestId, requestId, "the router answers under the request id the client sent");
  assert.equal(summary?.cacheOutcome, CacheOutcome.MISS);
  assert.ok(summary.usage && summary.usage.completionTokens > 0n);
  const again = await client.chat(prompt, options);
  assert.equal(again.summary.cacheOutcome, CacheOutcome.EXACT_HIT);
  assert.equal(again.text, deltas.join(""));
});

test("a wrong key is UNAUTHENTICATED with its message", async () => {
  const client = new LlmeshClient({ address, apiKey: "llm_not-a-real-key" });
  await assert.rejects(client.chat("hello", options), (error: unknown) => {
    assert.ok(error instanceof LlmeshError);
    assert.equal(error.code, Code.Unauthenticated);
    assert.equal(error.status, "UNAUTHENTICATED");
    assert.ok(error.message.length > 0);
    return true;
  });
});

test("a bad field comes back with its google.rpc.BadRequest detail", async () => {
  const client = new LlmeshClient({ address, apiKey });
  await assert.rejects(client.chat("hello", { maxTokens: 100_000 }), (error: unknown) => {
    assert.ok(error instanceof LlmeshError);
    assert.equal(error.code, Code.InvalidArgument);
    assert.deepEqual(
      error.fieldViolations.map((v) => v.field),
      ["max_tokens"],
    );
    return true;
  });
});

test("a deadline too short for the answer is DEADLINE_EXCEEDED", async () => {
  const client = new LlmeshClient({ address, apiKey });
  await assert.rejects(client.chat(`Write a long story. (${randomUUID()})`, { ...options, timeoutMs: 5 }), (error: unknown) => {
    assert.ok(error instanceof LlmeshError);
    assert.equal(error.code, Code.DeadlineExceeded);
    return true;
  });
});

test("the openai package through the edge: streamed, then an exact hit", async () => {
  const openai = new OpenAI({ baseURL: edgeUrl, apiKey, maxRetries: 0 });
  const content = `Name a fruit. (${randomUUID()})`;
  const body = { model: "auto", messages: [{ role: "user" as const, content }], max_tokens: 12, temperature: 0, seed: 1 };
  const stream = await openai.chat.completions.create({ ...body, stream: true });
  let text = "";
  let last;
  for await (const chunk of stream) {
    text += chunk.choices[0]?.delta?.content ?? "";
    last = chunk;
  }
  assert.ok(text.length > 0);
  assert.equal((last as any).llmesh.cache, "miss");
  assert.ok(last?.usage && last.usage.completion_tokens > 0);
  const again = await openai.chat.completions.create(body);
  assert.equal(again.choices[0].message.content, text);
  assert.equal((again as any).llmesh.cache, "exact_hit");
});

test("the openai package: a wrong key is a 401, a bad request a 400", async () => {
  const wrong = new OpenAI({ baseURL: edgeUrl, apiKey: "llm_not-a-real-key", maxRetries: 0 });
  const body = { model: "auto", messages: [{ role: "user" as const, content: "hi" }] };
  await assert.rejects(wrong.chat.completions.create(body), (error: unknown) => {
    assert.ok(error instanceof OpenAI.AuthenticationError);
    assert.equal(error.status, 401);
    assert.equal(error.code, "invalid_api_key");
    return true;
  });
  const right = new OpenAI({ baseURL: edgeUrl, apiKey, maxRetries: 0 });
  await assert.rejects(right.chat.completions.create({ ...body, max_tokens: 100_000 }), (error: unknown) => {
    assert.ok(error instanceof OpenAI.BadRequestError);
    assert.equal(error.param, "max_tokens");
    return true;
  });
});
