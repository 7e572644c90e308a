// The StepBackend over the native CUDA runtime, pipelined: step() launches on the main thread
// (tsllm_step_launch: plan, upload, enqueue; no wait for the GPU) and waits for the result on a libuv worker
// thread (tsllm_step_wait), so the event loop keeps running and the next step is enqueued behind this one
// while it runs. The engine's own paged KV pool is the pool the scheduler counts (all its blocks but the
// padding rows' scratch block).
import { seedU64 } from "../executor/seed.ts";
import { type CudaEngine, describeLoadPhases } from "../native/binding.ts";
import { kernelReport } from "../native/kernel-report.ts";
import type { BackendInfo, BackendSeq, StepBackend, StepOutput } from "./backend.ts";
import type { BatchLimits } from "./types.ts";

export class CudaStepBackend implements StepBackend {
  readonly vocabSize: number;
  readonly limits: BatchLimits;
  readonly info: BackendInfo;

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
    const phases = engine.loadStats.phases;
    this.info = {
      device: "cuda",
      deviceName: i.gpuName,
      dtype: i.dtype,
      kvDtype: i.kvDtype,
      ...(phases ? { loadPhases: describeLoadPhases(phases) } : {}),
    };
  }

  async step(seqs: readonly BackendSeq[]): Promise<StepOutput> {
    const ticket = this.engine.stepLaunch(
      seqs.map((s) => ({
        id: s.seqId,
        tokens: s.tokens,
        startPos: s.startPos,
        temperature: s.sampling.temperature,
        topK: s.sampling.topK,
        topP: s.sampling.topP,
        // The u64 the CPU sampler keys on too: the addon refused a negative seed (mid-step) and read a number past
        // 2^53 with its digits already lost.
        seed: seedU64(s.sampling.seed),
      })),
    );
    const r = await this.engine.stepWait(ticket, seqs.length);
    seqs.forEach((s, k) => {
      if (!s.sample) r.tokens[k] = -1;
    });
    return { tokens: r.tokens, stepMs: r.gpuMs, gapMs: r.gapMs };
  }

  release(seqId: number): void {
    this.engine.release(seqId);
  }

  kernelReport(): string[] {
    return kernelReport(this.engine.nodeStats());
  }

  close(): void {
    this.engine.close();
  }
}
