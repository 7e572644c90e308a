// Core IR types: values with dtypes and symbolic, bounded shapes; nodes naming an op from the registry.
import type { WeightRecipe } from "../weights/recipe.ts";

export type DType = "f32" | "f16" | "bf16" | "i32" | "i8" | "u8" | "fp8e4m3";

/** A dimension is a number or a named symbol with an upper bound (e.g. num_tokens ≤ max_num_tokens). */
export type Dim = number | { sym: string; max: number };
export type Shape = Dim[];

export type ValueKind = "input" | "weight" | "activation";

export interface Value {
  id: number;
  name: string;
  dtype: DType;
  shape: Shape;
  kind: ValueKind;
  /** Weights only: where the bytes come from (checkpoint tensors + transforms, or a seed). */
  recipe?: WeightRecipe;
  /** nn-style hints carried from the model file (e.g. "column", "row", "vocab") for sharding passes. */
  hints?: Record<string, string | number>;
}

export type AttrValue = number | string | boolean | null | number[] | string[] | { [k: string]: AttrValue };
export type Attrs = Record<string, AttrValue>;

export interface Node {
  op: string;
  /** Value ids; null for an absent optional input. */
  inputs: (number | null)[];
  outputs: number[];
  attrs: Attrs;
  /** Where the node came from in the model (e.g. "model.layers.3.mlp"), for reports. */
  scope?: string;
}

export interface Graph {
  values: Map<number, Value>;
  nodes: Node[];
  /** Named graph inputs (input_ids, positions, logits_indices). */
  inputs: Record<string, number>;
  outputs: Record<string, number>;
  /** Model-level facts the runtime needs (KV cache geometry). */
  meta: GraphMeta;
  nextId: number;
}

/** Model-level facts the runtime needs, and what passes found out for the engine and the report. */
export interface GraphMeta {
  numLayers: number;
  /** KV heads per rank (the sharding pass divides them). */
  numKvHeads: number;
  headDim: number;
  /** Tensor-parallel ranks the graph was sharded for (set by shardForTp). */
  tp?: number;
  /** The activation arena plan (set by memory-plan). */
  arena?: ArenaPlan;
  /** What weight quantisation did (set by quantize-weights). */
  quant?: QuantReport;
}

/** Byte offset of every activation (node output id) in one arena sized at the build limits. */
export interface ArenaPlan {
  bytes: number;
  offsets: Record<string, number>;
}

/** Which layers were quantised and which were kept in higher precision (and why). */
export interface QuantReport {
  scheme: string;
  kvCacheDtype: string;
  quantized: string[];
  kept: { name: string; reason: string }[];
}

export const DTYPE_BYTES: Record<DType, number> = {
  f32: 4,
  f16: 2,
  bf16: 2,
  i32: 4,
  i8: 1,
  u8: 1,
  fp8e4m3: 1,
};

export function isSym(d: Dim): d is { sym: string; max: number } {
  return typeof d !== "number";
}

/** Elements at the given symbol bindings (defaults to each symbol's max). */
export function numel(shape: Shape, bind: Record<string, number> = {}): number {
  let n = 1;
  for (const d of shape) n *= typeof d === "number" ? d : (bind[d.sym] ?? d.max);
  return n;
}

export function dimValue(d: Dim, bind: Record<string, number> = {}): number {
  return typeof d === "number" ? d : (bind[d.sym] ?? d.max);
}

export function sameDim(a: Dim, b: Dim): boolean {
  if (typeof a === "number" || typeof b === "number") return a === b;
  return a.sym === b.sym;
}

export function shapeStr(s: Shape): string {
  return `[${s.map((d) => (typeof d === "number" ? String(d) : d.sym)).join(",")}]`;
}
