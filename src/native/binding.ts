// The native CUDA runtime (native/, libtsllm.so) through its Node-API addon native/build/tsllm_node.node.
// One call per step (step) or per whole generation (generate), synchronous; or pipelined steps
// (stepLaunch returns at once, stepWait resolves from a worker thread).
import * as fs from "node:fs";
import { createRequire } from "node:module";
import * as path from "node:path";
import { fileURLToPath } from "node:url";

export const NATIVE_NOT_BUILT =
  "native runtime not built: run npm run build:native on a machine with CUDA 13 (nvcc, cuBLASLt)";

export interface CudaLoadOptions {
  /** CUDA device ordinal (default 0). */
  device?: number;
  /** Runtime limits (0/undefined = the engine's); larger than the build's re-plans the activation arena. */
  maxBatchSize?: number;
  maxSeqLen?: number;
  maxNumTokens?: number;
  /** Most logits rows one step may ask for (default max_num_tokens); sizes the logits buffers. */
  maxLogitsRows?: number;
  /** KV block size in tokens (default: the engine's kv_cache.tokens_per_block). */
  tokensPerBlock?: number;
  /** Share of free GPU memory (after weights, arena, workspaces) for the KV cache (default 0.9). */
  kvCacheFreeGpuMemFraction?: number;
  /** Caps the KV pool (tests). */
  kvCacheMaxBlocks?: number;
  /** CUDA graphs for decode steps (default true). */
  cudaGraphs?: boolean;
  /** Time cuBLASLt algorithms and gemv variants per shape (default true). */
  gemmTune?: boolean;
  /** Small-M gemv kernel for linears: the tuner decides (default), always where eligible, or never. */
  gemv?: "auto" | "always" | "never";
  /** Only this gemv variant (0..9). */
  gemvVariant?: number;
  /** Decode (M ≤ 4) folds rms_norm / gated_act into the gemv where faster (default true). */
  gemvPrologue?: boolean;
  /**
   * Decode attention: 3 (default; one launch where it applies, else 4 at GQA ratios >= decodeMmaMinGqa, else 2),
   * 2 (CUDA-core kernel) or 4 (tensor-core GQA kernel).
   */
  decodeVariant?: 2 | 3 | 4;
  /** Smallest query-heads-per-KV-head ratio at which decode variant 3 falls back to 4 rather than 2 (default 4). */
  decodeMmaMinGqa?: number;
  /** Programmatic dependent launch on sm_90+ (default true). */
  pdl?: boolean;
  /**
   * Context (prefill) attention over an FP8 KV cache with Q and the softmax weights in E4M3 on FP8 tensor cores,
   * where it can run (head_dim a multiple of 16 up to 128, an sm 89+ GPU; elsewhere the fp16/bf16 kernel). "auto"
   * (default): off for now (slower than the fp16/bf16 kernel on the H200: forward.cc); "on": on every FP8 KV cache, and with strictKernels a step
   * where it cannot run is an error; "off": the fp16/bf16 kernel (the step's own K/V unrounded, as the CPU reference).
   */
  fp8ContextFmha?: "auto" | "on" | "off";
  /**
   * A kernel forced by these options (gemv "always", fp8ContextFmha "on") that cannot run is an error naming the
   * node, not a fallback.
   */
  strictKernels?: boolean;
  /** Profiling to stderr: per-node events (graphs off) or a per-op graph replay breakdown. */
  profile?: "off" | "nodes" | "graph";
}

/** Which kernels one node of the program launched (tsllm_get_node_stats), counted per step it ran. */
export interface NodeStats {
  op: string;
  /** A linear's weight name, else its first output's name. */
  name: string;
  /** Prologue fusion plan: the linear this node folds into at decode (when the tuner finds it faster), or -1. */
  foldedInto: number;
  /** The op's own kernel(s) (every op but linear). */
  own: number;
  /** Skipped: folded into the gemv prologue of node foldedInto. */
  folded: number;
  cublaslt: number;
  gemv: number;
  gemvRms: number;
  gemvGated: number;
  /** Attention: context steps that ran the FP8 context FMHA (fp8ContextFmha). */
  fp8Fmha: number;
  /** Norm / gated_act: steps it wrote its output as FP8 rows for the next node's FP8 GEMM (activation quantisation
   * fused in, TSLLM_FP8_ACT_FUSION=0 turns it off). */
  fp8Act: number;
}

