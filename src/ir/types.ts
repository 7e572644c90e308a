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

export interface GraphMeta {
  numLayers: number;
  numKvHeads: number;
  headDim: number;
  /** Free-form model info carried into the engine. */
  [k: string]: unknown;
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
