// What every executor (reference CPU, native CUDA) takes and returns for one step.

export interface SeqRequest {
  /** Caller-chosen sequence id; its KV cache lives until release(). */
  seqId: number;
  /** New tokens of this sequence in this step. */
  tokens: number[];
  /** Which of its tokens need logits. */
  logits: "all" | "last" | "none";
}

export interface Executor {
  readonly vocabSize: number;
  /** Runs one packed step; returns, per sequence, one fp32 logits row per requested token. */
  step(seqs: SeqRequest[]): Map<number, Float32Array[]>;
  release(seqId: number): void;
  close(): void;
}

export class LimitError extends Error {
  override name = "LimitError";
}
