// The quantisation schemes and quant_linear's reference numerics, checked against direct formulas.
import { describe, expect, it } from "vitest";
import { activationFn } from "../../src/ops/activation-math.ts";
import { getOp, HostTensor } from "../../src/ops/index.ts";
import { roundToDtype, roundToTorchDtype, roundUpToDtype } from "../../src/ops/round.ts";
import { e4m3ToF32, f32ToE4m3, quantizeRowsE4m3 } from "../../src/quant/fp8.ts";
import {
  computeScales,
  decodeStored,
  dequantize,
  encodeStored,
  isQuantDtype,
  type QuantSpec,
  quantizeToBytes,
  quantizeValues,
  randomInits,
  rne,
  roundStored,
  scalesShape,
  storedDtype,
  storedShape,
  unpackValues,
} from "../../src/quant/weights.ts";
import { randomFill } from "../../src/weights/random.ts";

const N = 8;
const K = 64;
const w = randomFill(N * K, 7, 0, 0.05);
w[3] = 0.2; // an outlier in row 0, group 0
const ctx = {} as never;

function linear(x: Float32Array, wd: Float32Array, rows: number): Float32Array {
  const out = new Float32Array(rows * N);
  for (let r = 0; r < rows; r++)
    for (let j = 0; j < N; j++) {
      let acc = 0;
      for (let i = 0; i < K; i++) acc += x[r * K + i] * wd[j * K + i];
      out[r * N + j] = acc;
    }
  return out;
}

describe("weight quantisation", () => {
  it("rne rounds half to even", () => {
    expect([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 2.4, 2.6].map((v) => rne(v) + 0)).toEqual([
      -2, -2, 0, 0, 2, 2, 2, 3,
    ]);
  });

  it("int8-wo: per-channel scale amax/127, |w - q·s| ≤ s/2", () => {
    const spec: QuantSpec = { scheme: "int8-wo" };
    const s = computeScales(w, N, K, spec);
    expect(s[0]).toBe(Math.fround(0.2 / 127));
    const q = quantizeValues(w, N, K, spec);
    expect(decodeStored("i8", encodeStored("i8", q))).toEqual(q);
    const wd = dequantize(q, s, N, K, spec, "f32");
    for (let i = 0; i < w.length; i++)
      expect(Math.abs(w[i] - wd[i])).toBeLessThanOrEqual(s[Math.floor(i / K)] / 2 + 1e-9);
  });

  it("int4-wo: group-wise scales, two's complement nibbles packed low-first", () => {
    const spec: QuantSpec = { scheme: "int4-wo", groupSize: 16 };
    const s = computeScales(w, N, K, spec);
    expect(s.length).toBe(N * (K / 16));
    expect(s[0]).toBe(Math.fround(0.2 / 7));
    const packed = quantizeValues(w, N, K, spec);
    expect(packed.length).toBe((N * K) / 2);
    const q = unpackValues(packed, spec);
    for (let i = 0; i < w.length; i++) {
      const sc = s[Math.floor(i / K) * 4 + Math.floor((i % K) / 16)];
      expect(q[i]).toBe(Math.min(7, Math.max(-8, rne(Math.fround(w[i] / sc)))));
    }
    expect(q[3]).toBe(7);
    expect(packed[1] & 0xf).toBe(q[2] & 0xf);
    expect(packed[1] >> 4).toBe(q[3] & 0xf);
    expect(decodeStored("u8", encodeStored("u8", packed))).toEqual(packed);
  });

  it("weight-only dequantisation rounds fp32(q·s) to the compute dtype", () => {
    const spec: QuantSpec = { scheme: "int8-wo" };
    const s = computeScales(w, N, K, spec);
    const q = quantizeValues(w, N, K, spec);
    const f16 = dequantize(q, s, N, K, spec, "f16");
    const f32 = dequantize(q, s, N, K, spec, "f32");
    let differs = 0;
    for (let i = 0; i < f16.length; i++) {
      expect(Math.abs(f16[i] - f32[i])).toBeLessThanOrEqual(Math.abs(f32[i]) * 2 ** -11);
      if (f16[i] !== f32[i]) differs++;
    }
    expect(differs).toBeGreaterThan(0);
  });

  it("fp8: per-channel scale amax/448, values are E4M3 codes", () => {
    const spec: QuantSpec = { scheme: "fp8" };
    const s = computeScales(w, N, K, spec);
    expect(s[0]).toBe(Math.fround(0.2 / 448));
    const q = quantizeValues(w, N, K, spec);
    expect(q[3]).toBe(448);
    for (let i = 0; i < q.length; i++)
      expect(q[i]).toBe(e4m3ToF32(f32ToE4m3(Math.fround(w[i] / s[Math.floor(i / K)]))));
    expect(decodeStored("fp8e4m3", encodeStored("fp8e4m3", q))).toEqual(q);
  });
});

