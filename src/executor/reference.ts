// The reference executor: runs an engine's op program on the CPU in fp32 using each op's registered
// reference semantics. All tensor-parallel ranks run in lock step in one process, so all_reduce is a
// real sum over the ranks' partial results.
import type { Checkpoint } from "../checkpoint/checkpoint.ts";
import { toFloat32 } from "../checkpoint/dtype.ts";
import { type BuildConfig, FORMAT_VERSION } from "../engine/format.ts";
import { buildHeader } from "../engine/header.ts";
import { type Engine, type EngineRank, openEngine, streamRankWeights } from "../engine/reader.ts";
import type { Graph } from "../ir/types.ts";
import { getOp, HostTensor, type KvStore, type RefContext, type StepLayout } from "../ops/index.ts";
import { roundToDtype } from "../ops/round.ts";
import { roundE4m3 } from "../quant/fp8.ts";
import { decodeStored, isQuantDtype, roundStored } from "../quant/weights.ts";
import { materializeWeight } from "../weights/materialize.ts";
import { randomFill } from "../weights/random.ts";
import { type Executor, LimitError, type SeqRequest } from "./types.ts";

const F32_BYTES_DTYPE = { f32: "F32", f16: "F16", bf16: "BF16" } as const;
/** KV cache dtypes (engine header) that the reference rounds the cache to: our value dtype names. */
const KV_ROUND = { fp16: "f16", bf16: "bf16" } as const;

/**
 * fp16 / bf16 KV cache: the rows attention stores are rounded to that dtype before any token attends to them, as
 * the GPU's cache holds them (RefContext.kvRound). Without it a cache dtype other than the activations' (--dtype fp32
 * --kv-cache-dtype bf16) was recorded and never applied, and a fused attention's post-RoPE K stayed fp32 in an fp16
 * engine's cache. (Rounded after the step instead, a prompt computed in one step saw its own K/V unrounded and one
 * recomputed after a pause saw the earlier chunks' rounded: other logits on resume.) Off with roundActivations.
 */
function kvRoundOf(dtype: string, roundActs: boolean): ((row: Float32Array) => void) | undefined {
  const d = KV_ROUND[dtype as keyof typeof KV_ROUND];
  return roundActs && d ? (row) => roundToDtype(row, d) : undefined;
}

class DenseKv implements KvStore {
  private seqs = new Map<number, { k: Float32Array[]; v: Float32Array[] }[]>();
  get(seqId: number, layer: number) {
    let layers = this.seqs.get(seqId);
    if (!layers) this.seqs.set(seqId, (layers = []));
    layers[layer] ??= { k: [], v: [] };
    return layers[layer];
  }
  release(seqId: number) {
    this.seqs.delete(seqId);
  }
}

interface RankState {
  rank: EngineRank;
  weights: Map<number, HostTensor>;
  kv: DenseKv;
  /** Storage dtype of each value, for rounding op outputs. */
  dtypes: Map<number, string>;
  /** An fp16 / bf16 KV cache's rounding of the rows attention stores (RefContext.kvRound); undefined otherwise. */
  kvRound?: (row: Float32Array) => void;
}

export interface ReferenceOptions {
  /** Check each rank file's content hash while its weights are read (default true). */
  verify?: boolean;
  /** Progress of reading the rank files (bytes of the current rank). */
  onLoadBytes?: (done: number, total: number) => void;
  /** Round each op's output to the engine's activation dtype (default true). */
  roundActivations?: boolean;
  /** Runtime limits (default: the build's). The CPU executor has no fixed buffers, so any size works. */
  limits?: { max_batch_size?: number; max_num_tokens?: number; max_seq_len?: number };
}

export class ReferenceExecutor implements Executor {
  readonly vocabSize: number;
  private ranks: RankState[];
  private seqLens = new Map<number, number>();
  private roundActs: boolean;
  readonly limits: { max_batch_size: number; max_num_tokens: number; max_seq_len: number };

