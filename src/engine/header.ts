// Graph → engine header JSON (the op program with weight offsets and the arena plan).
import { DTYPE_BYTES, type Graph, numel, type Value } from "../ir/types.ts";
import { weightSeed } from "../weights/random.ts";
import { arenaOf } from "./arena.ts";
import { alignUp, type BuildConfig, type EngineHeader, FORMAT_VERSION, WEIGHT_ALIGN } from "./format.ts";

export interface RankProgram {
  rank: number;
  graph: Graph;
}

/** Values that the program references, in id order. */
export function liveValues(g: Graph): Value[] {
  const ids = new Set<number>([...Object.values(g.inputs), ...Object.values(g.outputs)]);
  for (const n of g.nodes) {
    for (const i of n.inputs) if (i !== null) ids.add(i);
    for (const o of n.outputs) ids.add(o);
  }
  return [...ids].sort((a, b) => a - b).map((id) => g.values.get(id)!);
}

export function weightBytes(v: Value): number {
  return numel(v.shape) * DTYPE_BYTES[v.dtype];
}

/** Whether a weight is stored as a seed rather than bytes. Constants (rope tables) always carry bytes. */
export function isRandomStored(v: Value, build: BuildConfig): boolean {
  return build.random_weights && v.recipe?.kind === "checkpoint";
}

/** Seed of a random weight on a rank (every executor and exporter derives the same values from it). */
export function rankWeightSeed(build: BuildConfig, rank: number, name: string): number {
  return weightSeed(build.seed + rank * 7919, name);
}

export function buildHeader(p: RankProgram, build: BuildConfig): EngineHeader {
  const g = p.graph;
  const values = liveValues(g);
  const weights: EngineHeader["weights"] = [];
  let off = 0;
  for (const v of values) {
    if (v.kind !== "weight") continue;
    if (isRandomStored(v, build)) {
      const init = v.recipe!.kind === "checkpoint" ? v.recipe!.init : { mean: 0, scale: 0 };
      weights.push({
        value: v.id,
        offset: 0,
        nbytes: 0,
        random: { seed: rankWeightSeed(build, p.rank, v.name), ...init },
      });
      continue;
    }
    const nbytes = weightBytes(v);
    weights.push({ value: v.id, offset: off, nbytes, random: null });
    off = alignUp(off + nbytes, WEIGHT_ALIGN);
  }
  const kvDtype = build.kv_cache_dtype;
  return {
    format_version: FORMAT_VERSION,
    rank: p.rank,
    tp: build.tp,
    sm: build.sm,
    dtype: build.dtype,
    limits: {
      max_batch_size: build.max_batch_size,
      max_seq_len: build.max_seq_len,
      max_num_tokens: build.max_num_tokens,
    },
    kv_cache: {
      num_layers: g.meta.numLayers,
      num_kv_heads: g.meta.numKvHeads,
      head_dim: g.meta.headDim,
      dtype: kvDtype,
      tokens_per_block: build.tokens_per_block,
    },
    values: values.map((v) => ({ id: v.id, name: v.name, dtype: v.dtype, shape: v.shape, kind: v.kind })),
    inputs: g.inputs,
    outputs: g.outputs,
    weights,
    nodes: g.nodes.map((n) => ({
      op: n.op,
      inputs: n.inputs,
      outputs: n.outputs,
      attrs: n.attrs,
      ...(n.scope ? { scope: n.scope } : {}),
    })),
    arena: arenaOf(g),
  };
}
