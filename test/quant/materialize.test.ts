// The engine writer's quantised weights (src/quant/materialize.ts) without a checkpoint: the source rows
// and the fp32 tensor come from the test, so each case can say which path ran (FP8 values and scales made
// together from the rows, or the fp32 fallback, each pair's source read once) and compare the two paths'
// bytes with quantizeToBytes / computeScales directly.
import { describe, expect, it } from "vitest";
import type { Checkpoint } from "../../src/checkpoint/checkpoint.ts";
import { fromFloat32 } from "../../src/checkpoint/dtype.ts";
import type { DType, Value } from "../../src/ir/types.ts";
import type { SourceRows } from "../../src/quant/fp8-rows.ts";
import { applyQuantize, fp8Output, fp8Source, materializeQuantized } from "../../src/quant/materialize.ts";
import { computeScales, type QuantSpec, quantizeToBytes, quantizeValues } from "../../src/quant/weights.ts";
import { type Transform, uniformWithStd, type WeightRecipe } from "../../src/weights/recipe.ts";

const N = 3;
const K = 40;
/** Rows of different magnitudes, the last all zero (scale 1). */
const W = Float32Array.from({ length: N * K }, (_, i) =>
  i < 2 * K ? Math.sin(i * 0.37) * (1 + 50 * Math.floor(i / K)) : 0,
);
const ckpt = {} as Checkpoint; // only handed through to the test's readers

function weight(
  name: string,
  dtype: DType,
  shape: number[],
  q: Omit<Extract<Transform, { op: "quantize" }>, "op">,
  part = "w",
  pre: Transform[] = [],
): Value {
  const recipe: WeightRecipe = {
    kind: "checkpoint",
    parts: [{ name: part, shape: [N, K], transforms: [] }],
    transforms: [...pre, { op: "quantize", ...q }],
    init: uniformWithStd(0.02),
  };
  return { id: 0, name, dtype, shape, kind: "weight", recipe };
}

const fp8Values = (part = "w") =>
  weight(`${part}.values`, "fp8e4m3", [N, K], { scheme: "fp8", output: "values" }, part);
const fp8Scales = (part = "w") =>
  weight(`${part}.scales`, "f32", [N], { scheme: "fp8", output: "scales" }, part);

/** The test's readers, counting calls and checking they are asked for the recipe without its quantize step. */
function readers(rows: (v: Value) => SourceRows[] | null = () => [{ dtype: "F32", data: W, rows: N }]) {
  const calls = { f32: 0, rows: 0 };
  const unquantised = (v: Value) => {
    const r = v.recipe;
    if (r?.kind !== "checkpoint" || r.transforms.some((t) => t.op === "quantize"))
      throw new Error(`${v.name}: asked with its quantize step`);
  };
  return {
    calls,
    toF32: (v: Value) => {
      unquantised(v);
      calls.f32++;
      return { shape: [N, K], data: W };
    },
    rowsOf: (v: Value) => {
      unquantised(v);
      calls.rows++;
      return rows(v);
    },
  };
}

const FP8: QuantSpec = { scheme: "fp8" };
const wantValues = () => quantizeToBytes(W, N, K, FP8);
const wantScales = () => fromFloat32("F32", computeScales(W, N, K, FP8));

describe("fp8Source and fp8Output", () => {
  it("an fp8 quantize step gives the recipe without it, a key its companion shares, and which output", () => {
    const v = fp8Values();
    const s = fp8Scales();
    const fv = fp8Source(v)!;
    expect(fv.output).toBe("values");
    expect(fp8Source(s)!.output).toBe("scales");
    expect(fv.pre).toEqual({ ...v.recipe, transforms: [] });
    expect(fv.key).toBe(JSON.stringify([[{ name: "w", shape: [N, K], transforms: [] }], []]));
    expect(fp8Source(s)!.key).toBe(fv.key);
    expect(fp8Source(fp8Values("other"))!.key).not.toBe(fv.key);
    expect(v.recipe).toEqual(fp8Values().recipe); // v is not edited
  });

  it("is null for other schemes, a recipe not ending in quantize, and constants", () => {
    expect(fp8Source(weight("i", "i8", [N, K], { scheme: "int8-wo", output: "values" }))).toBeNull();
    const sliced = fp8Values();
    if (sliced.recipe?.kind === "checkpoint")
      sliced.recipe.transforms = [{ op: "slice", axis: 0, start: 0, end: 1 }];
    expect(fp8Source(sliced)).toBeNull();
    if (sliced.recipe?.kind === "checkpoint") sliced.recipe.transforms = [];
    expect(fp8Source(sliced)).toBeNull();
    expect(fp8Source({ ...fp8Values(), recipe: { kind: "constant", data: [0] } })).toBeNull();
    expect(fp8Source({ ...fp8Values(), recipe: undefined })).toBeNull();
  });

  it("hands out the made values as they are and the scales as their bytes, after checking the shape", () => {
    const q = { values: new Uint8Array(N * K), scales: Float32Array.from([1, 2, 3]), n: N, k: K, left: 2 };
    expect(fp8Output(fp8Values(), q, "values")).toBe(q.values);
    const b = fp8Output(fp8Scales(), q, "scales");
    expect(b.buffer).toBe(q.scales.buffer);
    expect([...b]).toEqual([...new Uint8Array(q.scales.buffer)]);
    expect(() => fp8Output({ ...fp8Values(), shape: [N, K + 1] }, q, "values")).toThrow(
      `weight w.values: recipe produced [${N},${K}] but the graph expects [${N},${K + 1}]`,
    );
    expect(() => fp8Output({ ...fp8Scales(), shape: [N, 1] }, q, "scales")).toThrow(
      `weight w.scales: recipe produced [${N}] but the graph expects [${N},1]`,
    );
  });
});