  constructor(
    readonly engine: Engine,
    opts: ReferenceOptions = {},
    /** Weights per rank already in memory (fromGraphs); read from the engine files otherwise. */
    weights?: Map<number, HostTensor>[],
  ) {
    this.vocabSize = engine.config.facts.vocabSize;
    this.roundActs = opts.roundActivations ?? true;
    const built = engine.ranks[0].header.limits;
    this.limits = {
      max_batch_size: opts.limits?.max_batch_size || built.max_batch_size,
      max_num_tokens: opts.limits?.max_num_tokens || built.max_num_tokens,
      max_seq_len: opts.limits?.max_seq_len || built.max_seq_len,
    };
    this.ranks = engine.ranks.map((rank, i) => ({
      rank,
      weights: weights?.[i] ?? loadWeights(rank, opts),
      kv: new DenseKv(),
      dtypes: new Map(rank.header.values.map((v) => [v.id, v.dtype])),
      kvRound: kvRoundOf(rank.header.kv_cache.dtype, this.roundActs),
    }));
  }

  static load(dir: string, opts: ReferenceOptions = {}): ReferenceExecutor {
    return new ReferenceExecutor(openEngine(dir), opts);
  }

  /**
   * Runs compiler graphs (one per rank) without writing an engine: the op program is the header the
   * engine writer would write, and each weight is materialised from the checkpoint (or its seed) and
   * stored in its dtype exactly as the writer would store it. For tests of passes.
   */
  static fromGraphs(
    graphs: Graph[],
    build: BuildConfig,
    checkpoint: Checkpoint | null,
    opts: ReferenceOptions = {},
  ): ReferenceExecutor {
    const ranks: EngineRank[] = graphs.map((graph, rank) => ({
      file: `<in-memory rank ${rank}>`,
      header: buildHeader({ rank, graph }, build),
      dataOffset: 0,
    }));
    const g0 = graphs[0];
    const logits = g0.values.get(g0.outputs.logits)!;
    const m = g0.meta;
    const engine: Engine = {
      dir: "<in-memory>",
      config: {
        format_version: FORMAT_VERSION,
        model: {},
        facts: {
          vocabSize: Number(logits.shape[logits.shape.length - 1]),
          numLayers: m.numLayers,
          numHeads: 0,
          numKvHeads: m.numKvHeads,
          headDim: m.headDim,
          hiddenSize: 0,
          maxPositionEmbeddings: build.max_seq_len,
          eosTokenIds: [],
        },
        build,
        ranks: [],
      },
      ranks,
    };
    const weights = graphs.map((g, i) => {
      const stored = ranks[i].header.weights.filter((w) => !w.random && w.nbytes > 0);
      return decodeWeights(
        ranks[i],
        new Map(stored.map((w) => [w.value, materializeWeight(g.values.get(w.value)!, checkpoint)])),
      );
    });
    return new ReferenceExecutor(engine, opts, weights);
  }

  release(seqId: number): void {
    this.seqLens.delete(seqId);
    for (const r of this.ranks) r.kv.release(seqId);
  }

  close(): void {
    this.ranks = [];
  }

