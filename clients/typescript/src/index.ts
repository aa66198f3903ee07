// A typed wrapper of llmesh's RouterService.Generate over the gRPC protocol (Connect's Node
// transport): the API key as `authorization` metadata, a deadline on every call, and failures as
// LlmeshError with their google.rpc details decoded (BadRequest, RetryInfo, ErrorInfo).
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
}

export interface GenerateOptions {
  maxTokens?: number;
  temperature?: number;
  seed?: number;
  /** Pins a model; unset lets the router choose by tier. */
  model?: string;
  useCase?: string;
  cachePolicy?: CachePolicy;
  /** This call's deadline in milliseconds. */
  timeoutMs?: number;
  signal?: AbortSignal;
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
  ) {
    super(message);
    this.name = "LlmeshError";
  }

  /** The status name as gRPC spells it, e.g. "UNAUTHENTICATED". */
  get status(): string {
    return Code[this.code].replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
  }

  static from(error: unknown): LlmeshError {
    const e = ConnectError.from(error);
    const violations = e
      .findDetails(BadRequestSchema)
      .flatMap((d) => d.fieldViolations.map((v) => ({ field: v.field, description: v.description })));
    const retry = e.findDetails(RetryInfoSchema)[0]?.retryDelay;
    const retryAfterMs = retry ? Number(retry.seconds) * 1000 + Math.round(retry.nanos / 1e6) : undefined;
    const info = e.findDetails(ErrorInfoSchema)[0];
    const errorInfo = info ? { reason: info.reason, domain: info.domain, metadata: { ...info.metadata } } : undefined;
    return new LlmeshError(e.rawMessage, e.code, violations, retryAfterMs, errorInfo);
  }
}

export class LlmeshClient {
  readonly router: Client<typeof RouterService>;
  private readonly apiKey: string;
  private readonly timeoutMs: number;

  constructor(options: ClientOptions) {
    const baseUrl = options.address.includes("://") ? options.address : `http://${options.address}`;
    this.router = createClient(RouterService, createGrpcTransport({ baseUrl }));
    this.apiKey = options.apiKey;
    this.timeoutMs = options.timeoutMs ?? 60_000;
  }

  /** Streams an answer: text deltas as they come, then one summary (model, tier, cache outcome, cost). */
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
    try {
      for await (const response of this.router.generate(request, {
        headers: { authorization: `Bearer ${this.apiKey}` },
        timeoutMs: options.timeoutMs ?? this.timeoutMs,
        signal: options.signal,
      })) {
        if (response.event.case === "delta") yield { delta: response.event.value };
        else if (response.event.case === "summary") yield { summary: response.event.value };
      }
    } catch (error) {
      throw LlmeshError.from(error);
    }
  }

  /** The whole answer and its summary. */
  async chat(prompt: string | ChatMessage[], options: GenerateOptions = {}): Promise<{ text: string; summary: GenerateSummary }> {
    let text = "";
    let summary: GenerateSummary | undefined;
    for await (const event of this.generate(prompt, options)) {
      if ("delta" in event) text += event.delta;
      else summary = event.summary;
    }
    if (!summary) throw new LlmeshError("the router ended the stream without a summary", Code.Internal);
    return { text, summary };
  }
}
