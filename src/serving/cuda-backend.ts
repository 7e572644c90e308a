// The StepBackend over the native CUDA runtime: each step runs on a libuv worker thread (stepAsync), and
// the engine's own paged KV pool is the pool the scheduler counts (all its blocks but the padding rows'
// scratch block). Releases asked for while a step runs wait until it returns (the engine is single-threaded).
import type { CudaEngine } from "../native/binding.ts";
import type { BackendInfo, BackendSeq, StepBackend } from "./backend.ts";
import type { BatchLimits } from "./types.ts";

export class CudaStepBackend implements StepBackend {
  readonly vocabSize: number;
  readonly limits: BatchLimits;
  readonly info: BackendInfo;
  private stepping = false;
  private deferred: number[] = [];
  /** Host wall time of the last native step (plan + GPU + copy back), for the host-gap figure. */
  lastNativeMs = 0;

  constructor(private readonly engine: CudaEngine) {
    const i = engine.info();
    this.vocabSize = i.vocabSize;
    this.limits = {
      maxBatchSize: i.maxBatchSize,
      maxNumTokens: i.maxNumTokens,
      maxSeqLen: i.maxSeqLen,
      tokensPerBlock: i.tokensPerBlock,
      kvBlocksTotal: i.kvBlocksFree,
    };
    this.info = { device: "cuda", deviceName: i.gpuName, dtype: i.dtype, kvDtype: i.kvDtype };
  }

  async step(seqs: readonly BackendSeq[]): Promise<Int32Array> {
    this.stepping = true;
    try {
      const r = await this.engine.stepAsync(
        seqs.map((s) => ({
          id: s.seqId,
          tokens: s.tokens,
          startPos: s.startPos,
          temperature: s.sampling.temperature,
          topK: s.sampling.topK,
          topP: s.sampling.topP,
          seed: s.sampling.seed,
        })),
      );
      this.lastNativeMs = r.ms;
      seqs.forEach((s, k) => {
        if (!s.sample) r.tokens[k] = -1;
      });
      return r.tokens;
    } finally {
      this.stepping = false;
      for (const id of this.deferred.splice(0)) this.engine.release(id);
    }
  }

  release(seqId: number): void {
    if (this.stepping) this.deferred.push(seqId);
    else this.engine.release(seqId);
  }

  close(): void {
    this.engine.close();
  }
}
