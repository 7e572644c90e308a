// The StepBackend over the CPU reference executor (fp32 math, CI). Its KV cache is dense and unbounded;
// the pool size it states (kvBlocks) is what the scheduler enforces, so tests can force a small pool.
import type { ReferenceExecutor } from "../executor/reference.ts";
import { sampleToken } from "../executor/sampling.ts";
import type { BackendInfo, BackendSeq, StepBackend } from "./backend.ts";
import type { BatchLimits } from "./types.ts";

export class CpuStepBackend implements StepBackend {
  readonly vocabSize: number;
  readonly limits: BatchLimits;
  readonly info: BackendInfo;

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

  async step(seqs: readonly BackendSeq[]): Promise<Int32Array> {
    // The reference executor is synchronous: give the event loop a turn before each step.
    await new Promise((res) => setImmediate(res));
    const logits = this.ex.step(
      seqs.map((s) => ({ seqId: s.seqId, tokens: [...s.tokens], logits: s.sample ? "last" : "none" })),
    );
    return Int32Array.from(seqs, (s) =>
      s.sample ? sampleToken(logits.get(s.seqId)![0], s.sampling, s.startPos + s.tokens.length - 1) : -1,
    );
  }

  release(seqId: number): void {
    this.ex.release(seqId);
  }

  close(): void {
    this.ex.close();
  }
}