describe("materializeQuantized", () => {
  it("fp8 from source rows: values and scales made once for the pair, the same bytes as the fp32 path", () => {
    const r = readers();
    const values = materializeQuantized(fp8Values(), ckpt, r.toF32, r.rowsOf);
    const scales = materializeQuantized(fp8Scales(), ckpt, r.toF32, r.rowsOf);
    expect(r.calls).toEqual({ f32: 0, rows: 1 });
    expect(values).toEqual(wantValues());
    expect(scales).toEqual(wantScales());
    // Both were asked for: the pair is dropped, and the next request makes it again.
    expect(materializeQuantized(fp8Scales(), ckpt, r.toF32, r.rowsOf)).toEqual(scales);
    expect(materializeQuantized(fp8Values(), ckpt, r.toF32, r.rowsOf)).toEqual(values);
    expect(r.calls).toEqual({ f32: 0, rows: 2 });
    // The fallback (no row reader) writes the same bytes.
    const f = readers();
    expect(materializeQuantized(fp8Values(), ckpt, f.toF32)).toEqual(values);
    expect(materializeQuantized(fp8Scales(), ckpt, f.toF32)).toEqual(scales);
    expect(f.calls).toEqual({ f32: 1, rows: 0 });
  });

  it("pairs interleaved (tp ranks) are each made once; rows split over parts are concatenated", () => {
    const r = readers((v) => {
      const p = (v.recipe as Extract<WeightRecipe, { kind: "checkpoint" }>).parts[0].name;
      if (p === "a") return [{ dtype: "F32", data: W, rows: N }];
      return [
        { dtype: "F32", data: W.subarray(0, 2 * K), rows: 2 },
        { dtype: "F32", data: W.subarray(2 * K), rows: 1 },
      ];
    });
    const got = [fp8Values("a"), fp8Values("b"), fp8Scales("b"), fp8Scales("a")].map((v) =>
      materializeQuantized(v, ckpt, r.toF32, r.rowsOf),
    );
    expect(r.calls).toEqual({ f32: 0, rows: 2 });
    expect(got).toEqual([wantValues(), wantValues(), wantScales(), wantScales()]);
  });

  it("a source the row reader cannot give (null) takes the fp32 path, once for the pair", () => {
    const r = readers(() => null);
    expect(materializeQuantized(fp8Values(), ckpt, r.toF32, r.rowsOf)).toEqual(wantValues());
    expect(materializeQuantized(fp8Scales(), ckpt, r.toF32, r.rowsOf)).toEqual(wantScales());
    expect(r.calls).toEqual({ f32: 1, rows: 2 });
  });

  it("a weight of no rows makes empty values and scales", () => {
    const r = readers(() => []);
    const v = { ...fp8Values(), shape: [0, 0] };
    const s = { ...fp8Scales(), shape: [0] };
    expect(materializeQuantized(v, ckpt, r.toF32, r.rowsOf)).toHaveLength(0);
    expect(materializeQuantized(s, ckpt, r.toF32, r.rowsOf)).toHaveLength(0);
    expect(r.calls).toEqual({ f32: 0, rows: 1 });
  });

  it("int8-wo and int4-wo values and scales from one fp32 read; values as f32 numbers", () => {
    const r = readers();
    const i8: QuantSpec = { scheme: "int8-wo" };
    expect(
      materializeQuantized(weight("q", "i8", [N, K], { scheme: "int8-wo", output: "values" }), ckpt, r.toF32),
    ).toEqual(quantizeToBytes(W, N, K, i8));
    expect(
      materializeQuantized(weight("q", "f32", [N], { scheme: "int8-wo", output: "scales" }), ckpt, r.toF32),
    ).toEqual(fromFloat32("F32", computeScales(W, N, K, i8)));
    expect(r.calls.f32).toBe(1);
    const i4: QuantSpec = { scheme: "int4-wo", groupSize: 8 };
    const q4 = { scheme: "int4-wo" as const, group_size: 8 };
    expect(
      materializeQuantized(weight("q", "u8", [N, K / 2], { ...q4, output: "values" }), ckpt, r.toF32),
    ).toEqual(quantizeToBytes(W, N, K, i4));
    expect(
      materializeQuantized(weight("q", "f32", [N, K / 8], { ...q4, output: "scales" }), ckpt, r.toF32),
    ).toEqual(fromFloat32("F32", computeScales(W, N, K, i4)));
    expect(r.calls.f32).toBe(2);
    // Values kept as f32 (not a quantised dtype) are the stored values as numbers.
    expect(
      materializeQuantized(
        weight("q", "f32", [N, K], { scheme: "int8-wo", output: "values" }),
        ckpt,
        r.toF32,
      ),
    ).toEqual(fromFloat32("F32", quantizeValues(W, N, K, i8)));
  });

  it("the fp32 fallback reuses a tensor only for the same sources", () => {
    const r = readers();
    const i8 = { scheme: "int8-wo" as const };
    materializeQuantized(weight("a.q", "i8", [N, K], { ...i8, output: "values" }, "a"), ckpt, r.toF32);
    materializeQuantized(weight("b.s", "f32", [N], { ...i8, output: "scales" }, "b"), ckpt, r.toF32);
    expect(r.calls.f32).toBe(2);
    materializeQuantized(weight("b.q", "i8", [N, K], { ...i8, output: "values" }, "b"), ckpt, r.toF32);
    expect(r.calls.f32).toBe(2); // b's tensor, kept from the scales
  });

  it("names the weight and what is wrong", () => {
    const r = readers();
    const m = (v: Value) => () => materializeQuantized(v, ckpt, r.toF32, r.rowsOf);
    expect(m({ ...fp8Values(), recipe: { kind: "constant", data: [0] } })).toThrow(
      "w.values: only checkpoint weights are quantised",
    );
    const notLast = fp8Values();
    if (notLast.recipe?.kind === "checkpoint")
      notLast.recipe.transforms.push({ op: "slice", axis: 0, start: 0, end: 1 });
    expect(m(notLast)).toThrow("w.values: quantize must be the last transform");
    expect(m(weight("q", "i8", [N, K + 1], { scheme: "int8-wo", output: "values" }))).toThrow(
      `weight q: recipe produced [${N},${K}] but the graph expects [${N},${K + 1}]`,
    );
    expect(m(weight("q", "f32", [N, 2], { scheme: "int8-wo", output: "scales" }))).toThrow(
      `weight q: recipe produced [${N}] but the graph expects [${N},2]`,
    );
    expect(m(weight("q", "f16", [N], { scheme: "int8-wo", output: "scales" }))).toThrow(
      "q: quantisation scales are f32, not f16",
    );
    expect(m(weight("q", "i8", [N], { scheme: "int8-wo", output: "scales" }))).toThrow(
      "q: quantisation scales are f32, not i8",
    );
    expect(m({ ...fp8Values(), recipe: undefined })).toThrow(
      "w.values: only checkpoint weights are quantised",
    );
    const none = fp8Values();
    if (none.recipe?.kind === "checkpoint") none.recipe.transforms = [];
    expect(m(none)).toThrow("w.values: quantize must be the last transform");
  });
});

describe("applyQuantize", () => {
  it("a [N, K] weight's stored values or scales; other ranks refused", () => {
    const t = { shape: [N, K], data: W };
    expect(applyQuantize(t, { op: "quantize", scheme: "fp8", output: "scales" })).toEqual({
      shape: [N],
      data: computeScales(W, N, K, FP8),
    });
    expect(applyQuantize(t, { op: "quantize", scheme: "int4-wo", group_size: 8, output: "values" })).toEqual({
      shape: [N, K / 2],
      data: quantizeValues(W, N, K, { scheme: "int4-wo", groupSize: 8 }),
    });
    expect(() =>
      applyQuantize({ shape: [N * K], data: W }, { op: "quantize", scheme: "fp8", output: "values" }),
    ).toThrow(`quantize: expected a [N, K] weight, got [${N * K}]`);
  });
});