describe("quantised layouts", () => {
  it("stored dtype and shapes per scheme; int4-wo refuses a missing group size", () => {
    expect(["fp8", "int8-wo", "int4-wo"].map((q) => storedDtype(q as never))).toEqual([
      "fp8e4m3",
      "i8",
      "u8",
    ]);
    expect(storedShape({ scheme: "int4-wo", groupSize: 32 }, 8, 64)).toEqual([8, 32]);
    expect(storedShape({ scheme: "int8-wo" }, 8, 64)).toEqual([8, 64]);
    expect(scalesShape({ scheme: "int4-wo", groupSize: 16 }, 8, 64)).toEqual([8, 4]);
    expect(scalesShape({ scheme: "fp8" }, 8, 64)).toEqual([8]);
    expect(() => scalesShape({ scheme: "int4-wo" }, 8, 64)).toThrow("int4-wo needs a group size");
    expect(["fp8e4m3", "i8", "u8", "f32", "f16", "bf16", "i32"].map((d) => isQuantDtype(d as never))).toEqual(
      [true, true, true, false, false, false, false],
    );
    expect(() => encodeStored("f16", new Float32Array(1))).toThrow("no quantised encoding for dtype f16");
    expect(() => decodeStored("f32", new Uint8Array(4))).toThrow("no quantised decoding for dtype f32");
  });

  it("an all-zero row or group gets scale 1 and zero codes", () => {
    const z = new Float32Array(2 * 32);
    z.fill(0.5, 32, 48); // row 1, first group of 16 only
    for (const spec of [
      { scheme: "int8-wo" },
      { scheme: "fp8" },
      { scheme: "int4-wo", groupSize: 16 },
    ] as QuantSpec[]) {
      const s = computeScales(z, 2, 32, spec);
      expect(s[0]).toBe(1);
      const q = unpackValues(quantizeValues(z, 2, 32, spec), spec);
      expect(q.slice(0, 32).every((v) => v === 0)).toBe(true);
    }
    expect(Array.from(computeScales(z, 2, 32, { scheme: "int4-wo", groupSize: 16 }))).toEqual([
      1,
      1,
      Math.fround(0.5 / 7),
      1,
    ]);
  });

  it("int8-wo codes span -127..127 (never -128); int4-wo nibbles -7..7 at the group extremes", () => {
    const row = Float32Array.from({ length: 32 }, (_, i) => (i - 16) / 16); // -1 … 0.9375
    const q8 = quantizeValues(row, 1, 32, { scheme: "int8-wo" });
    expect(q8[0]).toBe(-127);
    expect(Math.min(...q8)).toBe(-127);
    const bytes = quantizeToBytes(row, 1, 32, { scheme: "int4-wo", groupSize: 16 });
    const q4 = unpackValues(Float32Array.from(bytes), { scheme: "int4-wo", groupSize: 16 });
    expect(q4[0]).toBe(-7); // -1 / (1/7)
    expect(q4[16]).toBe(0);
    expect(q4[31]).toBe(7);
  });

  it("scales: amax of each row (int8-wo, fp8) or group (int4-wo) over qmax, computed here independently", () => {
    const ww = Float32Array.from(w);
    for (let r = 0; r < N; r++) ww[r * K + 16 * (r % 4)] = -(0.3 + r / 10); // each row's outlier starts a group
    for (const [spec, qmax, G] of [
      [{ scheme: "int8-wo" }, 127, K],
      [{ scheme: "fp8" }, 448, K],
      [{ scheme: "int4-wo", groupSize: 16 }, 7, 16],
    ] as [QuantSpec, number, number][]) {
      const want: number[] = [];
      for (let r = 0; r < N; r++)
        for (let g = 0; g < K / G; g++) {
          const group = Array.from(ww.subarray(r * K + g * G, r * K + (g + 1) * G), Math.abs);
          want.push(Math.fround(Math.max(...group) / qmax));
        }
      expect(Array.from(computeScales(ww, N, K, spec))).toEqual(want);
    }
  });

  it("roundToTorchDtype: float16 and bfloat16 round (RNE), other names leave fp32 values", () => {
    const x = 1 + 2 ** -9 + 2 ** -12; // between f16 and bf16 steps
    for (const [name, want] of [
      ["float16", 1 + 2 ** -9],
      ["bfloat16", 1],
      ["float32", Math.fround(x)],
    ] as const) {
      const a = Float32Array.from([x, -x]);
      roundToTorchDtype(a, name);
      expect(Array.from(a)).toEqual([want, -want]);
    }
  });

  it("roundStored rounds random values onto each stored dtype's codes", () => {
    const v = Float32Array.from([-300, -128.5, -2.5, -0.4, 0.5, 1.5, 254.5, 255.6, 400]);
    const i8 = Float32Array.from(v);
    roundStored(i8, "i8");
    expect(Array.from(i8)).toEqual([-128, -128, -2, 0, 0, 2, 127, 127, 127]);
    const u8 = Float32Array.from(v);
    roundStored(u8, "u8");
    expect(Array.from(u8)).toEqual([0, 0, 0, 0, 0, 2, 254, 255, 255]);
    const f8 = Float32Array.from(v);
    roundStored(f8, "fp8e4m3");
    expect(Array.from(f8)).toEqual(Array.from(v, (x) => e4m3ToF32(f32ToE4m3(x))));
    const f = Float32Array.from(v);
    roundStored(f, "f32");
    expect(Array.from(f)).toEqual(Array.from(v));
  });

  it("random-weight inits in the quantised layout: codes over the full range, scale a/qmax", () => {
    const init = { mean: 0, scale: 0.7 };
    expect(randomInits({ scheme: "int8-wo" }, init)).toEqual({
      weight: { mean: 0, scale: 127 },
      scales: { mean: 0.7 / 127, scale: 0 },
    });
    expect(randomInits({ scheme: "fp8" }, init)).toEqual({
      weight: { mean: 0, scale: 448 },
      scales: { mean: 0.7 / 448, scale: 0 },
    });
    expect(randomInits({ scheme: "int4-wo", groupSize: 32 }, init)).toEqual({
      weight: { mean: 127.5, scale: 128 },
      scales: { mean: 0.7 / 7, scale: 0 },
    });
    expect(randomInits({ scheme: "int8-wo" }, { mean: 0, scale: 0 }).scales).toEqual({ mean: 1, scale: 0 });
  });
});