  step(seqs: SeqRequest[]): Map<number, Float32Array[]> {
    const { max_batch_size, max_num_tokens, max_seq_len } = this.limits;
    const total = seqs.reduce((a, s) => a + s.tokens.length, 0);
    if (seqs.length > max_batch_size)
      throw new LimitError(`batch of ${seqs.length} sequences exceeds max_batch_size ${max_batch_size}`);
    if (total > max_num_tokens)
      throw new LimitError(`step of ${total} tokens exceeds max_num_tokens ${max_num_tokens}`);
    const ids = new Int32Array(total);
    const positions = new Int32Array(total);
    const logitRows: number[] = [];
    const layout: StepLayout = { seqs: [], positions };
    let t = 0;
    const seen = new Set<number>();
    for (const s of seqs) {
      // As the CUDA runtime refuses them: an empty sequence took another's logits row ("last"), and one given
      // twice wrote both parts at the same positions and counted them twice.
      if (s.tokens.length === 0) throw new LimitError(`sequence ${s.seqId}: needs at least one token`);
      if (seen.has(s.seqId)) throw new LimitError(`sequence ${s.seqId} appears twice in one step`);
      seen.add(s.seqId);
      const past = this.seqLens.get(s.seqId) ?? 0;
      if (past + s.tokens.length > max_seq_len)
        throw new LimitError(
          `sequence ${s.seqId} would reach ${past + s.tokens.length} tokens, over max_seq_len ${max_seq_len}`,
        );
      layout.seqs.push({ seqId: s.seqId, start: t, count: s.tokens.length });
      s.tokens.forEach((tok, i) => {
        if (tok < 0 || tok >= this.vocabSize)
          throw new LimitError(`token id ${tok} outside the vocabulary (0..${this.vocabSize - 1})`);
        ids[t + i] = tok;
        positions[t + i] = past + i;
        if (s.logits === "all" || (s.logits === "last" && i === s.tokens.length - 1)) logitRows.push(t + i);
      });
      t += s.tokens.length;
    }
    const logits = this.run(ids, positions, Int32Array.from(logitRows), layout);
    for (const s of seqs) this.seqLens.set(s.seqId, (this.seqLens.get(s.seqId) ?? 0) + s.tokens.length);
    const V = logits.cols;
    const out = new Map<number, Float32Array[]>();
    let row = 0;
    for (const s of seqs) {
      const n = s.logits === "all" ? s.tokens.length : s.logits === "last" ? 1 : 0;
      const rows: Float32Array[] = [];
      for (let i = 0; i < n; i++, row++) rows.push(logits.f32.slice(row * V, (row + 1) * V));
      out.set(s.seqId, rows);
    }
    return out;
  }

  /** Runs the program of every rank node by node; returns the logits (identical on every rank). */
  private run(ids: Int32Array, positions: Int32Array, logitRows: Int32Array, layout: StepLayout): HostTensor {
    const envs = this.ranks.map((r) => {
      const env = new Map<number, HostTensor>(r.weights);
      const h = r.rank.header;
      env.set(h.inputs.input_ids, new HostTensor([ids.length], ids));
      env.set(h.inputs.positions, new HostTensor([positions.length], positions));
      env.set(h.inputs.logits_indices, new HostTensor([logitRows.length], logitRows));
      return env;
    });
    const nodes0 = this.ranks[0].rank.header.nodes;
    for (let i = 0; i < nodes0.length; i++) {
      this.ranks.forEach((r, ri) => {
        const node = r.rank.header.nodes[i];
        const env = envs[ri];
        const ctx: RefContext = {
          step: layout,
          kv: r.kv,
          nodeIndex: i,
          kvRound: r.kvRound,
          allReduce: (x) => {
            const out = new Float32Array(x.f32.length);
            envs.forEach((e, j) => {
              const part = e.get(this.ranks[j].rank.header.nodes[i].inputs[0]!)!.f32;
              for (let k = 0; k < out.length; k++) out[k] += part[k];
            });
            return new HostTensor(x.shape, out);
          },
          allGather: (x) => {
            const parts = envs.map((e, j) => e.get(this.ranks[j].rank.header.nodes[i].inputs[0]!)!);
            const w = x.cols;
            const rows = x.rows;
            const out = new Float32Array(rows * w * parts.length);
            parts.forEach((p, j) => {
              for (let r = 0; r < rows; r++)
                out.set(p.f32.subarray(r * w, (r + 1) * w), (r * parts.length + j) * w);
            });
            return new HostTensor([...x.shape.slice(0, -1), w * parts.length], out);
          },
        };
        const inputs = node.inputs.map((id) => {
          if (id === null) return null;
          const v = env.get(id);
          if (!v) throw new Error(`node ${i} (${node.op}): input value ${id} not computed`);
          return v;
        });
        const outs = getOp(node.op).ref(inputs, node.attrs as Record<string, never>, ctx);
        node.outputs.forEach((o, k) => {
          if (this.roundActs && outs[k].data instanceof Float32Array)
            roundToDtype(outs[k].f32, r.dtypes.get(o) ?? "f32");
          env.set(o, outs[k]);
        });
        if (node.attrs.kv_cache_dtype === "fp8") storeKvFp8(r.kv, layout, node.attrs);
      });
    }
    const h0 = this.ranks[0].rank.header;
    return envs[0].get(h0.outputs.logits)!;
  }
}

