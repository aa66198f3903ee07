// A typed wrapper of llmesh's RouterService.Generate over the gRPC protocol (Connect's Node
// transport): the API key as `authorization` metadata, a deadline on every call, a request id
// (`x-request-id`) on every call, a Generate that failed UNAVAILABLE before any message tried again
// under it (docs/adr/0034), and failures as LlmeshError with their google.rpc details decoded
// (BadRequest, RetryInfo, ErrorInfo).
import { randomUUID } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { BadRequestSchema, ErrorInfoSchema, RetryInfoSchema } from "../gen/google/rpc/error_details_pb.js";
import { Role, type ChatMessage } from "../gen/llmesh/common/v1/common_pb.js";
import {
  CacheOutcome,
  CachePolicy,
  GenerateRequestSchema,
  RouterService,
  type GenerateSummary,
} from "../gen/llmesh/router/v1/router_pb.js";

export { CacheOutcome, CachePolicy, Role, RouterService, type GenerateSummary };

export interface ClientOptions {
  /** The router, e.g. "127.0.0.1:50051" or "http://router:50051". */
  address: string;
  /** An llmesh API key (`llmesh tenant create`). */
  apiKey: string;
  /** Default deadline of a call, in milliseconds (60 s). */
  timeoutMs?: number;
  /**
   * Try a Generate again when it failed UNAVAILABLE before any response message (a router replica
   * gone): at most twice, under the same request id, within the call's deadline (true; false: never).
   */
  retryUnserved?: boolean;
}

export interface GenerateOptions {
  maxTokens?: number;
  temperature?: number;
  seed?: number;
  /** Pins a model; unset lets the router choose by tier. */
  model?: string;
  useCase?: string;
  cachePolicy?: CachePolicy;
  /** This call's deadline in milliseconds, over every try. */
  timeoutMs?: number;
  signal?: AbortSignal;
  /** The call's `x-request-id`, the same on every try (the usage ledger bills a request id once); a new random one when unset. */
  requestId?: string;
  /** Overrides the client's `retryUnserved` for this call. */
  retryUnserved?: boolean;
  /** Called before each retry with the failure of the try that is retried and the retry's number (1, 2). */
  onRetry?: (error: LlmeshError, retry: number) => void;
}

/**
 * The waits before the first and second retry of a Generate that failed UNAVAILABLE before any
 * response message, in milliseconds, each ±25 %: as llmesh.kit.client.UNSERVED_RETRY_BACKOFF_S.
 */
export const UNSERVED_RETRY_BACKOFF_MS: readonly number[] = [100, 400];

/**
 * How long to wait before trying a Generate again, or undefined when it must not be tried again
 * (docs/adr/0034, as llmesh.kit.client.unserved_retry_delay): only UNAVAILABLE, only when not one
 * response message arrived (nothing was served, so nothing can be served twice), at most
 * UNSERVED_RETRY_BACKOFF_MS.length more tries, and only when the wait ends before `deadline`
 * (performance.now() milliseconds).
 */
export function unservedRetryDelayMs(
  code: Code,
  { received, retriesDone, deadline }: { received: boolean; retriesDone: number; deadline?: number },
): number | undefined {
  if (received || retriesDone >= UNSERVED_RETRY_BACKOFF_MS.length || code !== Code.Unavailable) return undefined;
  const delay = UNSERVED_RETRY_BACKOFF_MS[retriesDone] * (0.75 + Math.random() * 0.5);
  if (deadline !== undefined && performance.now() + delay >= deadline) return undefined;
  return delay;
}

/** A new request id, as Python's `uuid.uuid4().hex` writes one. */
export function newRequestId(): string {
  return randomUUID().replaceAll("-", "");
}

export type GenerateEvent = { delta: string } | { summary: GenerateSummary };

export interface FieldViolation {
  field: string;
  description: string;
}

/** A failed call: the gRPC status, its message, and the details the mesh sent with it. */
export class LlmeshError extends Error {
  constructor(
    message: string,
    /** The gRPC status, e.g. Code.Unauthenticated. */
    readonly code: Code,
    /** The request fields at fault (google.rpc.BadRequest). */
    readonly fieldViolations: FieldViolation[] = [],
    /** How long to wait before a retry, from google.rpc.RetryInfo. */
    readonly retryAfterMs?: number,
    /** google.rpc.ErrorInfo, when sent. */
    readonly errorInfo?: { reason: string; domain: string; metadata: Record<string, string> },
    /** The `x-request-id` the call was sent with (every try's), to find it in the mesh's logs and traces. */
    readonly requestId?: string,
  ) {
    super(message);
    this.name = "LlmeshError";
  }

