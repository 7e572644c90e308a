// In-flight batching over a paged KV cache (the BatchManager of types.ts) on any StepBackend.
//
// Each step packs, oldest request first: the decode token of every running request, the next context
// chunk of requests still reading their prompt, then newly admitted requests (paused ones before queued
// ones), all within max_num_tokens tokens and max_batch_size sequences (chunked context: a long prompt
// is read over several steps while the others keep decoding).
//
// KV blocks are counted here: a sequence holding n tokens holds ceil(n / tokensPerBlock) blocks.
// - guaranteed_no_evict admits a request only when the blocks it could ever need (prompt +
//   maxNewTokens - 1 tokens; the last sampled token is never fed back) fit beside what every running
//   request could ever need, so nothing is ever paused.
// - max_utilization admits when the blocks of its whole context are free now; when a step's decode
//   tokens need blocks that are not free, the newest running requests are paused (not one whose last
//   token is being sampled: its blocks come back with that step): their blocks are freed and they later
//   resume by recomputing prompt + generated tokens as context. Sampling depends only on logits, options
//   and position, so a resumed request continues exactly as it would have.
//
// Pipelining: while the backend runs step N, step N+1 is planned and launched as if every request of step N
// goes on; a decode token that step N samples reaches step N+1 on the device (BackendSeq.tokens null). A
// request that stops at step N drops whatever step N+1 computes for it (results carry the request's epoch,
// bumped on finish and pause). Blocks can be freed while launched steps still use them: steps run in order.
// If step N fails, its requests end with the error and the other requests of step N+1 start over, as after a
// pause (also under guaranteed_no_evict, not counted as preemptions): step N+1 may depend on what step N
// never computed (restartBehind).
import { performance } from "node:perf_hooks";
import { seedProblem } from "../executor/seed.ts";
import type { BackendInfo, BackendSeq, StepBackend, StepOutput } from "./backend.ts";
import { TokenStream } from "./token-stream.ts";
import {
  type BatchLimits,
  type BatchManager,
  type BatchStats,
  type FinishReason,
  type GenerationRequest,
  kvBlocksNeeded,
  overKvPool,
  overMaxSeqLen,
  type RequestHandle,
  RequestRejectedError,
  type RequestResult,
  type SamplingOptions,
  type SchedulerPolicy,
  type TokenEvent,
} from "./types.ts";

export interface BatchManagerOptions {
  policy?: SchedulerPolicy;
  /** Default end ids (the engine's eos ids). */
  eosTokenIds?: readonly number[];
  /** false: plan each step after the previous one's tokens are back (no overlap, no device-side feed). */
  overlap?: boolean;
}

/**
 * warmup()'s default batch sizes: 1-4, then the native runtime's decode graph sizes up to max_batch_size (the powers of
 * two to 256, then every 128 to 1,024: native/src/runtime/options.h, next_graph_size; a batch between two pads to the
 * larger one's graph), and max_batch_size itself when it lies between two (for the graph it pads to). Why those: each
 * graph is captured (and its GEMMs tuned, and with TSLLM_GEMM_STEP step-tuned, seconds each) the first time its size
 * runs, which without them fell inside the timed run or the first requests (session 38: 384-896 were met
 * mid-benchmark); and with the warm-up's 8-token prompts their context steps have 8 · b rows, the row counts (up to
 * 1024) whose GEMM algorithms that runtime times on first use (gemm_tuned_m).
 */
export function warmupBatchSizes(maxBatchSize: number): number[] {
  const sizes = [1, 2, 3, 4];
  let b = 8;
  for (; b <= Math.min(maxBatchSize, 1024); b = b < 256 ? b * 2 : b + 128) sizes.push(b);
  // A max_batch_size between two graph sizes: the runtime also captures the larger one (native/src/runtime/load.cc,
  // graph_sizes: up to the first size >= max_bs), which a batch of max_batch_size pads to. Without this batch its
  // capture (and GEMM tuning) still fell inside the timed run (--max-batch-size 12: graph 16; 1000: graph 1024).
  if (b <= 1024 && maxBatchSize < b && !sizes.includes(maxBatchSize)) sizes.push(maxBatchSize);
  return sizes.filter((s) => s <= maxBatchSize);
}