export interface Sampling {
  /** <= 0: greedy (default). */
  temperature?: number;
  /** 0 = all; 1 = greedy. */
  topK?: number;
  /** 1 = all (default). */
  topP?: number;
  seed?: number | bigint;
}

export interface StepSeq extends Sampling {
  id: number | bigint;
  tokens: Int32Array | readonly number[];
  /** Position of tokens[0]: the sequence's cached length, or less to rewind it. */
  startPos: number;
  /** Logits for every token (true) or only the last (default). */
  allLogits?: boolean;
}

export interface StepResult {
  /** Logits rows, in sequence order (all tokens or the last one per sequence). */
  rows: number;
  vocab: number;
  /** fp32 [rows, vocab] when asked for. */
  logits?: Float32Array;
  /** One sampled token per sequence (from its last row) when asked for. */
  tokens?: Int32Array;
}

export interface GenerateResult {
  /** Per prompt, maxNewTokens tokens (no stop tokens: truncate at EOS yourself). */
  tokens: Int32Array[];
  /** GPU timeline: prefill + first sampling. */
  ttftMs: number;
  decodeMs: number;
  totalMs: number;
  wallMs: number;
  /** Each decode step's time (maxNewTokens - 1 entries). */
  stepMs: Float64Array;
}

export interface CudaInfo {
  gpuName: string;
  gpuSm: number;
  engineSm: number;
  tp: number;
  rank: number;
  vocabSize: number;
  maxBatchSize: number;
  maxSeqLen: number;
  maxNumTokens: number;
  tokensPerBlock: number;
  numLayers: number;
  numNodes: number;
  numCudaGraphs: number;
  kvBlocksTotal: number;
  kvBlocksFree: number;
  numSequences: number;
  weightBytes: number;
  arenaBytes: number;
  kvBytes: number;
  workspaceBytes: number;
  dtype: string;
  kvDtype: string;
  hasNccl: boolean;
}

type Handle = { readonly __tsllmEngine: unique symbol };

interface Addon {
  abiVersion(): number;
  deviceCount(): number;
  load(path: string, opts: CudaLoadOptions): Handle;
  loadHashed(
    path: string,
    opts: CudaLoadOptions,
    chunkBytes: number,
    numChunks: number,
  ): { handle: Handle; digests: Buffer };
  /** Absent from addons built before it. */
  loadStats?(h: Handle): LoadPhases;
  unload(h: Handle): void;
  step(
    h: Handle,
    seqs: (Omit<StepSeq, "tokens"> & { tokens: Int32Array })[],
    want: { logits?: boolean; tokens?: boolean },
  ): StepResult;
  stepLaunch(h: Handle, seqs: (Omit<StepSeq, "tokens"> & { tokens: Int32Array | null })[]): number;
  stepWait(
    h: Handle,
    ticket: number,
    numSeqs: number,
  ): Promise<{ tokens: Int32Array; gpuMs: number; gapMs: number }>;
  release(h: Handle, id: number | bigint): void;
  generate(
    h: Handle,
    tokens: Int32Array,
    lens: Int32Array,
    maxNew: number,
    sampling?: Sampling | Sampling[],
  ): Omit<GenerateResult, "tokens"> & { tokens: Int32Array };
  info(h: Handle): CudaInfo;
  nodeStats(h: Handle): NodeStats[];
  copyBandwidth(bytes: number): number;
}

// The addon's ABI version (native/src/binding abiVersion()): a build of another version is refused at load.
export const ABI_VERSION = 6;

/** Where the addon is looked for: $TSLLM_NATIVE_ADDON, else native/build/tsllm_node.node of this checkout. */
export function addonPath(): string {
  if (process.env.TSLLM_NATIVE_ADDON) return process.env.TSLLM_NATIVE_ADDON;
  return path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../native/build/tsllm_node.node");
}

let addon: Addon | null = null;

