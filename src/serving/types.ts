// The request-level API (issue 11): a BatchManager takes requests of prompt token ids, runs them by
// in-flight batching over a paged KV cache, streams each request's tokens and reports how it finished.
// Servers, tsllm-run and tsllm-bench throughput use only this file's types; the scheduler drives any
// StepBackend (the CPU reference executor in CI, the native CUDA runtime on a GPU).

export interface SamplingOptions {
  /** <= 0: greedy (default 0). */
  temperature: number;
  /** 0 = all (default); 1 = greedy. */
  topK: number;
  /** 1 = all (default). */
  topP: number;
  /**
   * Same seed, prompt and options → same tokens, batched or alone, paused or not, CPU or GPU key (default 0). An
   * integer within ±(2^53 - 1) or a u64 as a bigint (src/executor/seed.ts); submit refuses any other.
   */
  seed: number | bigint;
}

export interface GenerationRequest {
  promptIds: readonly number[];
  /** >= 1. prompt + maxNewTokens must fit max_seq_len, else submit rejects. */
  maxNewTokens: number;
  sampling?: Partial<SamplingOptions>;
  /**
   * Tokens that end generation (included as the last output token, finishReason "stop").
   * Default: the engine's eos ids (generation_config.json's eos_token_id, else config.json's).
   */
  endIds?: readonly number[];
  /** Extra tokens that also stop generation, on top of endIds (ignoreEos does not affect them). */
  stopTokenIds?: readonly number[];
  /** Generate exactly maxNewTokens: endIds do not stop (stopTokenIds still do). */
  ignoreEos?: boolean;
  /** Caller's tag, echoed in errors and stats; not interpreted. */
  tag?: string;
}

export type FinishReason = "stop" | "length" | "cancelled" | "error";

/** One streamed token. */
export interface TokenEvent {
  tokenId: number;
  /** 0-based index among this request's generated tokens. */
  index: number;
  /** ms since submit (performance.now() clock). */
  timeMs: number;
}

export interface RequestTimings {
  /** submit → first scheduled (its first context chunk). */
  queueMs: number;
  /** submit → first generated token (NaN if none). */
  ttftMs: number;
  /** Each generated token's time since submit. */
  tokenTimesMs: number[];
  /** submit → finished. */
  e2eMs: number;
}

export interface RequestResult {
  outputIds: number[];
  finishReason: FinishReason;
  /** finishReason "stop": the end/stop token that ended it (it is also outputIds' last entry). */
  stopTokenId?: number;
  /** finishReason "error": what went wrong (the step failed). */
  error?: Error;
  timings: RequestTimings;
  /** Times this request was paused (its blocks freed) and later resumed by recomputation. */
  preemptions: number;
}

/** What a request that ended with finishReason "error" says went wrong, for one-line messages. */
export function failureText(r: Pick<RequestResult, "error">): string {
  return r.error?.message ?? "generation failed";
}

/**
 * A submitted request. Iterating it (once) streams its tokens; leaving the loop early does not cancel it (done still
 * resolves with every token: a caller may read the first tokens, then wait for the rest): call cancel() for that.
 * generateText (src/text/generate-text.ts), which the server and tsllm-run use, cancels when its reader leaves early.
 */
export interface RequestHandle extends AsyncIterable<TokenEvent> {
  /** Manager-assigned id, unique per manager. */
  readonly id: number;
  /** Resolves (never rejects) when the request finishes for any reason. */
  readonly done: Promise<RequestResult>;
  /** Stops the request at the next step boundary; its KV blocks are freed. No-op once finished. */
  cancel(): void;
}

/** Why submit refused a request: it can never run on this engine. The message carries the numbers. */
// warming_up: submit() while warmup() runs (its requests and counters are the warm-up's until it returns).
export type RejectReason = "invalid" | "too_long" | "kv_capacity" | "shutting_down" | "warming_up";

export class RequestRejectedError extends Error {
  override name = "RequestRejectedError";
  constructor(
    readonly reason: RejectReason,
    message: string,
    /** The figures behind the refusal (promptTokens, maxNewTokens, maxSeqLen, blocksNeeded, blocksTotal, …). */
    readonly details: Record<string, number> = {},
  ) {
    super(message);
  }
}

/**
 * Why a request whose prompt and new tokens cannot fit max_seq_len is refused, or undefined when it fits.
 * Every check of that rule (tsllm-run's prompts before the engine opens, a dataset's lines, a chat turn,
 * the batch manager's submit) says it in these words; `newTokens` names where the count came from.
 */
export function overMaxSeqLen(
  promptTokens: number,
  maxNewTokens: number,
  maxSeqLen: number,
  newTokens = "max_new_tokens",
): string | undefined {
  const total = promptTokens + maxNewTokens;
  if (total <= maxSeqLen) return undefined;
  return `prompt of ${promptTokens} tokens + ${newTokens} ${maxNewTokens} = ${total} exceeds max_seq_len ${maxSeqLen}`;
}

/** KV blocks a request holds at its longest: prompt + max_new_tokens - 1 tokens (the last token is never cached). */
export function kvBlocksNeeded(promptTokens: number, maxNewTokens: number, tokensPerBlock: number): number {
  return Math.ceil((promptTokens + maxNewTokens - 1) / tokensPerBlock);
}

/**
 * Why a request can never fit the KV pool however long it waits, or undefined when it fits: the batch manager's
 * submit refuses it in these words, and a dataset checks every line with them before its run starts.
 */
export function overKvPool(
  promptTokens: number,
  maxNewTokens: number,
  pool: { tokensPerBlock: number; kvBlocksTotal: number },
  newTokens = "max_new_tokens",
): string | undefined {
  const need = kvBlocksNeeded(promptTokens, maxNewTokens, pool.tokensPerBlock);
  if (need <= pool.kvBlocksTotal) return undefined;
  return `prompt of ${promptTokens} tokens + ${newTokens} ${maxNewTokens} needs ${need} KV blocks of ${pool.tokensPerBlock} tokens, the pool has ${pool.kvBlocksTotal}`;
}

/** TensorRT-LLM's admission policies (batch-manager.ts): admit only what can finish, or greedily with pause/resume. */
export const SCHEDULER_POLICIES = ["guaranteed_no_evict", "max_utilization"] as const;
export type SchedulerPolicy = (typeof SCHEDULER_POLICIES)[number];

export interface BatchLimits {
  maxBatchSize: number;
  maxNumTokens: number;
  maxSeqLen: number;
  tokensPerBlock: number;
  /** KV blocks usable by requests. */
  kvBlocksTotal: number;
}

export interface BatchStats {
  queued: number;
  running: number;
  paused: number;
  kvBlocksTotal: number;
  kvBlocksFree: number;
  /** Most blocks in use at once since start. */
  kvBlocksPeakUsed: number;
  /** Tokens generated / prompt tokens computed (recomputation after a pause counts again) since start. */
  tokensGenerated: number;
  promptTokensComputed: number;
  requestsFinished: number;
  requestsRejected: number;
  preemptions: number;
  steps: number;
}

export interface BatchManager {
  readonly limits: BatchLimits;
  readonly policy: SchedulerPolicy;
  readonly vocabSize: number;
  /** The default endIds. */
  readonly eosTokenIds: readonly number[];
  /** Queues a request; throws RequestRejectedError at once when it can never run. */
  submit(req: GenerationRequest): RequestHandle;
  stats(): BatchStats;
  /**
   * Refuses new requests, lets running and queued ones finish for up to drainTimeoutMs (default 0),
   * cancels the rest, then closes the backend.
   */
  shutdown(o?: { drainTimeoutMs?: number }): Promise<void>;
}
