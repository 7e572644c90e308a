// Quantisation while streaming weights: the `quantize` recipe transform, and materialising a quantised
// weight and its scales. Both are separate weights whose recipes share the same sources and slices;
// the quantisation pass gives them adjacent value ids, so the writer materialises one right after the
// other and the second reuses the first's fp32 tensor (one weight in memory, sources read once).
import type { Checkpoint } from "../checkpoint/checkpoint.ts";
import { fromFloat32 } from "../checkpoint/dtype.ts";
import type { Value } from "../ir/types.ts";
import type { Transform, WeightRecipe } from "../weights/recipe.ts";
import { quantizeFp8Rows, type SourceRows } from "./fp8-rows.ts";
import {
  computeScales,
  isQuantDtype,
  type QuantSpec,
  quantizeToBytes,
  quantizeValues,
  scalesShape,
  storedShape,
} from "./weights.ts";

type QuantizeTransform = Extract<Transform, { op: "quantize" }>;
interface Raw {
  shape: number[];
  data: Float32Array;
}

export function specOf(tr: QuantizeTransform): QuantSpec {
  return { scheme: tr.scheme, groupSize: tr.group_size, scaleDtype: tr.scale_dtype };
}

export function applyQuantize(t: Raw, tr: QuantizeTransform): Raw {
  if (t.shape.length !== 2) throw new Error(`quantize: expected a [N, K] weight, got [${t.shape}]`);
  const [n, k] = t.shape;
  const spec = specOf(tr);
  if (tr.output === "scales")
    return { shape: scalesShape(spec, n, k), data: computeScales(t.data, n, k, spec) };
  return { shape: storedShape(spec, n, k), data: quantizeValues(t.data, n, k, spec) };
}

/** The fp32 weight before quantisation, kept for the one companion (values ↔ scales) that follows. */
let memo: { key: string; raw: Raw } | null = null;

/** FP8 values [N, K] and scales [N] of one source weight, and how many of the two are still to be asked for. */
export interface Fp8Made {
  values: Uint8Array;
  scales: Float32Array;
  n: number;
  k: number;
  left: number;
}

/**
 * FP8 values and scales made together (quantizeFp8Rows), kept until both were asked for. Several at
 * once: the writer interleaves the ranks of a tp build, so a companion may come a few weights later.
 */
const fp8Memo = new Map<string, Fp8Made>();

/** The recipe of an FP8 values or scales weight without its quantize step, and the key its companion shares. */
export function fp8Source(v: Value): { pre: WeightRecipe; key: string; output: "values" | "scales" } | null {
  const r = v.recipe;
  if (r?.kind !== "checkpoint") return null;
  const last = r.transforms[r.transforms.length - 1];
  if (last?.op !== "quantize" || last.scheme !== "fp8") return null;
  const pre = { ...r, transforms: r.transforms.slice(0, -1) };
  return {
    pre,
    key: JSON.stringify([pre.parts, pre.transforms]),
    output: last.output === "scales" ? "scales" : "values",
  };
}

/** The bytes `v` asks for from its made pair (values, or the scales as bytes), after checking its shape. */
export function fp8Output(v: Value, q: Fp8Made, output: "values" | "scales"): Uint8Array {
  const want = output === "values" ? [q.n, q.k] : [q.n];
  if (want.join(",") !== v.shape.join(","))
    throw new Error(`weight ${v.name}: recipe produced [${want}] but the graph expects [${v.shape}]`);
  if (output === "values") return q.values;
  return new Uint8Array(q.scales.buffer, q.scales.byteOffset, q.scales.byteLength);
}

export function materializeQuantized(
  v: Value,
  ckpt: Checkpoint,
  toF32: (v: Value, ckpt: Checkpoint) => Raw,
  rowsOf?: (v: Value, ckpt: Checkpoint) => SourceRows[] | null,
): Uint8Array {
  const r = v.recipe;
  if (r?.kind !== "checkpoint") throw new Error(`${v.name}: only checkpoint weights are quantised`);
  const last = r.transforms[r.transforms.length - 1];
  if (last?.op !== "quantize") throw new Error(`${v.name}: quantize must be the last transform`);
  const pre = { ...r, transforms: r.transforms.slice(0, -1) };
  const key = JSON.stringify([pre.parts, pre.transforms]);
  const f = fp8Source(v);
  if (f && rowsOf) {
    let q = fp8Memo.get(f.key);
    if (!q) {
      const parts = rowsOf({ ...v, recipe: f.pre }, ckpt);
      if (parts) {
        const n = parts.reduce((a, p) => a + p.rows, 0);
        const k = n ? parts[0].data.length / parts[0].rows : 0;
        q = { values: new Uint8Array(n * k), scales: new Float32Array(n), n, k, left: 2 };
        quantizeFp8Rows(parts, k, q.values, q.scales);
        fp8Memo.set(f.key, q);
      }
    }
    if (q) {
      if (--q.left === 0) fp8Memo.delete(f.key);
      return fp8Output(v, q, f.output);
    }
  }
  let raw: Raw;
  if (memo?.key === key) {
    raw = memo.raw;
    memo = null;
  } else {
    raw = toF32({ ...v, recipe: pre }, ckpt);
    memo = { key, raw };
  }
  if (last.output === "values" && isQuantDtype(v.dtype)) {
    const [n, k] = raw.shape;
    const spec = specOf(last);
    const want = storedShape(spec, n, k);
    if (want.join(",") !== v.shape.join(","))
      throw new Error(`weight ${v.name}: recipe produced [${want}] but the graph expects [${v.shape}]`);
    return quantizeToBytes(raw.data, n, k, spec);
  }
  const out = applyQuantize(raw, last);
  const want = v.shape.map(Number);
  if (out.shape.join(",") !== want.join(","))
    throw new Error(`weight ${v.name}: recipe produced [${out.shape}] but the graph expects [${want}]`);
  if (v.dtype !== "f32") throw new Error(`${v.name}: quantisation scales are f32, not ${v.dtype}`);
  return fromFloat32("F32", out.data);
}
