// What the mutation run (docs/mutation.md) found untested in the ops' reference semantics: the pre / post
// elementwise chains of linear, quant_linear and the norms (each op applies its own, computed here step
// by step), inputs of more than two dims, rows outside an embedding slice on either side, shape checks
// with symbolic dims and different ranks, the attribute accessors' defaults, HostTensor's checks, and
// E4M3 encoding of zero and of values below its smallest subnormal.
import { describe, expect, it } from "vitest";
import type { Attrs, Dim } from "../../src/ir/types.ts";
import { expectDim, expectSameShape } from "../../src/ops/check.ts";
import { getOp, HostTensor, outputCount, type ValueType } from "../../src/ops/index.ts";
import { attrNum, attrStr } from "../../src/ops/registry.ts";
import { e4m3ToF32, f32BitsToE4m3, f32ToE4m3 } from "../../src/quant/fp8.ts";
import { computeScales, quantizeValues } from "../../src/quant/weights.ts";

const t = (shape: number[], data: number[]) => new HostTensor(shape, Float32Array.from(data));
const run = (op: string, inputs: (HostTensor | null)[], attrs: Attrs = {}) =>
  getOp(op).ref(inputs, attrs, {} as never);
const v = (shape: (number | Dim)[], dtype: ValueType["dtype"] = "f32"): ValueType => ({
  dtype,
  shape: shape as Dim[],
});
/** fp32 rounding after each step, as the unfused ops. */
const softcapThenScale = (x: number, cap: number, f: number) =>
  Math.fround(Math.fround(cap * Math.tanh(x / cap)) * f);
const post = { ops: ["softcap", "scale"], args: [2, 0.5] };

describe("epilogue chains", () => {
  const x = t([2, 3], [1, -2, 3, 0.5, 4, -6]);
  const w = t([2, 3], [0.5, 1, -1, 2, 0, 1]);

  it("linear: post applies after the activation and bias, before the residual", () => {
    const bias = t([2], [0.25, -3]);
    const res = t([2, 2], [10, 20, 30, 40]);
    const plain = run("linear", [x, w, bias, null], { activation: "silu" })[0].f32;
    const got = run("linear", [x, w, bias, res], { activation: "silu", post })[0].f32;
    expect(Array.from(got)).toEqual(
      Array.from(plain).map((y, i) => Math.fround(softcapThenScale(y, 2, 0.5) + res.f32[i])),
    );
    expect(() =>
      getOp("linear").infer([v([2, 3]), v([2, 3])], { post: { ops: ["relu"], args: [0] } }),
    ).toThrow('attribute "post": unknown op "relu"');
    expect(() => getOp("linear").infer([null, v([2, 3])], {})).toThrow("linear: missing input x");
    expect(() => getOp("linear").infer([v([2, 3]), null], {})).toThrow("linear: missing input w");
  });

  it("linear over a [2, 2, 3] input keeps the leading dims", () => {
    const x3 = t([2, 2, 3], [...x.f32, ...x.f32]);
    const y = run("linear", [x3, w])[0];
    expect(y.shape).toEqual([2, 2, 2]);
    const y2 = run("linear", [x, w])[0].f32;
    expect(Array.from(y.f32)).toEqual([...y2, ...y2]);
  });

  it("quant_linear (int8-wo): post applies after the bias, before the residual", () => {
    const wf = Float32Array.from(w.f32);
    const spec = { scheme: "int8-wo" as const };
    const q = new HostTensor([2, 3], quantizeValues(wf, 2, 3, spec));
    const s = new HostTensor([2], computeScales(wf, 2, 3, spec));
    const bias = t([2], [0.25, -3]);
    const res = t([2, 2], [10, 20, 30, 40]);
    const plain = run("quant_linear", [x, q, s, bias, null], { quant: "int8-wo" })[0].f32;
    const got = run("quant_linear", [x, q, s, bias, res], { quant: "int8-wo", post })[0].f32;
    expect(Array.from(got)).toEqual(
      Array.from(plain).map((y, i) => Math.fround(softcapThenScale(y, 2, 0.5) + res.f32[i])),
    );
    expect(() =>
      getOp("quant_linear").infer([v([2, 3]), v([2, 3], "i8"), v([2])], {
        quant: "int8-wo",
        post: { ops: ["exp"] },
      }),
    ).toThrow('attribute "post": ops and args must be arrays of the same length');
  });

  it("norms: pre applies to x as it is read (before the residual add), post to the normalised output", () => {
    const w3 = t([3], [1, 0.5, 2]);
    const res = t([2, 3], [0.1, 0.2, 0.3, -1, 1, 0]);
    const pre = { ops: ["scale"], args: [3] };
    const x3 = t(
      [2, 3],
      Array.from(x.f32, (a) => Math.fround(a * 3)),
    );
    for (const [op, inputs, preInputs] of [
      ["rms_norm", [x, w3], [x3, w3]],
      ["layer_norm", [x, w3, null], [x3, w3, null]],
      ["add_rms_norm", [x, res, w3], [x3, res, w3]],
      ["add_layer_norm", [x, res, w3, null], [x3, res, w3, null]],
    ] as const) {
      const attrs = { eps: 1e-5 };
      const want = run(op, [...preInputs], attrs);
      const got = run(op, [...inputs], { ...attrs, pre, post });
      expect(Array.from(got[0].f32), op).toEqual(Array.from(want[0].f32, (y) => softcapThenScale(y, 2, 0.5)));
      if (got.length > 1) expect(Array.from(got[1].f32), op).toEqual(Array.from(want[1].f32));
      // x itself is not modified by the pre chain.
      expect(Array.from(x.f32)).toEqual([1, -2, 3, 0.5, 4, -6]);
      expect(() => getOp(op).infer([v([2, 3]), v([2, 3]), v([3])], { ...attrs, pre: 1 } as never)).toThrow(
        'attribute "pre": got 1',
      );
      expect(() => getOp(op).infer([v([2, 3]), v([2, 3]), v([3])], { ...attrs, post: 1 } as never)).toThrow(
        'attribute "post": got 1',
      );
    }
    expect(() => getOp("add_rms_norm").infer([v([2, 3]), v([2, 3]), v([4])], { eps: 1e-5 })).toThrow(
      "add_rms_norm: normalised width is 3, expected 4",
    );
  });
});