/**
 * Every finite value of f16 / bf16, ascending, from the formats' definitions (sign, exponent bias 15 / 127,
 * 10 / 7 mantissa bits, subnormals at the lowest exponent): an oracle independent of src/ops/round.ts.
 */
function allValues(dtype: "f16" | "bf16"): number[] {
  const [mant, bias, maxExp] = dtype === "f16" ? [10, 15, 30] : [7, 127, 254];
  const pos: number[] = [];
  for (let e = 0; e <= maxExp; e++)
    for (let m = 0; m < 2 ** mant; m++)
      pos.push(e === 0 ? m * 2 ** (1 - bias - mant) : (1 + m / 2 ** mant) * 2 ** (e - bias));
  return [
    ...pos
      .slice(1)
      .map((v) => -v)
      .reverse(),
    ...pos,
  ];
}

/** Index of the smallest value of `sorted` >= x (sorted.length when none). */
function firstAtLeast(sorted: number[], x: number): number {
  let [lo, hi] = [0, sorted.length];
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (sorted[mid] >= x) hi = mid;
    else lo = mid + 1;
  }
  return lo;
}

describe("weight-only scales rounded up to the activation dtype", () => {
  const tables = { f16: allValues("f16"), bf16: allValues("bf16") };
  const representable = (v: number, dtype: "f16" | "bf16") => {
    const a = Float32Array.of(v);
    roundToDtype(a, dtype);
    return a[0] === v;
  };
  // Rows of one magnitude each, from 1e-12 (below f16's subnormals once divided by qmax) to 1e8 (past
  // f16's 65504 once divided by 127), each with its own random mantissas.
  const R = 48;
  const KK = 64;
  const ws = randomFill(R * KK, 21, 0, 1);
  for (let r = 0; r < R; r++)
    for (let i = 0; i < KK; i++)
      ws[r * KK + i] = Math.fround(ws[r * KK + i] * 10 ** (-12 + r * (20 / (R - 1))));

  it("roundUpToDtype is the smallest value of the dtype >= fround(x), for either sign, ±0 and beyond the range", () => {
    // Magnitudes 1e-45 .. 1e37 (fp32's range), both signs.
    const xs = [...randomFill(2000, 3, 0, 1)].map((u, i) => u * 10 ** ((i % 83) - 45));
    xs.push(0, -0, 1e-30, -1e-30, 65504, 65505, 65520, 1e5, -1e5, 2 ** -24, 2 ** -25, 3.3e38, 3.4e38);
    for (const dtype of ["f16", "bf16"] as const) {
      const t = tables[dtype];
      for (const x of xs) {
        const f = Math.fround(x);
        const i = firstAtLeast(t, f);
        const want = i < t.length ? t[i] : Infinity;
        expect(
          roundUpToDtype(x, dtype) === want,
          `${dtype} ${x}: ${roundUpToDtype(x, dtype)} vs ${want}`,
        ).toBe(true);
      }
      expect(roundUpToDtype(Number.NaN, dtype)).toBeNaN();
    }
  });

  for (const [scheme, qmax, groupSize] of [
    ["int8-wo", 127, undefined],
    ["int4-wo", 7, 16],
  ] as const)
    for (const dtype of ["f16", "bf16"] as const)
      it(`${scheme} ${dtype}: each scale is the smallest ${dtype} >= fround(amax/${qmax}) (fp32 where none is finite); codes need no clamping`, () => {
        const spec: QuantSpec = { scheme, groupSize, scaleDtype: dtype };
        const G = groupSize ?? KK;
        const s = computeScales(ws, R, KK, spec);
        const t = tables[dtype];
        let [rounded, overflow] = [0, 0];
        for (let r = 0; r < R; r++)
          for (let g = 0; g < KK / G; g++) {
            const amax = Math.max(...Array.from(ws.subarray(r * KK + g * G, r * KK + (g + 1) * G), Math.abs));
            const s32 = Math.fround(amax / qmax);
            const v = s[r * (KK / G) + g];
            const i = firstAtLeast(t, s32);
            if (i === t.length) {
              expect(v).toBe(s32); // overflow: the f32 scale
              overflow++;
              continue;
            }
            expect(representable(v, dtype)).toBe(true);
            expect(v).toBeGreaterThanOrEqual(s32);
            expect(t[i - 1]).toBeLessThan(s32); // the previous representable value would be too small
            expect(v).toBe(t[i]);
            if (v !== s32) rounded++;
          }
        expect(rounded).toBeGreaterThan(0);
        if (dtype === "f16") expect(overflow).toBeGreaterThan(0);
        // Every quotient fround(w/s) is within ±qmax (up to fp32 rounding of amax/qmax and of the quotient:
        // s >= fround(amax/qmax)), so its rne is a code of the range and none is clamped.
        const q = unpackValues(quantizeValues(ws, R, KK, spec), spec);
        for (let i = 0; i < ws.length; i++) {
          const sc = s[Math.floor(i / KK) * (KK / G) + Math.floor((i % KK) / G)];
          const y = Math.fround(ws[i] / sc);
          expect(Math.abs(y)).toBeLessThanOrEqual(qmax * (1 + 2 ** -22));
          expect(q[i]).toBe(rne(y) + 0);
          expect(Math.abs(q[i])).toBeLessThanOrEqual(qmax);
        }
      });

  it("random-weight scales: the constant a/qmax rounded up the same way (the f32 value where f16 overflows); fp8 refuses a scale dtype", () => {
    const init = { mean: 0, scale: 0.7 };
    for (const dtype of ["f16", "bf16"] as const)
      for (const [scheme, qmax] of [
        ["int8-wo", 127],
        ["int4-wo", 7],
      ] as const) {
        const t = tables[dtype];
        const { mean, scale } = randomInits({ scheme, groupSize: 32, scaleDtype: dtype }, init).scales;
        expect([mean, scale]).toEqual([t[firstAtLeast(t, Math.fround(0.7 / qmax))], 0]);
        expect(representable(mean, dtype)).toBe(true);
        expect(mean).not.toBe(0.7 / qmax);
      }
    // a/qmax past f16's largest finite value (1e7 / 127 > 65504): the f32 scale, fround(a/qmax), as
    // computeScales stores an overflowing one (a/qmax itself is not an f32 value); bf16 still rounds up.
    const big = { mean: 0, scale: 1e7 };
    const big32 = Math.fround(1e7 / 127);
    expect(big32).not.toBe(1e7 / 127);
    expect(randomInits({ scheme: "int8-wo", scaleDtype: "f16" }, big).scales.mean).toBe(big32);
    expect(randomInits({ scheme: "int8-wo", scaleDtype: "bf16" }, big).scales.mean).toBe(
      tables.bf16[firstAtLeast(tables.bf16, big32)],
    );
    expect(() => randomInits({ scheme: "fp8", scaleDtype: "f16" }, init)).toThrow(
      "fp8 scales stay f32 (they multiply the fp32 accumulator), not f16",
    );
    expect(() => computeScales(w, N, K, { scheme: "fp8", scaleDtype: "bf16" })).toThrow(
      "fp8 scales stay f32 (they multiply the fp32 accumulator), not bf16",
    );
  });
});

