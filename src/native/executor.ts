// The Executor interface (src/executor/types.ts) over the native CUDA runtime (src/native/binding.ts).
import { combineChunkDigests, mismatch } from "../engine/hash.ts";
import { EngineError, type EngineRank, openEngine, streamRankWeights } from "../engine/reader.ts";
import { type Executor, LimitError, type SeqRequest } from "../executor/types.ts";
import { CudaEngine, type CudaLoadOptions } from "./binding.ts";

export { cudaUnavailable, NATIVE_NOT_BUILT } from "./binding.ts";

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

/**
 * Loads a rank onto the GPU with its content hash checked in the same pass that uploads the weights
 * (the size and header were checked before, by openEngine). A mismatch unloads the engine and says so.
 */
export function loadVerified(rank: EngineRank, o: { verify?: boolean } & CudaLoadOptions = {}): CudaEngine {
  const entry = rank.entry;
  if (o.verify === false || !entry) return CudaEngine.load(rank.file, o);
  // Engines from before chunked hashes: their whole-file SHA-256 cannot be split over threads.
  if (!entry.hash) {
    streamRankWeights({ ...rank, header: { ...rank.header, weights: [] } }, () => {});
    return CudaEngine.load(rank.file, o);
  }
  const eng = CudaEngine.load(rank.file, { ...o, hashChunkBytes: entry.hash.chunk_bytes });
  const got = combineChunkDigests(eng.loadStats.chunkDigests ?? []);
  if (got !== entry.hash.sha256) {
    eng.close();
    throw new EngineError(`${rank.file}: ${mismatch(got, entry.hash.sha256)}`);
  }
  return eng;
}

export function openCudaExecutor(dir: string, o: { verify?: boolean } & CudaLoadOptions = {}): CudaExecutor {
  const eng = openEngine(dir);
  if (eng.ranks.length !== 1)
    throw new LimitError(
      `${dir}: a tp ${eng.ranks.length} engine needs one process per GPU; the TypeScript CUDA executor runs tp 1 engines`,
    );
  return new CudaExecutor(loadVerified(eng.ranks[0], o));
}