/** What warmup() ran. */
export interface WarmupReport {
  ms: number;
  batchSizes: number[];
  steps: number;
}

/** A WarmupReport for the logs: "batches 1, 2, 3, 4: 12 steps in 845 ms". */
export function describeWarmup(w: WarmupReport): string {
  return `batches ${w.batchSizes.join(", ")}: ${w.steps} steps in ${w.ms.toFixed(0)} ms`;
}

type State = "queued" | "running" | "paused" | "done";

interface Req {
  id: number;
  prompt: number[];
  out: number[];
  maxNew: number;
  sampling: SamplingOptions;
  ends: Set<number>;
  stops: Set<number>;
  state: State;
  /** Tokens whose KV is cached once every launched step has run. */
  computed: number;
  /** Tokens sampled by launched steps whose results have not come back (0 or 1). */
  spec: number;
  /** Bumped on finish and pause: results of steps launched before are dropped. */
  epoch: number;
  /** KV blocks held. */
  blocks: number;
  /** Blocks it could ever need (guaranteed_no_evict). */
  worst: number;
  submitAt: number;
  scheduledAt?: number;
  tokenTimes: number[];
  preemptions: number;
  stream: TokenStream<TokenEvent>;
  resolve: (r: RequestResult) => void;
}

interface Planned {
  r: Req;
  epoch: number;
  seq: BackendSeq;
}

interface Launched {
  planned: Planned[];
  result: Promise<StepOutput>;
  t0: number;
  tokens: number;
  decode: number;
  afterIdle: boolean;
  held: Held;
}

/** Requests queued or paused when a step was planned, and why they were not in it (null when none waited). */
export interface Held {
  waiting: number;
  heldBy: HeldBy | null;
}

/**
 * What kept waiting requests (queued or paused) out of a step when it was planned: the batch was full
 * (max_batch_size), the step's token budget was spent (max_num_tokens), or the next request's KV blocks were
 * not there (kv_cache: under guaranteed_no_evict, what every running request could still need is reserved).
 */
export type HeldBy = "max_batch_size" | "max_num_tokens" | "kv_cache";

/** One step as the scheduler saw it (Held: what waited when it was planned). */
export interface StepRecord extends Held {
  seqs: number;
  tokens: number;
  /** Sequences that decoded one token (the rest read context). */
  decode: number;
  /** Launch to results back on the event loop. */
  ms: number;
  /** The step itself as the backend timed it (GPU timeline on cuda). */
  stepMs: number;
  /** Device idle before this step, waiting for the host (0 for the first step after idling). */
  gapMs: number;
}

const DEFAULT_SAMPLING: SamplingOptions = { temperature: 0, topK: 0, topP: 1, seed: 0 };

/** The longest delay setTimeout keeps (a longer one, or Infinity, fires after 1 ms). */
const MAX_TIMER_MS = 2 ** 31 - 1;

export class InflightBatchManager implements BatchManager {
  readonly limits: BatchLimits;
  readonly policy: SchedulerPolicy;
  readonly vocabSize: number;
  readonly eosTokenIds: readonly number[];
  /** Steps launched and not yet back when the next one is planned: 2 with overlap, else 1. */
  private readonly depth: number;

  private nextId = 1;
  private queue: Req[] = [];
  /** Running and paused requests, in arrival order. */
  private running: Req[] = [];
  private paused: Req[] = [];
  private blocksUsed = 0;
  private wakeUp: (() => void) | null = null;
  private loopDone: Promise<void> | null = null;
  private closing = false;
  private warming = false; // warmup() runs: submit() refuses (warmup() submits through admit())
  private closed = false;
  private s = {
    kvBlocksPeakUsed: 0,
    tokensGenerated: 0,
    promptTokensComputed: 0,
    requestsFinished: 0,
    requestsRejected: 0,
    preemptions: 0,
    steps: 0,
  };
  /** Called after every step with what it ran (benchmarks, progress). */
  onStep?: (s: StepRecord) => void;

  constructor(
    private readonly backend: StepBackend,
    o: BatchManagerOptions = {},
  ) {
    this.limits = backend.limits;
    this.policy = o.policy ?? "guaranteed_no_evict";
    this.depth = o.overlap === false ? 1 : 2;
    this.vocabSize = backend.vocabSize;
    this.eosTokenIds = [...(o.eosTokenIds ?? [])];
  }