describe("quant_linear reference numerics", () => {
  const rows = 3;
  const x = randomFill(rows * K, 11, 0, 2);
  x.fill(0, 2 * K, 3 * K); // an all-zero token: scale 1
  const bias = randomFill(N, 3, 0, 0.1);

  it("fp8: x quantised per token (amax/448, RNE, saturating), y = fp32(acc · fp32(s_x·s_w)) + bias", () => {
    const spec: QuantSpec = { scheme: "fp8" };
    const sw = computeScales(w, N, K, spec);
    const wq = quantizeValues(w, N, K, spec);
    const [y] = getOp("quant_linear").ref(
      [
        new HostTensor([rows, K], x),
        new HostTensor([N, K], wq),
        new HostTensor([N], sw),
        new HostTensor([N], bias),
      ],
      { quant: "fp8", activation: "none" },
      ctx,
    );
    for (let r = 0; r < rows; r++) {
      let amax = 0;
      for (let i = 0; i < K; i++) amax = Math.max(amax, Math.abs(x[r * K + i]));
      const sx = amax ? Math.fround(amax / 448) : 1;
      for (let j = 0; j < N; j++) {
        let acc = 0;
        for (let i = 0; i < K; i++)
          acc += e4m3ToF32(f32ToE4m3(Math.fround(x[r * K + i] / sx))) * wq[j * K + i];
        const want = Math.fround(Math.fround(Math.fround(acc) * Math.fround(sx * sw[j])) + bias[j]);
        expect(y.f32[r * N + j]).toBe(want);
      }
    }
    // and it is close to the unquantised product
    const exact = linear(x, w, rows);
    for (let i = 0; i < exact.length; i++)
      expect(Math.abs(y.f32[i] - bias[i % N] - exact[i])).toBeLessThan(0.05);
  });

  // An oracle independent of src/quant/weights.ts (which quant_linear's reference uses): the packed
  // bytes and group scales decoded here from the layout's definition, the product taken in fp64.
  it("fp8 activations: each row's scale is its own amax / 448 (all-zero rows: 1)", () => {
    const xs = Float32Array.from([0.5, -1, 0.25, 0, 0, 0, 9, 1, -2]); // row 2's 9 follows row 1
    const { q, scales } = quantizeRowsE4m3(xs, 3, 3);
    expect(Array.from(scales)).toEqual([Math.fround(1 / 448), 1, Math.fround(9 / 448)]);
    expect(Array.from(q.subarray(0, 3))).toEqual([224, -448, 112]);
    expect(q[6]).toBe(448);
  });

  it("int8-wo with the epilogue: act(x·fp32(q·s)ᵀ rounded to compute_dtype + bias) + residual", () => {
    const spec: QuantSpec = { scheme: "int8-wo" };
    const s = computeScales(w, N, K, spec);
    const q = quantizeValues(w, N, K, spec);
    const res = randomFill(rows * N, 5, 0, 1);
    for (const [dtype, act] of [
      ["f32", "silu"],
      ["f16", "none"],
      ["bf16", "gelu_tanh"],
    ] as const) {
      const [y] = getOp("quant_linear").ref(
        [
          new HostTensor([1, rows, K], x),
          new HostTensor([N, K], q),
          new HostTensor([N], s),
          new HostTensor([N], bias),
          new HostTensor([1, rows, N], res),
        ],
        { quant: "int8-wo", activation: act, compute_dtype: dtype },
        ctx,
      );
      expect(y.shape).toEqual([1, rows, N]);
      const wd = Float32Array.from({ length: N * K }, (_, i) => Math.fround(q[i] * s[Math.floor(i / K)]));
      roundToTorchDtype(wd, dtype === "f16" ? "float16" : dtype === "bf16" ? "bfloat16" : "float32");
      const f = activationFn(act);
      let worst = 0;
      for (let r = 0; r < rows; r++)
        for (let j = 0; j < N; j++) {
          let acc = 0;
          for (let i = 0; i < K; i++) acc += x[r * K + i] * wd[j * K + i];
          const want = f(Math.fround(acc) + bias[j]) + res[r * N + j];
          worst = Math.max(worst, Math.abs(y.f32[r * N + j] - want));
        }
      expect(worst).toBeLessThanOrEqual(3e-7); // fp32 storage between the steps; measured ≤ 7.5e-8
    }
    expect(() =>
      getOp("quant_linear").ref(
        [new HostTensor([rows, K], x), new HostTensor([N, K], q), new HostTensor([N], s)],
        { quant: "int3" },
        ctx,
      ),
    ).toThrow('quant_linear: unknown quant "int3"');
    // No activation / compute_dtype attributes: none and f32.
    const [plain] = getOp("quant_linear").ref(
      [new HostTensor([rows, K], x), new HostTensor([N, K], q), new HostTensor([N], s)],
      { quant: "int8-wo" },
      ctx,
    );
    const [explicit] = getOp("quant_linear").ref(
      [new HostTensor([rows, K], x), new HostTensor([N, K], q), new HostTensor([N], s)],
      { quant: "int8-wo", activation: "none", compute_dtype: "f32" },
      ctx,
    );
    expect(Array.from(plain.f32)).toEqual(Array.from(explicit.f32));
    expect(plain.f32.some((v) => v < 0)).toBe(true); // no activation applied
  });

  it("quant_linear infer: int4-wo stores K/2 bytes per row; input features, bias and residual are checked", () => {
    const v = (shape: number[], dtype = "f32") => ({ dtype: dtype as never, shape });
    const infer = (inputs: ReturnType<typeof v>[], attrs: Record<string, unknown>) =>
      getOp("quant_linear").infer(inputs, attrs as never);
    const int4 = { quant: "int4-wo", group_size: 32 };
    expect(infer([v([3, 64], "f16"), v([8, 32], "u8"), v([8, 2])], int4)).toEqual([v([3, 8], "f16")]);
    expect(infer([v([3, 64]), v([8, 64], "i8"), v([8]), v([8]), v([3, 8])], { quant: "int8-wo" })).toEqual([
      v([3, 8]),
    ]);
    expect(() => infer([v([3, 32]), v([8, 32], "u8"), v([8, 1])], int4)).toThrow(
      "quant_linear: input features is 32, expected 64",
    );
    expect(() => infer([v([3, 64]), v([8, 64], "i8"), v([8]), v([4])], { quant: "int8-wo" })).toThrow(
      "quant_linear: bias length is 4, expected 8",
    );
    expect(() =>
      infer([v([3, 64]), v([8, 64], "i8"), v([8]), null as never, v([3, 5])], { quant: "fp8" }),
    ).toThrow("quant_linear: residual width is 5, expected 8");
    expect(() => infer([v([3, 64]), null as never, v([8])], { quant: "fp8" })).toThrow(
      "quant_linear: missing input w",
    );
    expect(() => infer([null as never, v([8, 64], "i8"), v([8])], { quant: "fp8" })).toThrow(
      "quant_linear: missing input x",
    );
    expect(() => infer([v([3, 64]), v([8, 64], "i8"), null as never], { quant: "fp8" })).toThrow(
      "quant_linear: missing input scales",
    );
    expect(() => infer([v([3, 64]), v([8, { sym: "n" } as never], "i8"), v([8])], { quant: "fp8" })).toThrow(
      "quant_linear: weight dims must be static",
    );
  });

  it("int4-wo: matches an fp64 linear over weights decoded here from the packed bytes", () => {
    const G = 32;
    const spec: QuantSpec = { scheme: "int4-wo", groupSize: G };
    const s = computeScales(w, N, K, spec);
    const packed = quantizeValues(w, N, K, spec);
    const [y] = getOp("quant_linear").ref(
      [new HostTensor([rows, K], x), new HostTensor([N, K / 2], packed), new HostTensor([N, K / G], s)],
      { quant: "int4-wo", group_size: G, activation: "none", compute_dtype: "f32" },
      ctx,
    );
    const wd = decodeInt4(packed, s, G);
    let worst = 0;
    for (let r = 0; r < rows; r++)
      for (let j = 0; j < N; j++) {
        let want = 0;
        let mag = 0;
        for (let i = 0; i < K; i++) {
          want += x[r * K + i] * wd[j * K + i];
          mag += Math.abs(x[r * K + i] * wd[j * K + i]);
        }
        // The kernel's numerics round each dequantised weight to fp32 (≤ 2^-24 relative) and the sum
        // to fp32, so at worst 2^-23 ≈ 1.2e-7 of Σ|x·w|. Measured worst |Δ| / Σ|x·w|: 1.22e-8.
        const d = Math.abs(y.f32[r * N + j] - want);
        worst = Math.max(worst, mag ? d / mag : d);
        expect(d).toBeLessThanOrEqual(3e-8 * mag);
      }
    console.log(`int4-wo vs fp64 oracle: worst |Δ| / Σ|x·w| ${worst.toExponential(2)}`);
    // The decoded weights are the quantised originals: each within half a step of its group's scale.
    for (let i = 0; i < w.length; i++) {
      const sc = s[Math.floor(i / K) * (K / G) + Math.floor((i % K) / G)];
      expect(Math.abs(wd[i] - w[i])).toBeLessThanOrEqual(sc / 2 + 1e-9);
    }
  });
});

/**
 * int4-wo weights from first principles (docs of src/quant/weights.ts): element k of a row is in byte
 * k/2 — the low nibble when k is even, the high one when odd — as a 4-bit two's complement integer,
 * times the f32 scale of its group of G along K. In fp64, not through any project code.
 */
function decodeInt4(packed: Float32Array, scales: Float32Array, G: number): Float64Array {
  const out = new Float64Array(N * K);
  for (let n = 0; n < N; n++)
    for (let k = 0; k < K; k++) {
      const byte = packed[n * (K / 2) + Math.floor(k / 2)];
      expect(Number.isInteger(byte) && byte >= 0 && byte <= 255).toBe(true);
      const nibble = k % 2 === 0 ? byte % 16 : Math.floor(byte / 16);
      const q = nibble >= 8 ? nibble - 16 : nibble;
      out[n * K + k] = q * scales[n * (K / G) + Math.floor(k / G)];
    }
  return out;
}
