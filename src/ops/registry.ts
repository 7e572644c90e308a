// The op registry: every op is declared once with its inputs, shape/dtype inference and reference
// semantics. Passes, the reference executor, the engine writer, ONNX export and the native runtime's
// op table all key off these names.
import type { Attrs, DType, Shape } from "../ir/types.ts";
import type { HostTensor } from "./tensor.ts";

export interface ValueType {
  dtype: DType;
  shape: Shape;
}

/** What the reference executor hands an op besides its inputs (KV cache and step layout for attention). */
export interface RefContext {
  step: StepLayout;
  kv: KvStore;
  /** Tensor-parallel: sums a value over all ranks (the executor runs ranks in lock step). */
  allReduce(x: HostTensor, opId: number): HostTensor;
  /** Tensor-parallel: concatenates a value over all ranks along its last dim, in rank order. */
  allGather(x: HostTensor, opId: number): HostTensor;
  /** Stable id of the node being run (for collective rendezvous). */
  nodeIndex: number;
  /**
   * An fp16 / bf16 KV cache's rounding of a K or V row as attention stores it, before any token attends to it: the
   * GPU's 16-bit cache rounds a step's own rows too (decode_fast_kernel attends to the packed k it stores), so a
   * prompt computed in one step or in chunks (a paused request's recompute) sees the same values. Absent: rows are
   * kept as computed (fp32 caches; FP8 is applied after the step, the GPU's FP8 path attending unrounded).
   */
  kvRound?: (row: Float32Array) => void;
}

export interface StepSeq {
  seqId: number;
  /** First packed token of this sequence in the step. */
  start: number;
  /** New tokens of this sequence in the step. */
  count: number;
}
export interface StepLayout {
  seqs: StepSeq[];
  positions: Int32Array;
}

/** Per-sequence, per-layer K/V rows in fp32 (reference executor only). */
export interface KvStore {
  get(seqId: number, layer: number): { k: Float32Array[]; v: Float32Array[] };
}

export interface OpDef {
  name: string;
  /** Input names; a trailing "?" marks an optional input. */
  inputs: string[];
  /** Number of outputs (fixed), or a function of the attrs (split). */
  numOutputs: number | ((attrs: Attrs) => number);
  /** Short description for --help and reports. */
  doc: string;
  infer(inputs: (ValueType | null)[], attrs: Attrs): ValueType[];
  /** fp32 reference semantics on the CPU. */
  ref(inputs: (HostTensor | null)[], attrs: Attrs, ctx: RefContext): HostTensor[];
  /** Ops that touch state outside their outputs (KV cache writes, collectives) are never removed or merged. */
  sideEffects?: boolean;
  /**
   * How the fusion report counts the op: "fused" ops are made by fusion passes (drawn highlighted),
   * "view" ops launch no kernel; by default an op is one plain kernel launch.
   */
  report?: "fused" | "view";
  /**
   * The CUDA kernels behind one node when they are more than one plain launch, for the fusion report: launches
   * in a decode step, and the bytes per token they write and read back between them (scratch that is not a graph
   * value).
   */
  kernels?: (
    inputs: (ValueType | null)[],
    attrs: Attrs,
  ) => { launches: number; scratchBytesPerToken: number };
}

const registry = new Map<string, OpDef>();

export function defineOp(def: OpDef): OpDef {
  if (registry.has(def.name)) throw new Error(`op "${def.name}" is declared twice`);
  registry.set(def.name, def);
  return def;
}

export function getOp(name: string): OpDef {
  const d = registry.get(name);
  if (!d) throw new Error(`unknown op "${name}" (known: ${[...registry.keys()].sort().join(", ")})`);
  return d;
}

export function listOps(): OpDef[] {
  return [...registry.values()];
}

export function outputCount(def: OpDef, attrs: Attrs): number {
  return typeof def.numOutputs === "number" ? def.numOutputs : def.numOutputs(attrs);
}

// Attribute accessors that fail loudly: an op misconfigured by a pass should not compute garbage.
export function attrNum(attrs: Attrs, k: string, dflt?: number): number {
  const v = attrs[k];
  if (typeof v === "number") return v;
  if (v === undefined && dflt !== undefined) return dflt;
  throw new Error(`attribute "${k}" must be a number, got ${JSON.stringify(v)}`);
}
export function attrStr(attrs: Attrs, k: string, dflt?: string): string {
  const v = attrs[k];
  if (typeof v === "string") return v;
  if (v === undefined && dflt !== undefined) return dflt;
  throw new Error(`attribute "${k}" must be a string, got ${JSON.stringify(v)}`);
}
