// Turns one weight's recipe into bytes in its stored dtype and layout. Called by the engine writer
// once per weight, so peak host memory is about one weight (plus its sources when they are fused).
import type { Checkpoint } from "../checkpoint/checkpoint.ts";
import { fromFloat32, isFloatDtype, toFloat32 } from "../checkpoint/dtype.ts";
import type { DType, Value } from "../ir/types.ts";
import type { SourceRows } from "../quant/fp8-rows.ts";
import { applyQuantize, materializeQuantized } from "../quant/materialize.ts";
import type { Transform, WeightRecipe } from "./recipe.ts";

const ST_DTYPE: Partial<Record<DType, "F32" | "F16" | "BF16">> = { f32: "F32", f16: "F16", bf16: "BF16" };

export function storageDtype(dt: DType): "F32" | "F16" | "BF16" {
  const s = ST_DTYPE[dt];
  if (!s) throw new Error(`weights of dtype ${dt} are produced by quantisation, not read directly`);
  return s;
}

type Elems = Float32Array | Uint16Array;
interface Raw<D extends Elems = Float32Array> {
  shape: number[];
  data: D;
}

function alloc<D extends Elems>(like: D, n: number): D {
  return (like instanceof Float32Array ? new Float32Array(n) : new Uint16Array(n)) as D;
}

/** Reads a weight's sources from the checkpoint, applies its transforms, and encodes it in v.dtype. */
export function materializeWeight(v: Value, ckpt: Checkpoint | null): Uint8Array {
  const r = v.recipe;
  if (!r) throw new Error(`weight ${v.name} has no recipe`);
  if (r.kind === "constant") return fromFloat32(storageDtype(v.dtype), Float32Array.from(r.data));
  if (!ckpt) throw new Error(`weight ${v.name} needs a checkpoint`);
  if (r.transforms.some((t) => t.op === "quantize"))
    return materializeQuantized(v, ckpt, materializeF32, sourceRows);
  const st = storageDtype(v.dtype);
  const direct = materializeDirect(r, ckpt, st);
  const t = direct ?? materializeParts(r, ckpt);
  const want = v.shape.map(Number);
  if (t.shape.join(",") !== want.join(",")) {
    throw new Error(`weight ${v.name}: recipe produced [${t.shape}] but the graph expects [${want}]`);
  }
  if (direct) return new Uint8Array(direct.data.buffer, direct.data.byteOffset, direct.data.byteLength);
  return fromFloat32(st, t.data as Float32Array);
}

/**
 * The weight's bytes as consecutive pieces: for half-precision sources stored as they are (concatenated,
 * sliced along their first axis) these are views of the source bytes (no copy; the engine writer
 * writes them one after the other); anything else is materialised into one buffer.
 */
export function materializeSegments(v: Value, ckpt: Checkpoint | null): Uint8Array[] {
  const r = v.recipe;
  if (ckpt && r?.kind === "checkpoint" && r.transforms.length === 0 && ST_DTYPE[v.dtype] !== undefined) {
    const st = storageDtype(v.dtype);
    const direct = directParts(r, ckpt, st);
    if (direct) {
      const rest = direct[0].shape.slice(1).join(",");
      const rows = direct.reduce((a, p) => a + p.shape[0], 0);
      const want = v.shape.map(Number);
      if (
        direct.every((p) => p.shape.slice(1).join(",") === rest) &&
        [rows, ...direct[0].shape.slice(1)].join(",") === want.join(",")
      )
        return direct.map((p) => new Uint8Array(p.data.buffer, p.data.byteOffset, p.data.byteLength));
    }
  }
  return [materializeWeight(v, ckpt)];
}

/** Each part of a direct recipe after its own slices (views where the slice is contiguous), or null. */
/** Transforms that only pick elements (views when contiguous): slices and selects. */
const slicesOnly = (ts: Transform[]) => ts.every((t) => t.op === "slice" || t.op === "select");

function directParts(
  r: Extract<WeightRecipe, { kind: "checkpoint" }>,
  ckpt: Checkpoint,
  st: string,
): Raw<Uint16Array>[] | null {
  if (st === "F32") return null;
  if (
    !slicesOnly(r.transforms) ||
    !r.parts.every((p) => slicesOnly(p.transforms) && ckpt.info(p.name).dtype === st)
  )
    return null;
  return r.parts.map((p) => {
    const b = ckpt.read(p.name);
    const raw: Raw<Uint16Array> = {
      shape: ckpt.info(p.name).shape,
      data: new Uint16Array(b.buffer, b.byteOffset, b.byteLength / 2),
    };
    return p.transforms.reduce(applyTransform<Uint16Array>, raw);
  });
}

/**
 * Fast path: half-precision sources already in the stored dtype, with only slices and concatenation,
 * are rearranged as raw 16-bit elements — no decode/encode (most fp16/bf16 builds take this path).
 */
function materializeDirect(
  r: Extract<WeightRecipe, { kind: "checkpoint" }>,
  ckpt: Checkpoint,
  st: string,
): Raw<Uint16Array> | null {
  const parts = directParts(r, ckpt, st);
  return parts && r.transforms.reduce(applyTransform<Uint16Array>, concat0(parts));
}

