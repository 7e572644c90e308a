// src/weights/materialize.ts on an in-memory checkpoint of tiny hand-written tensors, so every expected
// element is written out by hand: F32 "a" = [[1, 2, 3], [4, 5, 6]], "b" = [[7, 8, 9]], fused experts
// "e" = [2, 2, 2] of 0..7; BF16 "h" and F16 "g" hold "a"'s values (bf16 1..6 = 0x3f80 0x4000 0x4040 0x4080
// 0x40a0 0x40c0; f16 = 0x3c00 0x4000 0x4200 0x4400 0x4500 0x4600), BF16 "k" the same as [1, 2, 3]; I32 "i"
// and "j". Nothing is written to disk.
import { describe, expect, it } from "vitest";
import type { Checkpoint } from "../../src/checkpoint/checkpoint.ts";
import type { DType, Value } from "../../src/ir/types.ts";
import {
  materializeF32,
  materializeSegments,
  materializeWeight,
  sourceRows,
  storageDtype,
} from "../../src/weights/materialize.ts";
import type { RecipePart, Transform, WeightRecipe } from "../../src/weights/recipe.ts";

const BF = [0x3f80, 0x4000, 0x4040, 0x4080, 0x40a0, 0x40c0];
const HF = [0x3c00, 0x4000, 0x4200, 0x4400, 0x4500, 0x4600];
const bytes = (a: Float32Array | Uint16Array | Int32Array) =>
  new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
const TENSORS: Record<string, { dtype: string; shape: number[]; data: Uint8Array }> = {
  a: { dtype: "F32", shape: [2, 3], data: bytes(Float32Array.of(1, 2, 3, 4, 5, 6)) },
  b: { dtype: "F32", shape: [1, 3], data: bytes(Float32Array.of(7, 8, 9)) },
  e: { dtype: "F32", shape: [2, 2, 2], data: bytes(Float32Array.of(0, 1, 2, 3, 4, 5, 6, 7)) },
  h: { dtype: "BF16", shape: [2, 3], data: bytes(Uint16Array.from(BF)) },
  g: { dtype: "F16", shape: [2, 3], data: bytes(Uint16Array.from(HF)) },
  i: { dtype: "I32", shape: [2], data: bytes(Int32Array.of(1, 2)) },
  j: { dtype: "I32", shape: [1, 2], data: bytes(Int32Array.of(1, 2)) },
  k: { dtype: "BF16", shape: [1, 2, 3], data: bytes(Uint16Array.from(BF)) },
};
const ckpt = {
  dir: "mem",
  has: (n: string) => n in TENSORS,
  info: (n: string) => ({
    ...TENSORS[n],
    byteLength: TENSORS[n].data.byteLength,
    fileOffset: 0,
    file: `mem/${n}.st`,
  }),
  read: (n: string) => TENSORS[n].data,
} as unknown as Checkpoint;

const part = (name: string, ...transforms: Transform[]): RecipePart => ({
  name,
  shape: TENSORS[name].shape,
  transforms,
});
const weight = (dtype: DType, shape: number[], parts: RecipePart[], transforms: Transform[] = []): Value => {
  const recipe: WeightRecipe = { kind: "checkpoint", parts, transforms, init: { mean: 0, scale: 1 } };
  return { id: 0, name: "w", dtype, shape, kind: "weight", recipe };
};
const f32 = (b: Uint8Array) => Array.from(new Float32Array(b.slice().buffer));
const u16 = (b: Uint8Array) => Array.from(new Uint16Array(b.slice().buffer));
const sl = (axis: number, start: number, end: number): Transform => ({ op: "slice", axis, start, end });
const sel = (axis: number, index: number): Transform => ({ op: "select", axis, index });
const exactly = (m: string) => new RegExp(`^${m.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}$`);

describe("storageDtype", () => {
  it("maps the float dtypes and refuses the quantised ones", () => {
    expect([storageDtype("f32"), storageDtype("f16"), storageDtype("bf16")]).toEqual(["F32", "F16", "BF16"]);
    expect(() => storageDtype("fp8e4m3")).toThrow(
      exactly("weights of dtype fp8e4m3 are produced by quantisation, not read directly"),
    );
  });
});