describe("shapes", () => {
  it("split and gated_act over [2, 2, w] inputs keep the leading dims", () => {
    const x = t(
      [2, 2, 4],
      Array.from({ length: 16 }, (_, i) => i - 8),
    );
    const [a, b] = run("split", [x], { sizes: [1, 3] });
    expect(a.shape).toEqual([2, 2, 1]);
    expect(b.shape).toEqual([2, 2, 3]);
    expect(Array.from(a.f32)).toEqual([-8, -4, 0, 4]);
    const g = run("gated_act", [x], { activation: "none" })[0];
    expect(g.shape).toEqual([2, 2, 2]);
    expect(Array.from(g.f32)).toEqual([-8 * -6, -7 * -5, -4 * -2, -3 * -1, 0 * 2, 1 * 3, 4 * 6, 5 * 7]);
  });

  it("split infer: sizes must be numbers summing to the last dim; one output per size", () => {
    const split = getOp("split");
    expect(split.infer([v([3, 8], "f16")], { sizes: [2, 6] })).toEqual([v([3, 2], "f16"), v([3, 6], "f16")]);
    expect(outputCount(split, { sizes: [1, 2, 5] })).toBe(3);
    expect(outputCount(getOp("linear"), {})).toBe(1);
    expect(() => split.infer([v([3, 8])], { sizes: [2, 5] })).toThrow("split: sizes sum to 7, last dim is 8");
    for (const sizes of [undefined, 8, [2, "6"]])
      expect(() => split.infer([v([3, 8])], { sizes } as never)).toThrow(
        "split: attribute sizes must be numbers",
      );
    expect(() => split.infer([null], { sizes: [8] })).toThrow("split: missing input x");
  });

  it("gather_rows and embedding infer; their missing inputs; gated_act's width", () => {
    expect(getOp("gather_rows").infer([v([5, 8], "f16"), v([2], "i32")], {})).toEqual([v([2, 8], "f16")]);
    expect(() => getOp("gather_rows").infer([null, v([2], "i32")], {})).toThrow(
      "gather_rows: missing input x",
    );
    expect(() => getOp("gather_rows").infer([v([5, 8]), null], {})).toThrow(
      "gather_rows: missing input indices",
    );
    expect(() => getOp("embedding").infer([null, v([5, 8])], {})).toThrow("embedding: missing input ids");
    expect(() => getOp("embedding").infer([v([2], "i32"), null], {})).toThrow(
      "embedding: missing input table",
    );
    expect(() => getOp("gated_act").infer([null], { activation: "silu" })).toThrow(
      "gated_act: missing input x",
    );
    const n = { sym: "n", max: 8 } as unknown as Dim;
    expect(() => getOp("gated_act").infer([v([2, n])], { activation: "silu" })).toThrow(
      "gated_act: last dim must be an even number",
    );
    expect(() => getOp("tanh").infer([null], {})).toThrow("tanh: missing input x");
    expect(() => getOp("add").infer([null, v([2])], {})).toThrow("add: missing input a");
    expect(() => getOp("add").infer([v([2]), null], {})).toThrow("add: missing input b");
  });

  it("embedding: ids below the slice (by any number of rows) or past it give zero rows", () => {
    const table = t([3, 2], [1, 2, 3, 4, 5, 6]);
    const ids = new HostTensor([5], Int32Array.from([0, 1, 4, 6, 7]));
    // vocab_start 4: rows 4..6; id 0 is 4 rows below, 1 is 3 below, 7 is one past.
    expect(Array.from(run("embedding", [ids, table], { vocab_start: 4 })[0].f32)).toEqual([
      0, 0, 0, 0, 1, 2, 5, 6, 0, 0,
    ]);
  });

  it("shape messages name symbolic dims; shapes of different rank differ", () => {
    const n = { sym: "num_tokens", max: 8 } as unknown as Dim;
    expect(() => expectDim("op", n, 4, "rows")).toThrow("op: rows is num_tokens, expected 4");
    expect(() => expectDim("op", 4, n, "rows")).toThrow("op: rows is 4, expected num_tokens");
    expect(() => expectSameShape("add", [2, 3], [2, 3, 1])).toThrow("add: shapes");
    expect(() => expectSameShape("add", [2, 3, 1], [2, 3])).toThrow("add: shapes");
    expect(() => expectSameShape("add", [2, 3], [2, 3])).not.toThrow();
  });
});