/**
 * The rows of a [N, K] weight as its sources hold them (after each part's slices, views when contiguous),
 * for quantisers that decode row by row; null when the recipe needs more than slices and concatenation.
 */
export function sourceRows(v: Value, ckpt: Checkpoint): SourceRows[] | null {
  const r = v.recipe;
  if (r?.kind !== "checkpoint" || r.transforms.length > 0 || v.shape.length !== 2) return null;
  const k = Number(v.shape[1]);
  const out: SourceRows[] = [];
  for (const p of r.parts) {
    const info = ckpt.info(p.name);
    if ((info.dtype !== "F16" && info.dtype !== "BF16" && info.dtype !== "F32") || !slicesOnly(p.transforms))
      return null;
    const b = ckpt.read(p.name);
    const raw =
      info.dtype === "F32"
        ? { shape: info.shape, data: toFloat32("F32", b) }
        : { shape: info.shape, data: new Uint16Array(b.buffer, b.byteOffset, b.byteLength / 2) };
    const t = p.transforms.reduce(
      applyTransform<Float32Array | Uint16Array>,
      raw as Raw<Float32Array | Uint16Array>,
    );
    if (t.shape.length !== 2 || t.shape[1] !== k) return null;
    out.push({ dtype: info.dtype, data: t.data, rows: t.shape[0] });
  }
  return out;
}

/** Materialises to fp32 (for quantisation passes that need the values). */
export function materializeF32(v: Value, ckpt: Checkpoint | null): Raw {
  const r = v.recipe!;
  if (r.kind === "constant") return { shape: v.shape.map(Number), data: Float32Array.from(r.data) };
  return materializeParts(r, ckpt!);
}

function materializeParts(r: Extract<WeightRecipe, { kind: "checkpoint" }>, ckpt: Checkpoint): Raw {
  let t = concat0(
    r.parts.map((p) => {
      // A leading select of the outermost axis (one expert of a fused tensor) decodes only that expert.
      const first = p.transforms[0];
      const lead = first?.op === "select" && first.axis === 0 ? first.index : undefined;
      const rest = lead === undefined ? p.transforms : p.transforms.slice(1);
      return rest.reduce(applyTransform, readSource(ckpt, p.name, lead));
    }),
  );
  for (const tr of r.transforms) t = applyTransform(t, tr);
  return t;
}

/** A source tensor decoded to fp32, or only its sub-tensor `index` along axis 0. */
function readSource(ckpt: Checkpoint, name: string, index?: number): Raw {
  const info = ckpt.info(name);
  if (!isFloatDtype(info.dtype))
    throw new Error(`${info.file}: tensor "${name}" has dtype ${info.dtype}, expected a float dtype`);
  const bytes = ckpt.read(name);
  if (index === undefined) return { shape: info.shape, data: toFloat32(info.dtype, bytes) };
  const n = info.shape[0];
  if (!(index >= 0 && index < n))
    throw new Error(`select ${index} out of range for axis 0 of [${info.shape}]`);
  const step = bytes.byteLength / n;
  return {
    shape: info.shape.slice(1),
    data: toFloat32(info.dtype, bytes.subarray(index * step, (index + 1) * step)),
  };
}

function concat0<D extends Elems>(parts: Raw<D>[]): Raw<D> {
  if (parts.length === 1) return parts[0];
  const rest = parts[0].shape.slice(1).join(",");
  for (const p of parts)
    if (p.shape.slice(1).join(",") !== rest)
      throw new Error(`cannot concatenate shapes [${parts[0].shape}] and [${p.shape}]`);
  const data = alloc(
    parts[0].data,
    parts.reduce((a, p) => a + p.data.length, 0),
  );
  let off = 0;
  for (const p of parts) {
    data.set(p.data, off);
    off += p.data.length;
  }
  return { shape: [parts.reduce((a, p) => a + p.shape[0], 0), ...parts[0].shape.slice(1)], data };
}

export function applyTransform<D extends Elems = Float32Array>(t: Raw<D>, tr: Transform): Raw<D> {
  switch (tr.op) {
    case "quantize":
      return applyQuantize(t as Raw, tr) as Raw<D>;
    case "select": {
      const one = applyTransform(t, { op: "slice", axis: tr.axis, start: tr.index, end: tr.index + 1 });
      return { shape: one.shape.filter((_, i) => i !== tr.axis), data: one.data };
    }
    case "slice": {
      const { axis, start, end } = tr;
      if (start < 0 || end > t.shape[axis] || start >= end)
        throw new Error(`slice [${start}, ${end}) out of range for axis ${axis} of [${t.shape}]`);
      const outer = t.shape.slice(0, axis).reduce((a, b) => a * b, 1);
      const inner = t.shape.slice(axis + 1).reduce((a, b) => a * b, 1);
      const n = t.shape[axis];
      const len = end - start;
      const shape = [...t.shape];
      shape[axis] = len;
      // A slice of the outermost non-trivial axis is contiguous: a view, not a copy.
      if (outer === 1) return { shape, data: t.data.subarray(start * inner, end * inner) as D };
      const data = alloc(t.data, outer * len * inner);
      for (let o = 0; o < outer; o++)
        data.set(t.data.subarray((o * n + start) * inner, (o * n + end) * inner), o * len * inner);
      return { shape, data };
    }
  }
}