describe("materializeWeight", () => {
  it("encodes constants in the weight's dtype; refuses no recipe, or no checkpoint", () => {
    const c = (dtype: DType): Value => ({
      id: 0,
      name: "w",
      dtype,
      shape: [2],
      kind: "weight",
      recipe: { kind: "constant", data: [1.5, -2] },
    });
    expect(f32(materializeWeight(c("f32"), null))).toEqual([1.5, -2]);
    expect(u16(materializeWeight(c("bf16"), null))).toEqual([0x3fc0, 0xc000]);
    expect(materializeF32(c("f32"), null)).toEqual({ shape: [2], data: Float32Array.of(1.5, -2) });
    expect(() => materializeWeight({ ...c("f32"), recipe: undefined }, ckpt)).toThrow(
      exactly("weight w has no recipe"),
    );
    expect(() => materializeWeight(weight("f32", [2, 3], [part("a")]), null)).toThrow(
      exactly("weight w needs a checkpoint"),
    );
  });

  it("concatenates parts along axis 0 and checks the graph's shape", () => {
    expect(f32(materializeWeight(weight("f32", [3, 3], [part("a"), part("b")]), ckpt))).toEqual([
      1, 2, 3, 4, 5, 6, 7, 8, 9,
    ]);
    expect(f32(materializeWeight(weight("f32", [3, 3], [part("b"), part("a")]), ckpt))).toEqual([
      7, 8, 9, 1, 2, 3, 4, 5, 6,
    ]);
    expect(() => materializeWeight(weight("f32", [9], [part("a"), part("b")]), ckpt)).toThrow(
      exactly("weight w: recipe produced [3,3] but the graph expects [9]"),
    );
    expect(() => materializeWeight(weight("f32", [2, 3], [part("a"), part("e")]), ckpt)).toThrow(
      exactly("cannot concatenate shapes [2,3] and [2,2,2]"),
    );
    expect(() => materializeWeight(weight("f32", [2], [part("i")]), ckpt)).toThrow(
      exactly('mem/i.st: tensor "i" has dtype I32, expected a float dtype'),
    );
  });

  it("slices and selects, per part and after the concatenation", () => {
    const w = (shape: number[], ps: RecipePart[], ts: Transform[] = []) =>
      f32(materializeWeight(weight("f32", shape, ps, ts), ckpt));
    expect(w([2, 2], [part("a", sl(1, 1, 3))])).toEqual([2, 3, 5, 6]);
    expect(w([1, 3], [part("a", sl(0, 1, 2))])).toEqual([4, 5, 6]);
    expect(w([2, 1], [part("a")], [sl(1, 0, 1)])).toEqual([1, 4]);
    expect(w([3, 2], [part("a"), part("b")], [sl(1, 1, 3)])).toEqual([2, 3, 5, 6, 8, 9]);
    expect(w([2, 2], [part("e", sel(0, 1))])).toEqual([4, 5, 6, 7]);
    expect(w([2, 2], [part("e", sel(0, 0))])).toEqual([0, 1, 2, 3]);
    expect(w([2, 2], [part("e", sel(1, 0))])).toEqual([0, 1, 4, 5]);
    expect(w([2, 2], [part("e", sel(2, 1))])).toEqual([1, 3, 5, 7]);
    expect(w([2], [part("e", sel(0, 1), sel(1, 0))])).toEqual([4, 6]);
    expect(w([1, 2], [part("e", sel(0, 1), sl(0, 1, 2))])).toEqual([6, 7]);
    expect(w([2, 2], [part("e")], [sel(0, 1)])).toEqual([4, 5, 6, 7]);
    expect(w([2, 2], [part("e", sl(2, 1, 2))], [sel(2, 0)])).toEqual([1, 3, 5, 7]);
    const bad =
      (ps: RecipePart[], ts: Transform[] = []) =>
      () =>
        materializeWeight(weight("f32", [1], ps, ts), ckpt);
    expect(bad([part("a", sl(1, 0, 4))])).toThrow(exactly("slice [0, 4) out of range for axis 1 of [2,3]"));
    expect(bad([part("a", sl(1, -1, 2))])).toThrow(exactly("slice [-1, 2) out of range for axis 1 of [2,3]"));
    expect(bad([part("a", sl(0, 1, 1))])).toThrow(exactly("slice [1, 1) out of range for axis 0 of [2,3]"));
    expect(bad([part("a")], [sl(0, 2, 1)])).toThrow(exactly("slice [2, 1) out of range for axis 0 of [2,3]"));
    expect(bad([part("e", sel(0, 2))])).toThrow(exactly("select 2 out of range for axis 0 of [2,2,2]"));
    expect(bad([part("e", sel(0, -1))])).toThrow(exactly("select -1 out of range for axis 0 of [2,2,2]"));
    expect(bad([part("e", sel(1, 2))])).toThrow(exactly("slice [2, 3) out of range for axis 1 of [2,2,2]"));
  });

  it("keeps 16-bit sources of the stored dtype as they are, converts the others", () => {
    expect(u16(materializeWeight(weight("bf16", [2, 3], [part("h")]), ckpt))).toEqual(BF);
    expect(u16(materializeWeight(weight("bf16", [1, 3], [part("h", sl(0, 1, 2))]), ckpt))).toEqual(
      BF.slice(3),
    );
    expect(u16(materializeWeight(weight("bf16", [2, 2], [part("h", sl(1, 0, 2))]), ckpt))).toEqual([
      BF[0],
      BF[1],
      BF[3],
      BF[4],
    ]);
    expect(
      u16(materializeWeight(weight("bf16", [4, 1], [part("h"), part("h")], [sl(1, 2, 3)]), ckpt)),
    ).toEqual([BF[2], BF[5], BF[2], BF[5]]);
    expect(u16(materializeWeight(weight("f16", [2, 3], [part("h")]), ckpt))).toEqual(HF);
    expect(u16(materializeWeight(weight("bf16", [2, 3], [part("g")]), ckpt))).toEqual(BF);
    expect(u16(materializeWeight(weight("bf16", [3, 3], [part("g"), part("b")]), ckpt))).toEqual([
      ...BF,
      0x40e0,
      0x4100,
      0x4110,
    ]);
    expect(f32(materializeWeight(weight("f32", [2, 3], [part("h")]), ckpt))).toEqual([1, 2, 3, 4, 5, 6]);
    expect(() => materializeWeight(weight("bf16", [6], [part("h")]), ckpt)).toThrow(
      exactly("weight w: recipe produced [2,3] but the graph expects [6]"),
    );
  });
});