  /** What the backend runs on (device name, dtypes). */
  get backendInfo(): BackendInfo {
    return this.backend.info;
  }

  /** Which kernels the backend ran (tsllm-run --verbose); empty on cpu. */
  kernelReport(): string[] {
    return this.backend.kernelReport?.() ?? [];
  }

  private blocksFor(tokens: number): number {
    return Math.ceil(tokens / this.limits.tokensPerBlock);
  }

  submit(req: GenerationRequest): RequestHandle {
    if (this.warming) {
      const tag = req.tag ? `${req.tag}: ` : "";
      throw new RequestRejectedError("warming_up", `${tag}warmup() is running: submit once it has returned`);
    }
    return this.admit(req);
  }

  private admit(req: GenerationRequest): RequestHandle {
    const reject = (
      reason: RequestRejectedError["reason"],
      msg: string,
      details: Record<string, number> = {},
    ) => {
      this.s.requestsRejected++;
      const tag = req.tag ? `${req.tag}: ` : "";
      throw new RequestRejectedError(reason, `${tag}${msg}`, details);
    };
    if (this.closing) reject("shutting_down", "the batch manager is shutting down");
    const prompt = [...req.promptIds];
    const maxNew = req.maxNewTokens;
    const { maxSeqLen } = this.limits;
    if (prompt.length < 1) reject("invalid", "the prompt is empty");
    if (!Number.isInteger(maxNew) || maxNew < 1)
      reject("invalid", `max_new_tokens must be an integer >= 1, got ${maxNew}`);
    for (const t of prompt)
      if (!Number.isInteger(t) || t < 0 || t >= this.vocabSize)
        reject("invalid", `token id ${t} outside the vocabulary (0..${this.vocabSize - 1})`, {
          vocabSize: this.vocabSize,
        });
    // An option given as undefined takes its default, as one left out does (Partial<> allows both; spread alone
    // would copy the undefined over the default and refuse the request as out of range).
    const given = Object.entries(req.sampling ?? {}).filter(([, v]) => v !== undefined);
    const sampling: SamplingOptions = { ...DEFAULT_SAMPLING, ...Object.fromEntries(given) };
    if (!(sampling.temperature >= 0) || !(sampling.topP > 0 && sampling.topP <= 1) || !(sampling.topK >= 0))
      reject("invalid", `sampling options out of range (temperature >= 0, top_k >= 0, 0 < top_p <= 1)`);
    // Refused here, not by a backend mid-step (the GPU's failed the whole batch on a negative seed).
    const badSeed = seedProblem(sampling.seed);
    if (badSeed) reject("invalid", `seed ${badSeed}`);
    const tooLong = overMaxSeqLen(prompt.length, maxNew, maxSeqLen);
    if (tooLong)
      reject("too_long", tooLong, { promptTokens: prompt.length, maxNewTokens: maxNew, maxSeqLen });
    const worst = kvBlocksNeeded(prompt.length, maxNew, this.limits.tokensPerBlock);
    const noRoom = overKvPool(prompt.length, maxNew, this.limits);
    if (noRoom)
      reject("kv_capacity", noRoom, {
        promptTokens: prompt.length,
        maxNewTokens: maxNew,
        blocksNeeded: worst,
        blocksTotal: this.limits.kvBlocksTotal,
        tokensPerBlock: this.limits.tokensPerBlock,
      });
    const stream = new TokenStream<TokenEvent>();
    let resolve!: (r: RequestResult) => void;
    const done = new Promise<RequestResult>((res) => {
      resolve = res;
    });
    const r: Req = {
      id: this.nextId++,
      prompt,
      out: [],
      maxNew,
      sampling,
      ends: new Set(req.ignoreEos ? [] : (req.endIds ?? this.eosTokenIds)),
      stops: new Set(req.stopTokenIds ?? []),
      state: "queued",
      computed: 0,
      spec: 0,
      epoch: 0,
      blocks: 0,
      worst,
      submitAt: performance.now(),
      tokenTimes: [],
      preemptions: 0,
      stream,
      resolve,
    };
    this.queue.push(r);
    this.kick();
    return {
      id: r.id,
      done,
      cancel: () => this.cancel(r),
      [Symbol.asyncIterator]: () => stream[Symbol.asyncIterator](),
    };
  }

