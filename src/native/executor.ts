// The Executor interface (src/executor/types.ts) over the native CUDA runtime (src/native/binding.ts).
import { openEngine } from "../engine/reader.ts";
import { type Executor, LimitError, type SeqRequest } from "../executor/types.ts";
import { CudaEngine, type CudaLoadOptions, nativeAvailable } from "./binding.ts";

export { NATIVE_NOT_BUILT } from "./binding.ts";

/** Whether the native runtime is built here (a GPU is only touched when an engine loads). */
export function cudaAvailable(): boolean {
  return nativeAvailable();
}

export class CudaExecutor implements Executor {
  readonly vocabSize: number;
  private lens = new Map<number, number>();

  constructor(readonly engine: CudaEngine) {
    this.vocabSize = engine.vocabSize;
  }

  step(seqs: SeqRequest[]): Map<number, Float32Array[]> {
    const r = this.engine.step(
      seqs.map((s) => ({
        id: s.seqId,
        tokens: s.tokens,
        startPos: this.lens.get(s.seqId) ?? 0,
        allLogits: s.logits === "all",
      })),
      { logits: true },
    );
    const V = r.vocab;
    const out = new Map<number, Float32Array[]>();
    let row = 0;
    for (const s of seqs) {
      this.lens.set(s.seqId, (this.lens.get(s.seqId) ?? 0) + s.tokens.length);
      const n = s.logits === "all" ? s.tokens.length : 1;
      const rows: Float32Array[] = [];
      if (s.logits !== "none")
        for (let i = 0; i < n; i++) rows.push(r.logits!.slice((row + i) * V, (row + i + 1) * V));
      row += n;
      out.set(s.seqId, rows);
    }
    return out;
  }

  release(seqId: number): void {
    this.lens.delete(seqId);
    this.engine.release(seqId);
  }

  close(): void {
    this.engine.close();
  }
}

export function openCudaExecutor(dir: string, o: { verify?: boolean } & CudaLoadOptions = {}): Executor {
  const eng = openEngine(dir, { verify: o.verify });
  if (eng.ranks.length !== 1)
    throw new LimitError(
      `${dir}: a tp ${eng.ranks.length} engine needs one process per GPU; the TypeScript CUDA executor runs tp 1 engines`,
    );
  return new CudaExecutor(CudaEngine.load(eng.ranks[0].file, o));
}