describe("materializeSegments", () => {
  it("gives views of 16-bit sources concatenated as they are, one buffer otherwise", () => {
    const h = TENSORS.h.data;
    const segs = materializeSegments(
      weight("bf16", [4, 3], [part("h"), part("h", sl(0, 1, 2)), part("h", sl(0, 0, 1))]),
      ckpt,
    );
    expect(segs.map(u16)).toEqual([BF, BF.slice(3), BF.slice(0, 3)]);
    expect(segs.every((s) => s.buffer === h.buffer)).toBe(true);
    expect([segs[1].byteOffset - h.byteOffset, segs[1].byteLength]).toEqual([6, 6]);
    // anything else: one buffer, materialised
    const one = (v: Value, c: Checkpoint | null = ckpt) => {
      const s = materializeSegments(v, c);
      expect(s).toHaveLength(1);
      return s[0];
    };
    expect(u16(one(weight("bf16", [2, 2], [part("h", sl(1, 0, 2))])))).toEqual([BF[0], BF[1], BF[3], BF[4]]);
    expect(u16(one(weight("bf16", [2, 1], [part("h")], [sl(1, 0, 1)])))).toEqual([BF[0], BF[3]]);
    expect(u16(one(weight("f16", [2, 3], [part("h")])))).toEqual(HF);
    expect(f32(one(weight("f32", [2, 3], [part("a")])))).toEqual([1, 2, 3, 4, 5, 6]);
    expect(
      u16(
        one(
          {
            id: 0,
            name: "w",
            dtype: "bf16",
            shape: [1],
            kind: "weight",
            recipe: { kind: "constant", data: [2] },
          },
          null,
        ),
      ),
    ).toEqual([0x4000]);
    expect(() => one(weight("bf16", [2, 3], [part("h")]), null)).toThrow(
      exactly("weight w needs a checkpoint"),
    );
    // shapes that do not add up are refused as materializeWeight refuses them
    expect(() => materializeSegments(weight("bf16", [3, 2], [part("h")]), ckpt)).toThrow(
      exactly("weight w: recipe produced [2,3] but the graph expects [3,2]"),
    );
    expect(() =>
      materializeSegments(weight("bf16", [4, 3], [part("h"), part("h", sel(1, 0))]), ckpt),
    ).toThrow(exactly("cannot concatenate shapes [2,3] and [2]"));
    expect(() =>
      materializeSegments(weight("bf16", [4], [part("h", sel(1, 0)), part("h", sel(1, 1))]), ckpt),
    ).not.toThrow();
    expect(
      materializeSegments(weight("bf16", [4], [part("h", sel(1, 0)), part("h", sel(1, 2))]), ckpt).map(u16),
    ).toEqual([
      [BF[0], BF[3]],
      [BF[2], BF[5]],
    ]);
  });
});