  stats(): BatchStats {
    return {
      queued: this.queue.length,
      running: this.running.length,
      paused: this.paused.length,
      kvBlocksTotal: this.limits.kvBlocksTotal,
      kvBlocksFree: this.limits.kvBlocksTotal - this.blocksUsed,
      ...this.s,
    };
  }

  /**
   * Runs the steps a fresh engine does slowly the first time, before any user request: for each batch size
   * (default warmupBatchSizes), that many short requests at once (a context step, then two decode steps: the first
   * runs eagerly, the second captures the CUDA graph and, at batch 1, step-tunes it), so the runtime's kernel tuners
   * and graph captures happen here. Why: on the native runtime the first lone request after load otherwise waited
   * 0.5-1.5 s for batch 1's step tuning alone (native/kernels-notes.md, session 25), and the first prompt of 128
   * tokens another 110-150 ms for the GEMM algorithms of 128 rows (session 26). Afterwards the counters start
   * again from zero (the warm-up's blocks are all freed). Call it before submitting anything; a submit() while it
   * runs is refused (RequestRejectedError "warming_up").
   */
  async warmup(o: { batchSizes?: readonly number[]; promptLen?: number } = {}): Promise<WarmupReport> {
    if (this.queue.length || this.running.length || this.paused.length)
      throw new Error("warmup() runs before any request is submitted");
    const sizes = (o.batchSizes ?? warmupBatchSizes(this.limits.maxBatchSize)).filter(
      (b) => b >= 1 && b <= this.limits.maxBatchSize,
    );
    const promptLen = Math.max(1, Math.min(o.promptLen ?? 8, this.limits.maxSeqLen - 3));
    const prompt = Array.from({ length: promptLen }, (_, i) => (i + 1) % this.vocabSize);
    const t0 = performance.now();
    // Until it returns, other submits are refused rather than folded into the warm-up's steps and zeroed counters.
    this.warming = true;
    try {
      // Start the step loop now, with nothing to plan: it parks, so the first batch's submits below only wake it
      // and all b requests are in its first step (a loop started by the first submit plans that request's step
      // alone).
      this.kick();
      for (const b of sizes) {
        const handles = Array.from({ length: b }, () =>
          this.admit({ promptIds: prompt, maxNewTokens: 3, ignoreEos: true, tag: "warm-up" }),
        );
        const results = await Promise.all(handles.map((h) => h.done));
        const failed = results.find((r) => r.finishReason === "error");
        if (failed) throw new Error(`warm-up at batch ${b} failed: ${failed.error?.message ?? "step error"}`);
      }
      // (Let the step loop park first: a step launched ahead may still be completing.)
      while (this.loopDone && !this.wakeUp) await new Promise((res) => setTimeout(res, 1));
    } finally {
      this.warming = false;
    }
    const steps = this.s.steps;
    for (const k of Object.keys(this.s) as (keyof typeof this.s)[]) this.s[k] = 0;
    return { ms: performance.now() - t0, batchSizes: sizes, steps };
  }

  async shutdown(o: { drainTimeoutMs?: number } = {}): Promise<void> {
    this.closing = true;
    const all = () => [...this.queue, ...this.running, ...this.paused];
    const drained = new Promise<void>((res) => {
      const check = () => (all().length === 0 ? res() : setTimeout(check, 5));
      check();
    });
    const ms = o.drainTimeoutMs ?? 0;
    if (ms > 0) {
      // setTimeout fires after 1 ms for a delay over 2^31 - 1 ms (about 24.8 days) or Infinity: such a drain time
      // waits for the requests alone. The timer is cleared once they are done, so it holds nothing up.
      let timer: NodeJS.Timeout | undefined;
      const timeUp = new Promise((res) => {
        if (ms <= MAX_TIMER_MS) timer = setTimeout(res, ms);
      });
      await Promise.race([drained, timeUp]);
      clearTimeout(timer);
    }
    for (const r of all()) this.cancel(r);
    this.kick();
    await this.loopDone;
    if (!this.closed) {
      this.closed = true;
      this.backend.close();
    }
  }