describe("attributes and host tensors", () => {
  it("attrNum / attrStr: the value when given (even with a default), the default when absent, else a message", () => {
    expect(attrNum({ a: 0 }, "a", 1)).toBe(0);
    expect(attrNum({}, "a", 1)).toBe(1);
    expect(attrNum({}, "a", 0)).toBe(0);
    expect(() => attrNum({}, "a")).toThrow('attribute "a" must be a number, got undefined');
    expect(() => attrNum({ a: "1" }, "a", 1)).toThrow('attribute "a" must be a number, got "1"');
    expect(attrStr({ a: "x" }, "a", "y")).toBe("x");
    expect(attrStr({}, "a", "y")).toBe("y");
    expect(attrStr({}, "a", "")).toBe("");
    expect(() => attrStr({}, "a")).toThrow('attribute "a" must be a string, got undefined');
    expect(() => attrStr({ a: 1 }, "a", "y")).toThrow('attribute "a" must be a string, got 1');
    expect(() => getOp("no_such_op")).toThrow(
      /^unknown op "no_such_op" \(known: add, add_layer_norm, add_rms_norm, all_gather, .*, tanh\)$/,
    );
  });

  it("HostTensor checks its element count and its element type", () => {
    expect(() => new HostTensor([2, 3], new Float32Array(5))).toThrow(
      "HostTensor: shape [2,3] needs 6 elements, got 5",
    );
    const z = HostTensor.zeros([2, 3]);
    expect(z.shape).toEqual([2, 3]);
    expect(Array.from(z.f32)).toEqual([0, 0, 0, 0, 0, 0]);
    expect([z.rows, z.cols]).toEqual([2, 3]);
    expect(() => z.i32).toThrow("expected an int32 tensor");
    expect(() => new HostTensor([2], Int32Array.of(1, 2)).f32).toThrow("expected a float tensor");
  });
});

describe("E4M3 encoding at the bottom of the range", () => {
  it("zero, fp32 subnormals and values below half the smallest subnormal encode as (signed) zero", () => {
    const bits = (x: number) => new Uint32Array(Float32Array.of(x).buffer)[0];
    expect(f32BitsToE4m3(bits(0))).toBe(0);
    expect(f32BitsToE4m3(bits(-0))).toBe(0x80);
    expect(f32BitsToE4m3(bits(1e-45))).toBe(0); // fp32 subnormal
    expect(f32BitsToE4m3(bits(-1e-40))).toBe(0x80);
    expect(f32BitsToE4m3(bits(2 ** -30))).toBe(0);
    // The smallest subnormal is 2^-9; half of it rounds to even (0), a little more rounds up.
    expect(f32BitsToE4m3(bits(2 ** -10))).toBe(0);
    expect(f32BitsToE4m3(bits(2 ** -10 * 1.001))).toBe(1);
    expect(e4m3ToF32(f32ToE4m3(2 ** -9))).toBe(2 ** -9);
    // 480 and above saturate to 448 (no infinity in E4M3).
    expect(e4m3ToF32(f32ToE4m3(1e6))).toBe(448);
    expect(e4m3ToF32(f32ToE4m3(-464))).toBe(-448);
  });
});