describe("quantised weights and more layouts", () => {
  it("quantises to FP8 E4M3 with per-row scales amax / 448 (hand-encoded)", () => {
    const q = (output: "values" | "scales"): Transform => ({ op: "quantize", scheme: "fp8", output });
    // row 0 / (3/448): 149.3 → 144 = 0x71, 298.7 → 288 = 0x79, 448 = 0x7e; row 1 / (6/448): 298.7, 373.3 → 384 = 0x7c, 448
    const values = weight("fp8e4m3", [2, 3], [part("a")], [q("values")]);
    expect(Array.from(materializeWeight(values, ckpt))).toEqual([0x71, 0x79, 0x7e, 0x79, 0x7c, 0x7e]);
    expect(materializeSegments(values, ckpt).map((b) => Array.from(b))).toEqual([
      [0x71, 0x79, 0x7e, 0x79, 0x7c, 0x7e],
    ]);
    expect(f32(materializeWeight(weight("f32", [2], [part("a")], [q("scales")]), ckpt))).toEqual([
      Math.fround(3 / 448),
      Math.fround(6 / 448),
    ]);
    // a part's own quantize (applyTransform's case) gives the same
    expect(f32(materializeWeight(weight("f32", [2], [part("a", q("scales"))]), ckpt))).toEqual([
      Math.fround(3 / 448),
      Math.fround(6 / 448),
    ]);
  });

  it("concatenates 3-d parts; mixed source dtypes are decoded; the direct path returns a view", () => {
    expect(f32(materializeWeight(weight("f32", [4, 2, 2], [part("e"), part("e")]), ckpt))).toEqual([
      0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7,
    ]);
    expect(materializeF32(weight("f32", [3, 3], [part("a"), part("b")]), ckpt)).toEqual({
      shape: [3, 3],
      data: Float32Array.of(1, 2, 3, 4, 5, 6, 7, 8, 9),
    });
    expect(u16(materializeWeight(weight("bf16", [3, 3], [part("h"), part("b")]), ckpt))).toEqual([
      ...BF,
      0x40e0,
      0x4100,
      0x4110,
    ]);
    expect(u16(materializeWeight(weight("bf16", [3, 3], [part("b"), part("h")]), ckpt))).toEqual([
      0x40e0,
      0x4100,
      0x4110,
      ...BF,
    ]);
    expect(materializeWeight(weight("bf16", [2, 3], [part("h")]), ckpt).buffer).toBe(TENSORS.h.data.buffer);
    const segs = materializeSegments(weight("bf16", [2, 2, 3], [part("k"), part("k")]), ckpt);
    expect(segs.map(u16)).toEqual([BF, BF]);
    expect(segs.every((b) => b.buffer === TENSORS.k.data.buffer)).toBe(true);
    expect(u16(materializeWeight(weight("bf16", [2, 2, 3], [part("k"), part("k")]), ckpt))).toEqual([
      ...BF,
      ...BF,
    ]);
  });

  it("refuses, in materializeSegments as in materializeWeight, a weight without a recipe or a quantised dtype", () => {
    const v: Value = { id: 0, name: "w", dtype: "bf16", shape: [1], kind: "weight" };
    expect(() => materializeSegments(v, ckpt)).toThrow(exactly("weight w has no recipe"));
    const c: Value = { ...v, recipe: { kind: "constant", data: [2] } };
    expect(materializeSegments(c, ckpt).map(u16)).toEqual([[0x4000]]);
    expect(() => materializeSegments({ ...c, dtype: "fp8e4m3" }, ckpt)).toThrow(
      exactly("weights of dtype fp8e4m3 are produced by quantisation, not read directly"),
    );
    expect(() => materializeSegments(weight("fp8e4m3", [2, 3], [part("h")]), ckpt)).toThrow(
      exactly("weights of dtype fp8e4m3 are produced by quantisation, not read directly"),
    );
    expect(sourceRows(v, ckpt)).toBeNull();
    expect(sourceRows(weight("f32", [1, 2], [part("j")]), ckpt)).toBeNull();
  });
});