  /** The status name as gRPC spells it, e.g. "UNAUTHENTICATED". */
  get status(): string {
    return Code[this.code].replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
  }

  static from(error: unknown, requestId?: string): LlmeshError {
    const e = ConnectError.from(error);
    const violations = e
      .findDetails(BadRequestSchema)
      .flatMap((d) => d.fieldViolations.map((v) => ({ field: v.field, description: v.description })));
    const retry = e.findDetails(RetryInfoSchema)[0]?.retryDelay;
    const retryAfterMs = retry ? Number(retry.seconds) * 1000 + Math.round(retry.nanos / 1e6) : undefined;
    const info = e.findDetails(ErrorInfoSchema)[0];
    const errorInfo = info ? { reason: info.reason, domain: info.domain, metadata: { ...info.metadata } } : undefined;
    return new LlmeshError(e.rawMessage, e.code, violations, retryAfterMs, errorInfo, requestId);
  }
}

export class LlmeshClient {
  readonly router: Client<typeof RouterService>;
  private readonly apiKey: string;
  private readonly timeoutMs: number;
  private readonly retryUnserved: boolean;

  constructor(options: ClientOptions) {
    const baseUrl = options.address.includes("://") ? options.address : `http://${options.address}`;
    this.router = createClient(RouterService, createGrpcTransport({ baseUrl }));
    this.apiKey = options.apiKey;
    this.timeoutMs = options.timeoutMs ?? 60_000;
    this.retryUnserved = options.retryUnserved ?? true;
  }

  /**
   * Streams an answer: text deltas as they come, then one summary (model, tier, cache outcome, cost).
   * A try that failed UNAVAILABLE before any message is made again (unservedRetryDelayMs) with the
   * same request and request id and what is left of the deadline; one that delivered anything never is.
   * Leaving the loop early cancels the try in flight.
   */
  async *generate(prompt: string | ChatMessage[], options: GenerateOptions = {}): AsyncGenerator<GenerateEvent> {
    const messages =
      typeof prompt === "string" ? [{ role: Role.USER, content: prompt }] : prompt.map((m) => ({ ...m }));
    const request = create(GenerateRequestSchema, {
      messages,
      maxTokens: options.maxTokens ?? 0,
      sampling: { temperature: options.temperature, seed: options.seed === undefined ? undefined : BigInt(options.seed) },
      model: options.model ?? "",
      useCase: options.useCase ?? "",
      cachePolicy: options.cachePolicy ?? CachePolicy.UNSPECIFIED,
    });
    const requestId = options.requestId || newRequestId();
    const headers = { authorization: `Bearer ${this.apiKey}`, "x-request-id": requestId };
    const timeoutMs = options.timeoutMs ?? this.timeoutMs;
    const deadline = performance.now() + timeoutMs;
    const retry = options.retryUnserved ?? this.retryUnserved;
    for (let retries = 0; ; retries++) {
      let received = false;
      try {
        const left = retries === 0 ? timeoutMs : Math.max(1, Math.round(deadline - performance.now()));
        for await (const response of this.router.generate(request, { headers, timeoutMs: left, signal: options.signal })) {
          received = true;
          if (response.event.case === "delta") yield { delta: response.event.value };
          else if (response.event.case === "summary") yield { summary: response.event.value };
        }
        return;
      } catch (error) {
        const failure = LlmeshError.from(error, requestId);
        const delay = retry ? unservedRetryDelayMs(failure.code, { received, retriesDone: retries, deadline }) : undefined;
        if (delay === undefined || options.signal?.aborted) throw failure;
        options.onRetry?.(failure, retries + 1);
        try {
          await sleep(delay, undefined, { signal: options.signal });
        } catch {
          throw new LlmeshError("the call was aborted", Code.Canceled, [], undefined, undefined, requestId);
        }
      }
    }
  }

  /** The whole answer and its summary (tried again as `generate` is). */
  async chat(prompt: string | ChatMessage[], options: GenerateOptions = {}): Promise<{ text: string; summary: GenerateSummary }> {
    const requestId = options.requestId || newRequestId();
    let text = "";
    let summary: GenerateSummary | undefined;
    for await (const event of this.generate(prompt, { ...options, requestId })) {
      if ("delta" in event) text += event.delta;
      else summary = event.summary;
    }
    if (!summary) {
      throw new LlmeshError("the router ended the stream without a summary", Code.Internal, [], undefined, undefined, requestId);
    }
    return { text, summary };
  }
}