type WeightEntry = EngineRank["header"]["weights"][number];

/** FP8 KV cache: the K/V rows this step wrote are stored as E4M3 with the layer's per-tensor scales. */
function storeKvFp8(kv: DenseKv, layout: StepLayout, attrs: Record<string, unknown>): void {
  const layer = attrs.layer as number;
  const scales = [attrs.k_scale as number, attrs.v_scale as number];
  for (const s of layout.seqs) {
    const cache = kv.get(s.seqId, layer);
    for (let t = s.start; t < s.start + s.count; t++) {
      const pos = layout.positions[t];
      [cache.k[pos], cache.v[pos]].forEach((row, i) => {
        for (let d = 0; d < row.length; d++)
          row[d] = Math.fround(roundE4m3(Math.fround(row[d] / scales[i])) * scales[i]);
      });
    }
  }
}

/** A weight as an fp32 host tensor: stored bytes decoded, or a random one drawn from its seed. */
function decodeWeight(
  v: EngineRank["header"]["values"][number],
  w: WeightEntry,
  bytes: Uint8Array,
): HostTensor {
  const shape = v.shape.map(Number);
  const n = shape.reduce((a, b) => a * b, 1);
  let data: Float32Array;
  if (w.random) {
    data = randomFill(n, w.random.seed, w.random.mean, w.random.scale);
    roundToDtype(data, v.dtype);
    roundStored(data, v.dtype);
  } else if (isQuantDtype(v.dtype)) data = decodeStored(v.dtype, bytes);
  else {
    const st = F32_BYTES_DTYPE[v.dtype as keyof typeof F32_BYTES_DTYPE];
    if (!st) throw new Error(`reference executor cannot read weights of dtype ${v.dtype} (${v.name})`);
    data = toFloat32(st, bytes);
  }
  return new HostTensor(shape, data);
}

/** A rank's weights: stored ones from `bytes` (value id → bytes), random ones from their seeds. */
function decodeWeights(rank: EngineRank, bytes: Map<number, Uint8Array>): Map<number, HostTensor> {
  const values = new Map(rank.header.values.map((v) => [v.id, v]));
  const out = new Map<number, HostTensor>();
  for (const w of rank.header.weights)
    out.set(w.value, decodeWeight(values.get(w.value)!, w, bytes.get(w.value) ?? new Uint8Array(0)));
  return out;
}

/**
 * Reads a rank file in one pass, decoding each weight as its bytes arrive, with the content hash checked
 * in the same pass (unless verify is false); nothing is returned if it does not match.
 */
function loadWeights(rank: EngineRank, o: ReferenceOptions): Map<number, HostTensor> {
  const values = new Map(rank.header.values.map((v) => [v.id, v]));
  const out = new Map<number, HostTensor>();
  streamRankWeights(rank, (w, b) => out.set(w.value, decodeWeight(values.get(w.value)!, w, b)), {
    verify: o.verify,
    onBytes: o.onLoadBytes,
  });
  for (const w of rank.header.weights)
    if (!out.has(w.value)) out.set(w.value, decodeWeight(values.get(w.value)!, w, new Uint8Array(0)));
  return out;
}
