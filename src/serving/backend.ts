// What the scheduler (src/serving/scheduler.ts) needs from an executor: run one packed step and sample,
// release a sequence. KV blocks are counted by the scheduler itself (ceil(tokens / tokensPerBlock) per
// sequence, the rule the native pool follows), so a backend only states how many blocks it has.
import type { BatchLimits, SamplingOptions } from "./types.ts";

export interface BackendSeq {
  seqId: number;
  /**
   * This step's new tokens (a context chunk, or the one token to decode); null: one token, the one the
   * previous step() call sampled for this sequence (pipelining: it may not be back on the host yet).
   */
  tokens: readonly number[] | null;
  /** Position of tokens[0] = the sequence's cached length (0 for a fresh or recomputed sequence). */
  startPos: number;
  /** Sample a token from the last row (false for a context chunk that is not the prompt's last). */
  sample: boolean;
  sampling: SamplingOptions;
}

export interface StepOutput {
  tokens: Int32Array;
  /** The step's own duration (GPU timeline on cuda, compute on cpu). */
  stepMs: number;
  /** Device idle before the step started, waiting for the host (cuda: GPU timeline; cpu: host time between steps). */
  gapMs: number;
}

export interface BackendInfo {
  device: "cpu" | "cuda";
  /** GPU name, or "CPU reference executor". */
  deviceName: string;
  dtype: string;
  kvDtype: string;
  /** cuda: where the load's time went (tsllm-run --verbose prints it). */
  loadPhases?: string;
}

export interface StepBackend {
  readonly vocabSize: number;
  /** Runtime limits in force, and the KV blocks requests may use. */
  readonly limits: BatchLimits;
  readonly info: BackendInfo;
  /**
   * Launches one step and resolves with one token per sequence (-1 where sample is false). The next step
   * may be launched before this one resolves (steps run in call order). The token sampled for a sequence
   * depends only on its logits, its sampling options and the position of its last token, so a sequence
   * recomputed after a pause samples the same tokens again.
   * Must not block the event loop for the step's duration (the native backend waits on a worker thread).
   */
  step(seqs: readonly BackendSeq[]): Promise<StepOutput>;
  /** Frees a sequence's KV cache, also while launched steps still use it. Unknown ids are ignored. */
  release(seqId: number): void;
  /** Which kernels ran and the runtime's fusions, one line each (cuda: its node counters); none on cpu. */
  kernelReport?(): string[];
  close(): void;
}