  /** At once, also mid-step: what launched steps compute for it is dropped (epoch). */
  private cancel(r: Req): void {
    this.finish(r, "cancelled");
  }

  private kick(): void {
    if (this.wakeUp) {
      const w = this.wakeUp;
      this.wakeUp = null;
      w();
    }
    if (!this.loopDone)
      this.loopDone = this.loop().finally(() => {
        this.loopDone = null;
        // A request submitted while a failed loop waited for its launched steps (e.g. a retry from the `done`
        // callback of a request that loop failed) found it still set and did not start one: start it now.
        if (this.waiting() > 0) this.kick();
      });
  }

  private finish(r: Req, reason: FinishReason, error?: Error): void {
    if (r.state === "done") return;
    const was = r.state;
    r.state = "done";
    r.epoch++;
    if (was === "queued") this.queue.splice(this.queue.indexOf(r), 1);
    else if (was === "running") this.running.splice(this.running.indexOf(r), 1);
    else if (was === "paused") this.paused.splice(this.paused.indexOf(r), 1);
    this.freeBlocks(r);
    const now = performance.now();
    const last = r.out[r.out.length - 1];
    this.s.requestsFinished++;
    r.stream.end();
    r.resolve({
      outputIds: r.out,
      finishReason: reason,
      ...(reason === "stop" ? { stopTokenId: last } : {}),
      ...(error ? { error } : {}),
      preemptions: r.preemptions,
      timings: {
        queueMs: (r.scheduledAt ?? now) - r.submitAt,
        ttftMs: r.tokenTimes.length ? r.tokenTimes[0] : Number.NaN,
        tokenTimesMs: r.tokenTimes,
        e2eMs: now - r.submitAt,
      },
    });
  }

  private freeBlocks(r: Req): void {
    if (r.computed > 0 || r.blocks > 0) this.backend.release(r.id);
    this.blocksUsed -= r.blocks;
    r.blocks = 0;
    r.computed = 0;
    r.spec = 0;
  }

  /**
   * max_utilization: frees the blocks of a running request; it resumes later by recomputation. Also a request
   * restarted behind a failed step (restartBehind), not counted as a preemption: no pool pressure paused it.
   */
  private pause(r: Req, preempted = true): void {
    this.running.splice(this.running.indexOf(r), 1);
    this.freeBlocks(r);
    r.state = "paused";
    r.epoch++;
    if (preempted) {
      r.preemptions++;
      this.s.preemptions++;
    }
    let i = this.paused.findIndex((p) => p.id > r.id);
    if (i < 0) i = this.paused.length;
    this.paused.splice(i, 0, r);
  }

  /**
   * max_utilization: the request to pause for a block the running request at index i needs: the newest one after it
   * with tokens left to compute. Not one whose last token is being sampled by the step in flight (overlap): it frees
   * its blocks as soon as that step is back, where pausing it dropped that token and recomputed its whole context for
   * it once the pool had room again (after the older requests, often at their end).
   */
  private victim(i: number): Req | undefined {
    if (this.policy !== "max_utilization") return undefined;
    for (let k = this.running.length - 1; k > i; k--) {
      const v = this.running[k];
      if (v.out.length + v.spec < v.maxNew) return v;
    }
    return undefined;
  }

  /** Tokens of the sequence (prompt + generated, sampled or about to be) not yet in the KV cache. */
  private pending(r: Req): number {
    return r.prompt.length + r.out.length + r.spec - r.computed;
  }