/** Loads the addon or throws the "not built" error (or why it failed to load). */
export function loadAddon(): Addon {
  if (addon) return addon;
  const file = addonPath();
  if (!fs.existsSync(file)) throw new Error(NATIVE_NOT_BUILT);
  let a: Addon;
  try {
    a = createRequire(import.meta.url)(file) as Addon;
  } catch (e) {
    throw new Error(`${file}: cannot load the native runtime: ${(e as Error).message.split("\n")[0]}`);
  }
  if (a.abiVersion() !== ABI_VERSION)
    throw new Error(
      `${file}: ABI version ${a.abiVersion()}, this tsllm expects ${ABI_VERSION}; run npm run build:native`,
    );
  addon = a;
  return a;
}

/** Whether the addon is built and loads (does not touch the GPU). */
export function nativeAvailable(): boolean {
  try {
    loadAddon();
    return true;
  } catch {
    return false;
  }
}

/** The CUDA devices this process sees through the addon (0: no driver, no device, or CUDA_VISIBLE_DEVICES=""). */
export function cudaDeviceCount(): number {
  return loadAddon().deviceCount();
}

/**
 * Why --device cuda cannot run here (the addon is not built or does not load, or sees no CUDA device), or
 * undefined when it can. --device auto takes the CPU reference executor in either case.
 */
export function cudaUnavailable(): string | undefined {
  try {
    if (cudaDeviceCount() < 1)
      return "no CUDA device is visible to this process (CUDA_VISIBLE_DEVICES, driver)";
  } catch (e) {
    return (e as Error).message.split("\n")[0];
  }
  return undefined;
}

const i32 = (t: Int32Array | readonly number[]) => (t instanceof Int32Array ? t : Int32Array.from(t));

/** Device-to-device copy bandwidth of GPU 0 in bytes/s, counting bytes read + written (median of 20 copies). */
export function measureCopyBandwidth(bytes = 1 << 30): number {
  return loadAddon().copyBandwidth(bytes);
}

/** Where the native load's time went (tsllm_load_stats; thread seconds are summed over the pass's threads). */
export interface LoadPhases {
  totalS: number;
  cudaInitS: number;
  headerS: number;
  weightsS: number;
  restS: number;
  passS: number;
  readThreadS: number;
  hashThreadS: number;
  waitThreadS: number;
  directBytes: number;
  cachedBytes: number;
  threads: number;
  direct: number;
}

/** How long loading took: the whole call (CUDA setup, weight upload, KV cache), and the file's bytes. */
export interface LoadStats {
  seconds: number;
  fileBytes: number;
  /** The chunk digests of the rank file when it was hashed during the upload (src/engine/hash.ts). */
  chunkDigests?: Buffer[];
  /** The native phases (addons built with tsllm_get_load_stats). */
  phases?: LoadPhases;
}

/**
 * One line for --verbose: where the load's time went and how the weight pass read the file. The pass runs from
 * just after the header, alongside CUDA init and the rest; "waited" is the time the load waited for it after that.
 */
export function describeLoadPhases(p: LoadPhases): string {
  const gib = (b: number) => (b / 2 ** 30).toFixed(2);
  const read = p.directBytes + p.cachedBytes;
  return (
    `load phases: CUDA init ${p.cudaInitS.toFixed(2)} s, header ${p.headerS.toFixed(2)} s, weights waited ${p.weightsS.toFixed(2)} s ` +
    `(pass ${p.passS.toFixed(2)} s, ${(read / 1e9 / Math.max(p.passS, 1e-9)).toFixed(2)} GB/s, ${p.threads} threads, ` +
    `${gib(p.directBytes)} GiB O_DIRECT${p.direct ? "" : " (off or refused)"} + ${gib(p.cachedBytes)} GiB page cache; thread-s read ` +
    `${p.readThreadS.toFixed(2)}, hash ${p.hashThreadS.toFixed(2)}, buffer wait ${p.waitThreadS.toFixed(2)}), ` +
    `rest ${p.restS.toFixed(2)} s, total ${p.totalS.toFixed(2)} s`
  );
}

/** One engine rank on one GPU. */
export class CudaEngine {
  private handle: Handle | null;
  readonly vocabSize: number;

  private constructor(
    private readonly a: Addon,
    handle: Handle,
    readonly file: string,
    readonly loadStats: LoadStats,
  ) {
    this.handle = handle;
    this.vocabSize = a.info(handle).vocabSize;
  }

