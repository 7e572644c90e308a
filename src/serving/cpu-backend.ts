// The StepBackend over the CPU reference executor (fp32 math, CI). Its KV cache is dense and unbounded;
// the pool size it states (kvBlocks) is what the scheduler enforces, so tests can force a small pool.
// A step is computed when launched (synchronously) and resolves on a later event-loop turn, so the
// scheduler's pipelining (next step planned before this one resolves, tokens fed from the previous
// step) runs here exactly as on the GPU.
import { performance } from "node:perf_hooks";
import type { ReferenceExecutor } from "../executor/reference.ts";
import { sampleToken } from "../executor/sampling.ts";
import type { BackendInfo, BackendSeq, StepBackend, StepOutput } from "./backend.ts";
import type { BatchLimits } from "./types.ts";

export class CpuStepBackend implements StepBackend {
  readonly vocabSize: number;
  readonly limits: BatchLimits;
  readonly info: BackendInfo;
  /** Tokens the last step sampled, by sequence (what a null-token sequence of the next step reads). */
  private lastSampled = new Map<number, number>();
  private lastEnd: number | null = null;

  constructor(
    private readonly ex: ReferenceExecutor,
    o: { kvBlocks?: number } = {},
  ) {
    this.vocabSize = ex.vocabSize;
    const tpb = ex.engine.config.build.tokens_per_block;
    const { max_batch_size, max_num_tokens, max_seq_len } = ex.limits;
    this.limits = {
      maxBatchSize: max_batch_size,
      maxNumTokens: max_num_tokens,
      maxSeqLen: max_seq_len,
      tokensPerBlock: tpb,
      kvBlocksTotal: o.kvBlocks ?? max_batch_size * Math.ceil(max_seq_len / tpb),
    };
    const build = ex.engine.config.build;
    this.info = {
      device: "cpu",
      deviceName: "CPU reference executor",
      dtype: build.dtype,
      kvDtype: build.kv_cache_dtype,
    };
  }

  step(seqs: readonly BackendSeq[]): Promise<StepOutput> {
    const t0 = performance.now();
    const gapMs = this.lastEnd === null ? 0 : t0 - this.lastEnd;
    const inputs = seqs.map((s) => {
      if (s.tokens) return [...s.tokens];
      const t = this.lastSampled.get(s.seqId);
      if (t === undefined)
        throw new Error(`sequence ${s.seqId} gives no token and the previous step sampled none for it`);
      return [t];
    });
    const logits = this.ex.step(
      seqs.map((s, i) => ({ seqId: s.seqId, tokens: inputs[i], logits: s.sample ? "last" : "none" })),
    );
    const tokens = Int32Array.from(seqs, (s, i) =>
      s.sample ? sampleToken(logits.get(s.seqId)![0], s.sampling, s.startPos + inputs[i].length - 1) : -1,
    );
    this.lastSampled.clear();
    seqs.forEach((s, i) => {
      if (s.sample) this.lastSampled.set(s.seqId, tokens[i]);
    });
    this.lastEnd = performance.now();
    const out = { tokens, stepMs: this.lastEnd - t0, gapMs };
    // Resolve on a later turn: the event loop runs between steps, as with a GPU step.
    return new Promise((res) => setImmediate(() => res(out)));
  }

  release(seqId: number): void {
    this.ex.release(seqId);
  }

  close(): void {
    this.ex.close();
  }
}