  private plan(): { planned: Planned[]; held: Held } {
    const { maxNumTokens, maxBatchSize, kvBlocksTotal } = this.limits;
    let budget = maxNumTokens;
    const planned: Planned[] = [];
    const grow = (r: Req, take: number) => {
      const need = this.blocksFor(r.computed + take) - r.blocks;
      r.blocks += need;
      this.blocksUsed += need;
      const sample = take === this.pending(r);
      const from = r.computed;
      const known = r.prompt.length + r.out.length;
      let tokens: number[] | null;
      if (from >= known) {
        // The token the launched step samples: fed on the device.
        if (take !== 1 || r.spec !== 1 || from !== known)
          throw new Error("batch manager: bad pipelined token (scheduler bug)");
        tokens = null;
      } else {
        if (from + take > known)
          throw new Error("batch manager: planned past the known tokens (scheduler bug)");
        tokens = [];
        for (let k = from; k < from + take; k++)
          tokens.push(k < r.prompt.length ? r.prompt[k] : r.out[k - r.prompt.length]);
      }
      planned.push({
        r,
        epoch: r.epoch,
        seq: { seqId: r.id, tokens, startPos: from, sample, sampling: r.sampling },
      });
      r.computed += take;
      if (sample) r.spec++;
      budget -= take;
    };
    // 1. Running requests, oldest first: decode tokens and context chunks (not one whose last token is
    // already being sampled).
    for (let i = 0; i < this.running.length && budget > 0; i++) {
      const r = this.running[i];
      if (r.out.length + r.spec >= r.maxNew || this.pending(r) <= 0) continue;
      let take = Math.min(this.pending(r), budget);
      let free = kvBlocksTotal - this.blocksUsed;
      let need = this.blocksFor(r.computed + take) - r.blocks;
      while (need > free) {
        const v = this.victim(i);
        if (!v) break;
        this.pause(v);
        free = kvBlocksTotal - this.blocksUsed;
      }
      if (need > free) {
        // A context chunk shrinks to the blocks left; a decode token of the newest request waits paused. One with
        // newer requests left (each finishing: see victim) waits unpaused for their blocks, back with the step in
        // flight.
        take = Math.min(take, (r.blocks + free) * this.limits.tokensPerBlock - r.computed);
        if (take <= 0) {
          if (this.policy === "max_utilization" && planned.length > 0 && i === this.running.length - 1) {
            this.pause(r);
            i--;
          }
          continue;
        }
        need = this.blocksFor(r.computed + take) - r.blocks;
      }
      grow(r, take);
    }
    // 2. Admission: paused requests (oldest first), then queued ones in order; no overtaking.
    const reservedWorst = () => this.running.reduce((a, r) => a + r.worst, 0);
    while (budget > 0 && this.running.length < maxBatchSize) {
      const r = this.paused[0] ?? this.queue[0];
      if (!r) break;
      const context = this.pending(r);
      const free = kvBlocksTotal - this.blocksUsed;
      const fits =
        this.policy === "guaranteed_no_evict"
          ? reservedWorst() + r.worst <= kvBlocksTotal
          : this.blocksFor(context) <= free;
      if (!fits) break;
      (r.state === "paused" ? this.paused : this.queue).shift();
      r.state = "running";
      r.scheduledAt ??= performance.now();
      this.running.push(r);
      grow(r, Math.min(context, budget));
    }
    this.s.kvBlocksPeakUsed = Math.max(this.s.kvBlocksPeakUsed, this.blocksUsed);
    // Admission above stops at a full batch, a spent budget or a request whose blocks do not fit (in that order of
    // the loop's tests), or when nothing waits.
    const waiting = this.paused.length + this.queue.length;
    const heldBy =
      waiting === 0
        ? null
        : this.running.length >= maxBatchSize
          ? "max_batch_size"
          : budget <= 0
            ? "max_num_tokens"
            : "kv_cache";
    // One-token sequences (decode tokens) first, each group in plan order: the CUDA runtime runs the leading
    // one-token sequences of a mixed step through its decode attention kernel (StepLayout::num_single).
    const one = (p: Planned) => (p.seq.tokens?.length ?? 1) === 1;
    return {
      planned: [...planned.filter(one), ...planned.filter((p) => !one(p))],
      held: { waiting, heldBy },
    };
  }

  private waiting(): number {
    return this.queue.length + this.running.length + this.paused.length;
  }

  private launch(planned: Planned[], held: Held, afterIdle: boolean): Launched {
    const seqs = planned.map((p) => p.seq);
    let result: Promise<StepOutput>;
    try {
      result = this.backend.step(seqs);
    } catch (e) {
      result = Promise.reject(e);
    }
    result.catch(() => {}); // handled when awaited
    this.s.steps++;
    let decode = 0;
    let tokens = 0;
    for (const { r, seq } of planned) {
      const n = seq.tokens?.length ?? 1;
      tokens += n;
      if (n === 1 && seq.startPos >= r.prompt.length) decode++;
      else this.s.promptTokensComputed += n;
    }
    return { planned, result, t0: performance.now(), tokens, decode, afterIdle, held };
  }