describe("sourceRows", () => {
  it("gives each part's rows in its stored dtype (views where it can), or null", () => {
    const rows = sourceRows(weight("f32", [5, 3], [part("h"), part("a"), part("g", sl(0, 1, 2))]), ckpt)!;
    expect(rows.map((r) => [r.dtype, r.rows, Array.from(r.data)])).toEqual([
      ["BF16", 2, BF],
      ["F32", 2, [1, 2, 3, 4, 5, 6]],
      ["F16", 1, HF.slice(3)],
    ]);
    expect(rows[0].data).toBeInstanceOf(Uint16Array);
    expect(rows[0].data.buffer).toBe(TENSORS.h.data.buffer);
    expect(rows[1].data).toBeInstanceOf(Float32Array);
    expect(
      sourceRows(weight("f32", [2, 2], [part("a", sl(1, 1, 3))]), ckpt)!.map((r) => Array.from(r.data)),
    ).toEqual([[2, 3, 5, 6]]);
    expect(
      sourceRows(weight("f32", [2, 2], [part("e", sel(0, 1))]), ckpt)!.map((r) => [
        r.rows,
        Array.from(r.data),
      ]),
    ).toEqual([[2, [4, 5, 6, 7]]]);
    expect(sourceRows(weight("f32", [2, 3], [part("a")], [sl(0, 0, 2)]), ckpt)).toBeNull();
    expect(sourceRows(weight("f32", [6], [part("a")]), ckpt)).toBeNull();
    expect(sourceRows(weight("f32", [2, 3, 1], [part("a")]), ckpt)).toBeNull();
    expect(sourceRows(weight("f32", [2, 2], [part("a")]), ckpt)).toBeNull();
    expect(sourceRows(weight("f32", [4, 2], [part("e")]), ckpt)).toBeNull();
    expect(sourceRows(weight("f32", [2, 1], [part("i")]), ckpt)).toBeNull();
    expect(sourceRows(weight("f32", [4, 3], [part("a"), part("i")]), ckpt)).toBeNull();
    const q: Transform = { op: "quantize", scheme: "fp8", output: "values" };
    expect(sourceRows(weight("f32", [2, 3], [part("a", q)]), ckpt)).toBeNull();
    expect(
      sourceRows(
        {
          id: 0,
          name: "w",
          dtype: "f32",
          shape: [1, 1],
          kind: "weight",
          recipe: { kind: "constant", data: [1] },
        },
        ckpt,
      ),
    ).toBeNull();
  });
});
