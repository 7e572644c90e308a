// Opens a batch manager on an engine directory: the native CUDA runtime (--device cuda, or auto when it is
// built and sees a CUDA device) or the CPU reference executor, with runtime limits and the scheduler policy.
import { openEngine } from "../engine/reader.ts";
import { ReferenceExecutor } from "../executor/reference.ts";
import { LimitError } from "../executor/types.ts";
import { cudaModuleFor } from "../native/cuda-module.ts";
import type { StepBackend } from "./backend.ts";
import { InflightBatchManager } from "./batch-manager.ts";
import { CpuStepBackend } from "./cpu-backend.ts";
import type { SchedulerPolicy } from "./types.ts";

export interface OpenBatchOptions {
  device?: "cpu" | "cuda" | "auto";
  policy?: SchedulerPolicy;
  /** Runtime limits (default: the engine's). */
  maxBatchSize?: number;
  maxNumTokens?: number;
  maxSeqLen?: number;
  /** Share of free GPU memory for the KV cache (cuda; default 0.9). */
  kvCacheFreeGpuMemFraction?: number;
  /** Caps the KV pool to this many blocks (tests; on cpu the default is max_batch_size full sequences). */
  kvBlocks?: number;
  cudaGraphs?: boolean;
  /** cuda: the FP8 context FMHA (CudaLoadOptions.fp8ContextFmha). */
  fp8ContextFmha?: "auto" | "on" | "off";
  verify?: boolean;
  /** Progress of reading the rank file (CPU loader). */
  onLoadBytes?: (done: number, total: number) => void;
  /** false: no step overlap (each step planned after the previous one's tokens are back). */
  overlap?: boolean;
}

export async function openBatchManager(dir: string, o: OpenBatchOptions = {}): Promise<InflightBatchManager> {
  const engine = openEngine(dir);
  const facts = engine.config.facts;
  if (o.maxSeqLen !== undefined && o.maxSeqLen > facts.maxPositionEmbeddings)
    throw new LimitError(
      `--max-seq-len ${o.maxSeqLen} exceeds the model's max_position_embeddings ${facts.maxPositionEmbeddings}`,
    );
  for (const [k, v] of Object.entries({
    "--max-batch-size": o.maxBatchSize,
    "--max-num-tokens": o.maxNumTokens,
    "--max-seq-len": o.maxSeqLen,
  }))
    if (v !== undefined && !(Number.isInteger(v) && v > 0))
      throw new LimitError(`${k} must be a positive integer, got ${v}`);
  const device = o.device ?? "auto";
  let backend: StepBackend | null = null;
  if (device !== "cpu") {
    if (await cudaModuleFor(device, () => import("../native/binding.ts"))) {
      if (engine.ranks.length !== 1)
        throw new LimitError(
          `${dir}: a tp ${engine.ranks.length} engine needs one process per GPU; the batch manager runs tp 1 engines`,
        );
      const { CudaStepBackend } = await import("./cuda-backend.ts");
      const { loadVerified } = await import("../native/executor.ts");
      backend = new CudaStepBackend(
        loadVerified(engine.ranks[0], {
          verify: o.verify,
          maxBatchSize: o.maxBatchSize,
          maxNumTokens: o.maxNumTokens,
          maxSeqLen: o.maxSeqLen,
          kvCacheFreeGpuMemFraction: o.kvCacheFreeGpuMemFraction,
          kvCacheMaxBlocks: o.kvBlocks === undefined ? undefined : o.kvBlocks + 1, // + the scratch block
          // One logits row per sequence: the logits activation is max_batch_size x vocab, not max_num_tokens x vocab.
          maxLogitsRows: o.maxBatchSize ?? engine.config.build.max_batch_size,
          cudaGraphs: o.cudaGraphs,
          fp8ContextFmha: o.fp8ContextFmha,
        }),
      );
    }
  }
  backend ??= new CpuStepBackend(
    new ReferenceExecutor(engine, {
      verify: o.verify,
      onLoadBytes: o.onLoadBytes,
      limits: { max_batch_size: o.maxBatchSize, max_num_tokens: o.maxNumTokens, max_seq_len: o.maxSeqLen },
    }),
    { kvBlocks: o.kvBlocks },
  );
  return new InflightBatchManager(backend, {
    policy: o.policy,
    eosTokenIds: facts.eosTokenIds,
    overlap: o.overlap,
  });
}