  /** next: the step launched behind this one, if any (overlap). */
  private complete(l: Launched, out: StepOutput | null, error: Error | null, next?: Launched): void {
    const now = performance.now();
    l.planned.forEach(({ r, epoch, seq }, k) => {
      if (r.epoch !== epoch || r.state !== "running") return; // finished, cancelled or paused since
      if (error) return this.finish(r, "error", error);
      if (!seq.sample) return;
      r.spec--;
      const tok = out!.tokens[k];
      r.out.push(tok);
      r.tokenTimes.push(now - r.submitAt);
      this.s.tokensGenerated++;
      r.stream.push({ tokenId: tok, index: r.out.length - 1, timeMs: now - r.submitAt });
      if (r.ends.has(tok) || r.stops.has(tok)) this.finish(r, "stop");
      else if (r.out.length >= r.maxNew) this.finish(r, "length");
    });
    if (error && next) this.restartBehind(l, next);
    this.onStep?.({
      seqs: l.planned.length,
      tokens: l.tokens,
      decode: l.decode,
      ms: now - l.t0,
      stepMs: out?.stepMs ?? Number.NaN,
      gapMs: l.afterIdle ? 0 : (out?.gapMs ?? 0),
      ...l.held,
    });
  }

  /**
   * After a step failed (its requests ended with the error): the step launched behind it that continues one of its
   * sequences (a pipelined token the failed step may never have sampled, or a chunk past what it cached) is refused
   * whole by the CPU and CUDA backends, and its other requests would end with that error; each of those feeds its own
   * pipelined token to the step planned behind that one, so every request that joined while this went on failed in
   * turn (one failed step ended all that arrived after it). Those requests start over instead, recomputed as after a
   * pause, so that nothing planned from now on depends on the failed step.
   */
  private restartBehind(failed: Launched, next: Launched): void {
    // A continuation: the same request at the same epoch. Not one restarted in between (a pause bumps its epoch):
    // when the failed step was itself the one behind a failed step, its requests had been restarted, and restarting
    // the step behind it for them again, and so on for every failed step, kept them from ever ending while the
    // device kept failing. (A request cancelled in between still counts: the step behind carries its continuation.)
    const inFailed = new Map(failed.planned.map((p) => [p.r, p.epoch]));
    if (!next.planned.some((p) => inFailed.get(p.r) === p.epoch)) return;
    for (const { r, epoch } of next.planned)
      if (r.epoch === epoch && r.state === "running") this.pause(r, false);
  }

  /**
   * The step loop. Should it throw (onStep threw, or a scheduler bug), every request ends with the error (an Error,
   * whatever was thrown: RequestResult.error is one) and the loop then waits for the steps it launched before it
   * returns: until then they may still run on the device, so neither a new loop nor shutdown()'s backend.close() may
   * start (close() under a running step frees what it uses).
   */
  private async loop(): Promise<void> {
    const launched: Launched[] = [];
    try {
      await this.runSteps(launched);
    } catch (e) {
      const error = e instanceof Error ? e : new Error(String(e));
      for (const r of [...this.queue, ...this.running, ...this.paused]) this.finish(r, "error", error);
      await Promise.allSettled(launched.map((l) => l.result));
    }
  }

  private async runSteps(launched: Launched[]): Promise<void> {
    let afterIdle = true;
    for (;;) {
      if (launched.length < this.depth) {
        const { planned, held } = this.plan();
        if (planned.length) {
          launched.push(this.launch(planned, held, afterIdle));
          afterIdle = false;
          if (launched.length < this.depth) continue; // plan the next step while this one runs
        }
      }
      if (launched.length === 0) {
        if (this.waiting() > 0 && !this.closing)
          throw new Error("batch manager: nothing schedulable although requests wait (scheduler bug)");
        if (this.closing && this.waiting() === 0) return;
        afterIdle = true;
        await new Promise<void>((res) => {
          this.wakeUp = res;
        });
        continue;
      }
      const l = launched.shift()!;
      let out: StepOutput | null = null;
      let error: Error | null = null;
      try {
        out = await l.result;
      } catch (e) {
        error = e instanceof Error ? e : new Error(String(e));
      }
      this.complete(l, out, error, launched[0]);
    }
  }
}