  /**
   * rankFile: a rank{N}.engine file, or an engine directory of a tp=1 engine (rank0.engine).
   * hashChunkBytes: also hash the file in chunks of that size in the upload pass (loadStats.chunkDigests).
   */
  static load(rankFile: string, o: CudaLoadOptions & { hashChunkBytes?: number } = {}): CudaEngine {
    const a = loadAddon();
    let file = rankFile;
    if (fs.existsSync(file) && fs.statSync(file).isDirectory()) file = path.join(file, "rank0.engine");
    const fileBytes = fs.statSync(file).size;
    const t0 = performance.now();
    if (o.hashChunkBytes) {
      if (typeof a.loadHashed !== "function")
        throw new Error(
          `${addonPath()}: built before the verified load (no loadHashed); run npm run build:native`,
        );
      const n = Math.ceil(fileBytes / o.hashChunkBytes);
      const r = a.loadHashed(file, o, o.hashChunkBytes, n);
      const chunkDigests = Array.from({ length: n }, (_, i) => r.digests.subarray(32 * i, 32 * (i + 1)));
      const seconds = (performance.now() - t0) / 1000;
      return new CudaEngine(a, r.handle, file, {
        seconds,
        fileBytes,
        chunkDigests,
        phases: a.loadStats?.(r.handle),
      });
    }
    const h = a.load(file, o);
    return new CudaEngine(a, h, file, {
      seconds: (performance.now() - t0) / 1000,
      fileBytes,
      phases: a.loadStats?.(h),
    });
  }

  private h(): Handle {
    if (!this.handle) throw new Error(`${this.file}: engine is closed`);
    return this.handle;
  }

  /** One packed step. want.logits (default true) returns fp32 logits; want.tokens samples one per sequence. */
  step(
    seqs: readonly StepSeq[],
    want: { logits?: boolean; tokens?: boolean } = { logits: true },
  ): StepResult {
    return this.a.step(
      this.h(),
      seqs.map((s) => ({ ...s, tokens: i32(s.tokens) })),
      want,
    );
  }

  /**
   * Pipelined steps: stepLaunch enqueues a step and returns a ticket at once (the GPU runs it behind the
   * steps launched before); stepWait(ticket) resolves, from a worker thread, with one sampled token per
   * sequence and the step's GPU time and the GPU idle time before it. A sequence with tokens null takes the
   * token the previously launched step sampled for it, on the device. At most 4 steps pending.
   */
  stepLaunch(
    seqs: readonly (Omit<StepSeq, "tokens"> & { tokens: Int32Array | readonly number[] | null })[],
  ): number {
    if (typeof this.a.stepLaunch !== "function")
      throw new Error(`${addonPath()}: this addon has no stepLaunch; run npm run build:native`);
    return this.a.stepLaunch(
      this.h(),
      seqs.map((s) => ({ ...s, tokens: s.tokens === null ? null : i32(s.tokens) })),
    );
  }

  stepWait(ticket: number, numSeqs: number): Promise<{ tokens: Int32Array; gpuMs: number; gapMs: number }> {
    return this.a.stepWait(this.h(), ticket, numSeqs);
  }

  /** Prefill + decode entirely in C++ (benchmarks). sampling: one for all prompts or one per prompt. */
  generate(
    prompts: readonly (Int32Array | readonly number[])[],
    maxNewTokens: number,
    sampling?: Sampling | Sampling[],
  ): GenerateResult {
    const lens = Int32Array.from(prompts, (p) => p.length);
    const flat = new Int32Array(lens.reduce((a, b) => a + b, 0));
    let off = 0;
    for (const p of prompts) {
      flat.set(i32(p), off);
      off += p.length;
    }
    const r = this.a.generate(this.h(), flat, lens, maxNewTokens, sampling);
    const tokens = prompts.map((_, i) => r.tokens.slice(i * maxNewTokens, (i + 1) * maxNewTokens));
    return { ...r, tokens };
  }

  release(id: number | bigint): void {
    this.a.release(this.h(), id);
  }

  info(): CudaInfo {
    return this.a.info(this.h());
  }

  /** Per-node kernel counters since load (which kernel each node ran, fused nodes included). */
  nodeStats(): NodeStats[] {
    return this.a.nodeStats(this.h());
  }

  close(): void {
    if (this.handle) this.a.unload(this.handle);
    this.handle = null;
  }
}
