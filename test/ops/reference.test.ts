// The ops' CPU reference semantics (src/ops/) against the textbook formulas, computed here in fp64 on
// small random inputs: what the goldens check only in aggregate (and only for the paths the two
// fixtures take) is checked op by op — both rope styles and partial rotary, GQA, biases, epilogues, eps.
import { describe, expect, it } from "vitest";
import type { Attrs } from "../../src/ir/types.ts";
import { activationFn, applyActivation } from "../../src/ops/activation-math.ts";
import { getOp, HostTensor, type RefContext } from "../../src/ops/index.ts";
import { randomFill } from "../../src/weights/random.ts";

// The ops keep fp32 values (and rope fp32 angles, cos and sin); every oracle here is fp64, so results
// differ by output rounding: measured max |Δ| 1.1e-7 (linear), ≤ 8.8e-8 for every other op.
const TOL = 3e-7;

const t = (shape: number[], data: number[] | Float32Array) => new HostTensor(shape, Float32Array.from(data));
const ids = (data: number[]) => new HostTensor([data.length], Int32Array.from(data));
const rand = (n: number, seed: number, scale = 1) => randomFill(n, seed, 0, scale);

function run(op: string, inputs: (HostTensor | null)[], attrs: Attrs = {}, ctx = {} as RefContext) {
  return getOp(op).ref(inputs, attrs, ctx);
}

/** max |a - b| over two equal-length arrays (Infinity on a length mismatch). */
function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) return Infinity;
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

describe("activations", () => {
  // 0.5·x·(1 + erf(x/√2)) from Python's math.erf (correctly rounded to ~1 ulp), both branches of our erf
  // (|x/√2| < 2.5: series; beyond: continued fraction) and both signs.
  const GELU_ERF: [number, number][] = [
    [-4, -0.00012668496733247991],
    [-1, -0.15865525393145707],
    [-0.3, -0.1146265733433142],
    [0, 0],
    [0.5, 0.34573123063700656],
    [1, 0.8413447460685429],
    [2, 1.9544997361036416],
    [3.6, 3.599427209075433],
    [4, 3.9998733150326675],
    [6, 5.999999994080474],
  ];

  it("gelu (erf) matches math.erf's values to 1e-15 on both branches", () => {
    const f = activationFn("gelu");
    const d = Math.max(...GELU_ERF.map(([x, want]) => Math.abs(f(x) - want))); // measured 2.2e-16
    expect(d).toBeLessThanOrEqual(1e-15);
  });

  it("silu and gelu_tanh are the formulas; none is the identity; unknown names are refused", () => {
    for (const x of [-6, -1.5, -0.25, 0, 0.7, 3]) {
      expect(activationFn("silu")(x)).toBeCloseTo(x / (1 + Math.exp(-x)), 15);
      const inner = Math.sqrt(2 / Math.PI) * (x + 0.044715 * x ** 3);
      expect(activationFn("gelu_tanh")(x)).toBeCloseTo(0.5 * x * (1 + Math.tanh(inner)), 15);
      expect(activationFn("none")(x)).toBe(x);
    }
    expect(() => activationFn("relu")).toThrow(
      'unknown activation "relu" (known: none, silu, gelu_tanh, gelu)',
    );
    const a = Float32Array.from([-1, 2]);
    applyActivation(a, "none");
    expect(Array.from(a)).toEqual([-1, 2]);
    applyActivation(a, "silu");
    expect(a[0]).toBe(Math.fround(-1 / (1 + Math.E)));
  });
});

describe("elementwise", () => {
  const a = rand(12, 1);
  const b = rand(12, 2);
  it("add, mul, silu, gelu (tanh by default, erf with approximate none)", () => {
    expect(Array.from(run("add", [t([3, 4], a), t([3, 4], b)])[0].f32)).toEqual(
      Array.from(a, (v, i) => Math.fround(v + b[i])),
    );
    expect(Array.from(run("mul", [t([3, 4], a), t([3, 4], b)])[0].f32)).toEqual(
      Array.from(a, (v, i) => Math.fround(v * b[i])),
    );
    for (const [op, attrs, act] of [
      ["silu", {}, "silu"],
      ["gelu", {}, "gelu_tanh"],
      ["gelu", { approximate: "tanh" }, "gelu_tanh"],
      ["gelu", { approximate: "none" }, "gelu"],
    ] as const) {
      const [y] = run(op, [t([3, 4], a)], attrs);
      expect(y.shape).toEqual([3, 4]);
      expect(Array.from(y.f32)).toEqual(Array.from(a, (v) => Math.fround(activationFn(act)(v))));
    }
  });

  it("sub, div, tanh, sigmoid, exp, scale, softcap", () => {
    const pos = Float32Array.from(b, (v) => Math.abs(v) + 0.5);
    const same = (y: HostTensor, f: (v: number, i: number) => number) => {
      expect(y.shape).toEqual([3, 4]);
      expect(Array.from(y.f32)).toEqual(Array.from(a, (v, i) => Math.fround(f(v, i))));
    };
    same(run("sub", [t([3, 4], a), t([3, 4], b)])[0], (v, i) => v - b[i]);
    same(run("div", [t([3, 4], a), t([3, 4], pos)])[0], (v, i) => v / pos[i]);
    same(run("tanh", [t([3, 4], a)])[0], Math.tanh);
    same(run("sigmoid", [t([3, 4], a)])[0], (v) => 1 / (1 + Math.exp(-v)));
    same(run("exp", [t([3, 4], a)])[0], Math.exp);
    same(run("scale", [t([3, 4], a)], { factor: 2.5 })[0], (v) => v * 2.5);
    same(run("softcap", [t([3, 4], a)], { cap: 0.3 })[0], (v) => 0.3 * Math.tanh(v / 0.3));
    const x = { dtype: "f32" as const, shape: [3, 4] };
    expect(() => getOp("softcap").infer([x], { cap: 0 })).toThrow("softcap: cap must be > 0, got 0");
    expect(() => getOp("scale").infer([x], {})).toThrow('attribute "factor" must be a number, got undefined');
    expect(() => getOp("sub").infer([x, { dtype: "f32", shape: [4, 3] }], {})).toThrow(
      "sub: shapes [3,4] and [4,3] differ",
    );
  });

  it("gated_act: act(first half) · second half of each row", () => {
    const x = rand(2 * 6, 3, 2);
    for (const act of ["silu", "gelu_tanh", "gelu"]) {
      const [y] = run("gated_act", [t([2, 6], x)], { activation: act });
      expect(y.shape).toEqual([2, 3]);
      const want: number[] = [];
      for (let r = 0; r < 2; r++)
        for (let i = 0; i < 3; i++) want.push(activationFn(act)(x[r * 6 + i]) * x[r * 6 + 3 + i]);
      expect(maxDiff(y.f32, want)).toBeLessThanOrEqual(TOL);
    }
    expect(() => getOp("gated_act").infer([{ dtype: "f32", shape: [2, 5] }], { activation: "silu" })).toThrow(
      "gated_act: last dim must be an even number",
    );
    expect(getOp("gated_act").infer([{ dtype: "f16", shape: [2, 6] }], { activation: "silu" })).toEqual([
      { dtype: "f16", shape: [2, 3] },
    ]);
  });
});

describe("norms", () => {
  const H = 8;
  const rows = 3;
  // Row 2 is tiny, so eps (1e-3 here) visibly changes its result.
  const x = rand(rows * H, 5, 2);
  for (let i = 2 * H; i < 3 * H; i++) x[i] *= 1e-3;
  const r = rand(rows * H, 6);
  const w = rand(H, 7, 1);
  const bias = rand(H, 8, 0.5);
  const eps = 1e-3;

  function rmsRef(v: ArrayLike<number>): number[] {
    const out: number[] = [];
    for (let row = 0; row < rows; row++) {
      const xs = Array.from({ length: H }, (_, i) => v[row * H + i]);
      const rms = Math.sqrt(xs.reduce((a, b) => a + b * b, 0) / H + eps);
      out.push(...xs.map((u, i) => (u / rms) * w[i]));
    }
    return out;
  }
  function lnRef(v: ArrayLike<number>, b: Float32Array | null): number[] {
    const out: number[] = [];
    for (let row = 0; row < rows; row++) {
      const xs = Array.from({ length: H }, (_, i) => v[row * H + i]);
      const mean = xs.reduce((a, c) => a + c, 0) / H;
      const variance = xs.reduce((a, c) => a + (c - mean) ** 2, 0) / H;
      out.push(...xs.map((u, i) => ((u - mean) / Math.sqrt(variance + eps)) * w[i] + (b ? b[i] : 0)));
    }
    return out;
  }
  const sum = Float32Array.from(x, (v, i) => v + r[i]);

  it("rms_norm and add_rms_norm (which also returns the sum)", () => {
    const [y] = run("rms_norm", [t([rows, H], x), t([H], w)], { eps });
    expect(maxDiff(y.f32, rmsRef(x))).toBeLessThanOrEqual(TOL);
    const [n, s] = run("add_rms_norm", [t([rows, H], x), t([rows, H], r), t([H], w)], { eps });
    expect(Array.from(s.f32)).toEqual(Array.from(sum));
    expect(maxDiff(n.f32, rmsRef(sum))).toBeLessThanOrEqual(TOL);
  });

  it("layer_norm and add_layer_norm, with and without bias", () => {
    for (const b of [bias, null]) {
      const [y] = run("layer_norm", [t([rows, H], x), t([H], w), b && t([H], b)], { eps });
      expect(maxDiff(y.f32, lnRef(x, b))).toBeLessThanOrEqual(TOL);
      const [n, s] = run("add_layer_norm", [t([rows, H], x), t([rows, H], r), t([H], w), b && t([H], b)], {
        eps,
      });
      expect(Array.from(s.f32)).toEqual(Array.from(sum));
      expect(maxDiff(n.f32, lnRef(sum, b))).toBeLessThanOrEqual(TOL);
    }
  });

  it("weight_offset: the norms scale by (w + offset), as Gemma's 1 + w", () => {
    const w1 = Float32Array.from(w, (v) => v + 1);
    const [y] = run("rms_norm", [t([rows, H], x), t([H], w)], { eps, weight_offset: 1 });
    const [want] = run("rms_norm", [t([rows, H], x), t([H], w1)], { eps });
    expect(Array.from(y.f32)).toEqual(Array.from(want.f32));
    const [l] = run("layer_norm", [t([rows, H], x), t([H], w), t([H], bias)], { eps, weight_offset: 1 });
    const [lw] = run("layer_norm", [t([rows, H], x), t([H], w1), t([H], bias)], { eps });
    expect(Array.from(l.f32)).toEqual(Array.from(lw.f32));
  });

  it("infer: the weight must match the normalised width; the fused forms need a same-shape residual", () => {
    const v = (shape: number[]) => ({ dtype: "f32" as const, shape });
    expect(() => getOp("rms_norm").infer([v([2, 8]), v([6])], { eps })).toThrow(
      "rms_norm: normalised width is 8, expected 6",
    );
    expect(() => getOp("add_layer_norm").infer([v([2, 8]), v([3, 8]), v([8])], { eps })).toThrow(
      "add_layer_norm: shapes [2,8] and [3,8] differ",
    );
    expect(() => getOp("layer_norm").infer([v([2, 8]), v([4])], { eps })).toThrow(
      "layer_norm: normalised width is 8, expected 4",
    );
    expect(() => getOp("rms_norm").infer([null, v([8])], { eps })).toThrow("rms_norm: missing input x");
    expect(() => getOp("layer_norm").infer([v([2, 8]), null], { eps })).toThrow(
      "layer_norm: missing input weight",
    );
    expect(() => getOp("add_rms_norm").infer([v([2, 8]), null, v([8])], { eps })).toThrow(
      "add_rms_norm: missing input residual",
    );
    expect(() => getOp("add_rms_norm").infer([v([2, 8]), v([2, 4]), v([8])], { eps })).toThrow(
      "add_rms_norm: shapes [2,8] and [2,4] differ",
    );
    expect(() => getOp("add_layer_norm").infer([v([2, 8]), null, v([8])], { eps })).toThrow(
      "add_layer_norm: missing input residual",
    );
    expect(() => getOp("add_layer_norm").infer([v([2, 8]), v([2, 8]), v([6])], { eps })).toThrow(
      "add_layer_norm: normalised width is 8, expected 6",
    );
    expect(getOp("add_rms_norm").infer([v([2, 8]), v([2, 8]), v([8])], { eps })).toEqual([
      v([2, 8]),
      v([2, 8]),
    ]);
  });
});

describe("linear", () => {
  const K = 6;
  const N = 5;
  const x = rand(2 * 3 * K, 11);
  const w = rand(N * K, 12);
  const b = rand(N, 13);
  const res = rand(2 * 3 * N, 14);

  it("act(x·wᵀ + bias) + residual over leading dims", () => {
    for (const act of ["none", "silu", "gelu_tanh"]) {
      const [y] = run("linear", [t([2, 3, K], x), t([N, K], w), t([N], b), t([2, 3, N], res)], {
        activation: act,
      });
      expect(y.shape).toEqual([2, 3, N]);
      const want: number[] = [];
      for (let row = 0; row < 6; row++)
        for (let j = 0; j < N; j++) {
          let acc = b[j];
          for (let i = 0; i < K; i++) acc += x[row * K + i] * w[j * K + i];
          want.push(activationFn(act)(acc) + res[row * N + j]);
        }
      expect(maxDiff(y.f32, want)).toBeLessThanOrEqual(TOL);
    }
    const [plain] = run("linear", [t([6, K], x), t([N, K], w)]);
    expect(plain.f32[N + 2]).toBeCloseTo(
      Array.from({ length: K }, (_, i) => x[K + i] * w[2 * K + i]).reduce((a, c) => a + c),
      6,
    );
  });

  it("infer checks input features, bias length and residual width", () => {
    const v = (shape: number[]) => ({ dtype: "f32" as const, shape });
    expect(() => getOp("linear").infer([v([2, 7]), v([N, K])], {})).toThrow(
      "linear: input features is 7, expected 6",
    );
    expect(() => getOp("linear").infer([v([2, K]), v([N, K]), v([4])], {})).toThrow(
      "linear: bias length is 4, expected 5",
    );
    expect(() => getOp("linear").infer([v([2, K]), v([N, K]), null, v([2, 3])], {})).toThrow(
      "linear: residual width is 3, expected 5",
    );
    expect(getOp("linear").infer([v([2, 3, K]), v([N, K])], {})).toEqual([v([2, 3, N])]);
  });
});

describe("embedding, split, gather_rows", () => {
  const table = rand(4 * 3, 21);
  it("embedding rows, with vocab_start: ids outside the slice give zero rows", () => {
    const [e] = run("embedding", [ids([2, 0, 3]), t([4, 3], table)]);
    expect(e.shape).toEqual([3, 3]);
    expect(Array.from(e.f32)).toEqual([...table.slice(6, 9), ...table.slice(0, 3), ...table.slice(9, 12)]);
    const [s] = run("embedding", [ids([3, 4, 7, 8, 5]), t([4, 3], table)], { vocab_start: 4 });
    expect(Array.from(s.f32)).toEqual([
      0,
      0,
      0,
      ...table.slice(0, 3),
      ...table.slice(9, 12),
      0,
      0,
      0,
      ...table.slice(3, 6),
    ]);
  });

  it("split along the last dim; gather_rows picks rows and refuses out-of-range indices", () => {
    const x = rand(2 * 6, 22);
    const parts = run("split", [t([2, 6], x)], { sizes: [1, 3, 2] });
    expect(parts.map((p) => p.shape)).toEqual([
      [2, 1],
      [2, 3],
      [2, 2],
    ]);
    expect(Array.from(parts[1].f32)).toEqual([...x.slice(1, 4), ...x.slice(7, 10)]);
    expect(Array.from(parts[2].f32)).toEqual([...x.slice(4, 6), ...x.slice(10, 12)]);
    expect(() => getOp("split").infer([{ dtype: "f32", shape: [2, 6] }], { sizes: [1, 3] })).toThrow(
      "split: sizes sum to 4, last dim is 6",
    );
    const [g] = run("gather_rows", [t([2, 6], x), ids([1, 1, 0])]);
    expect(Array.from(g.f32)).toEqual([...x.slice(6), ...x.slice(6), ...x.slice(0, 6)]);
    expect(() => run("gather_rows", [t([2, 6], x), ids([2])])).toThrow(
      "gather_rows: index 2 out of range 0..1",
    );
    expect(() => run("gather_rows", [t([2, 6], x), ids([-1])])).toThrow(
      "gather_rows: index -1 out of range 0..1",
    );
  });
});

// RoPE: for each head, pairs (a, b) — (i, i + R/2) in "neox" style, (2i, 2i + 1) in "gptj" style —
// rotate by angle pos·inv_freq[i]; dims ≥ R pass through.
function ropeRef(
  x: ArrayLike<number>,
  rows: number,
  heads: number,
  D: number,
  R: number,
  style: "neox" | "gptj",
  pos: number[],
  invFreq: ArrayLike<number>,
): number[] {
  const out = Array.from(x);
  for (let row = 0; row < rows; row++)
    for (let h = 0; h < heads; h++) {
      const o = row * heads * D + h * D;
      for (let i = 0; i < R / 2; i++) {
        const [a, b] = style === "neox" ? [i, i + R / 2] : [2 * i, 2 * i + 1];
        const ang = pos[row] * invFreq[i];
        out[o + a] = x[o + a] * Math.cos(ang) - x[o + b] * Math.sin(ang);
        out[o + b] = x[o + b] * Math.cos(ang) + x[o + a] * Math.sin(ang);
      }
    }
  return out;
}

describe("rope", () => {
  const heads = 2;
  const D = 8;
  const pos = [0, 3, 17];
  const x = rand(3 * heads * D, 31);
  for (const style of ["neox", "gptj"] as const)
    for (const R of [8, 4])
      it(`${style}, rotary_dim ${R} of head_dim ${D}`, () => {
        const inv = Float32Array.from({ length: R / 2 }, (_, i) => 10000 ** (-(2 * i) / R));
        const [y] = run("rope", [t([3, heads * D], x), ids(pos), t([R / 2], inv)], {
          style,
          num_heads: heads,
          head_dim: D,
          rotary_dim: R,
        });
        expect(maxDiff(y.f32, ropeRef(x, 3, heads, D, R, style, pos, inv))).toBeLessThanOrEqual(TOL);
        expect(Array.from(y.f32.slice(0, heads * D))).toEqual(Array.from(x.slice(0, heads * D))); // position 0
      });

  it("infer refuses a bad style, width or rotary_dim", () => {
    const v = { dtype: "f32" as const, shape: [3, 16] };
    const p = { dtype: "i32" as const, shape: [3] };
    const f = { dtype: "f32" as const, shape: [4] };
    const attrs = { style: "neox", num_heads: 2, head_dim: 8, rotary_dim: 8 };
    expect(getOp("rope").infer([v, p, f], attrs)).toEqual([v]);
    expect(() => getOp("rope").infer([null, p, f], attrs)).toThrow("rope: missing input x");
    expect(() => getOp("rope").infer([v, null, f], attrs)).toThrow("rope: missing input positions");
    expect(() => getOp("rope").infer([v, p, null], attrs)).toThrow("rope: missing input inv_freq");
    expect(() => getOp("rope").infer([v, p, f], { ...attrs, style: "glm" })).toThrow(
      "rope: style must be neox or gptj, got glm",
    );
    expect(() => getOp("rope").infer([v, p, f], { ...attrs, num_heads: 3 })).toThrow("rope: width 16 != 3×8");
    expect(() => getOp("rope").infer([v, p, f], { ...attrs, rotary_dim: 5 })).toThrow(
      "rope: rotary_dim 5 must be even and ≤ head_dim",
    );
    expect(() => getOp("rope").infer([v, p, f], { ...attrs, rotary_dim: 10 })).toThrow(
      "rope: rotary_dim 10 must be even and ≤ head_dim",
    );
  });
});

/** A KV store and step layout as the reference executor builds them. */
function attnCtx(seqs: { seqId: number; start: number; count: number }[], positions: number[]) {
  const caches = new Map<string, { k: Float32Array[]; v: Float32Array[] }>();
  const kv = {
    get(seqId: number, layer: number) {
      const key = `${seqId}/${layer}`;
      if (!caches.has(key)) caches.set(key, { k: [], v: [] });
      return caches.get(key)!;
    },
  };
  const ctx = (s: typeof seqs, p: number[]) =>
    ({ step: { seqs: s, positions: Int32Array.from(p) }, kv }) as unknown as RefContext;
  return { ctx: ctx(seqs, positions), next: ctx, caches };
}

/** Causal softmax attention of one sequence in fp64 (q [T, nH·D], k/v [T, nKv·D]) for the rows asked. */
function attnRef(
  q: ArrayLike<number>,
  k: ArrayLike<number>,
  v: ArrayLike<number>,
  nH: number,
  nKv: number,
  D: number,
  scale: number,
  rowsOut: number[],
): number[] {
  const out: number[] = [];
  for (const tq of rowsOut)
    for (let h = 0; h < nH; h++) {
      const kh = Math.floor(h / (nH / nKv));
      const s = Array.from({ length: tq + 1 }, (_, j) => {
        let dot = 0;
        for (let d = 0; d < D; d++) dot += q[tq * nH * D + h * D + d] * k[j * nKv * D + kh * D + d];
        return dot * scale;
      });
      const m = Math.max(...s);
      const e = s.map((z) => Math.exp(z - m));
      const z = e.reduce((a, c) => a + c, 0);
      for (let d = 0; d < D; d++) out.push(e.reduce((a, c, j) => a + c * v[j * nKv * D + kh * D + d], 0) / z);
    }
  return out;
}

describe("attention", () => {
  const nH = 4;
  const nKv = 2; // GQA: heads 0,1 read KV head 0; heads 2,3 KV head 1
  const D = 4;
  const T = 5;
  const scale = 0.7;
  const q = rand(T * nH * D, 41, 2);
  const k = rand(T * nKv * D, 42, 2);
  const v = rand(T * nKv * D, 43);
  const attrs = { layer: 1, num_heads: nH, num_kv_heads: nKv, head_dim: D, scale };

  it("GQA causal attention, prefill of 3 tokens then 2 decode steps through the KV cache", () => {
    const { ctx, next, caches } = attnCtx([{ seqId: 9, start: 0, count: 3 }], [0, 1, 2]);
    const rows = (a: Float32Array, w: number, from: number, to: number) =>
      t([to - from, w], a.slice(from * w, to * w));
    const [pre] = run(
      "attention",
      [rows(q, nH * D, 0, 3), rows(k, nKv * D, 0, 3), rows(v, nKv * D, 0, 3)],
      attrs,
      ctx,
    );
    expect(maxDiff(pre.f32, attnRef(q, k, v, nH, nKv, D, scale, [0, 1, 2]))).toBeLessThanOrEqual(TOL);
    expect(caches.get("9/1")!.k.length).toBe(3);
    for (const p of [3, 4]) {
      const c = next([{ seqId: 9, start: 0, count: 1 }], [p]);
      const [y] = run(
        "attention",
        [rows(q, nH * D, p, p + 1), rows(k, nKv * D, p, p + 1), rows(v, nKv * D, p, p + 1)],
        attrs,
        c,
      );
      expect(maxDiff(y.f32, attnRef(q, k, v, nH, nKv, D, scale, [p]))).toBeLessThanOrEqual(TOL);
    }
  });

  it("two sequences packed in one step attend only to their own cache", () => {
    const { ctx } = attnCtx(
      [
        { seqId: 1, start: 0, count: 2 },
        { seqId: 2, start: 2, count: 3 },
      ],
      [0, 1, 0, 1, 2],
    );
    const [y] = run("attention", [t([T, nH * D], q), t([T, nKv * D], k), t([T, nKv * D], v)], attrs, ctx);
    const w = nH * D;
    const first = attnRef(q, k, v, nH, nKv, D, scale, [0, 1]);
    const second = attnRef(
      q.slice(2 * w),
      k.slice(2 * nKv * D),
      v.slice(2 * nKv * D),
      nH,
      nKv,
      D,
      scale,
      [0, 1, 2],
    );
    expect(maxDiff(y.f32, [...first, ...second])).toBeLessThanOrEqual(TOL);
  });

  it("a sequence packed before one further along reads only its own tokens and cache", () => {
    // Sequence 7 has 4 cached positions; then one step packs a new sequence 8 (1 token at position
    // 0) before sequence 7's decode token at position 4.
    const { ctx, next } = attnCtx([{ seqId: 7, start: 0, count: 4 }], [0, 1, 2, 3]);
    const rows = (a: Float32Array, w: number, r: number[]) =>
      t(
        [r.length, w],
        r.flatMap((i) => [...a.slice(i * w, (i + 1) * w)]),
      );
    run(
      "attention",
      [rows(q, nH * D, [0, 1, 2, 3]), rows(k, nKv * D, [0, 1, 2, 3]), rows(v, nKv * D, [0, 1, 2, 3])],
      attrs,
      ctx,
    );
    const c = next(
      [
        { seqId: 8, start: 0, count: 1 },
        { seqId: 7, start: 1, count: 1 },
      ],
      [0, 4],
    );
    const [y] = run(
      "attention",
      [rows(q, nH * D, [0, 4]), rows(k, nKv * D, [0, 4]), rows(v, nKv * D, [0, 4])],
      attrs,
      c,
    );
    const w = nH * D;
    expect(maxDiff(y.f32.subarray(0, w), attnRef(q, k, v, nH, nKv, D, scale, [0]))).toBeLessThanOrEqual(TOL);
    expect(maxDiff(y.f32.subarray(w), attnRef(q, k, v, nH, nKv, D, scale, [4]))).toBeLessThanOrEqual(TOL);
  });

  it("scores thousands apart: the softmax subtracts the row max (no exp overflow)", () => {
    // |q·k|·scale reaches ~10^3 here, where exp() of an unshifted score overflows to Infinity.
    const big = (a: Float32Array) => a.map((x) => x * 40);
    const [qb, kb] = [big(q), big(k)];
    const { ctx } = attnCtx([{ seqId: 4, start: 0, count: T }], [0, 1, 2, 3, 4]);
    const [y] = run("attention", [t([T, nH * D], qb), t([T, nKv * D], kb), t([T, nKv * D], v)], attrs, ctx);
    const want = attnRef(qb, kb, v, nH, nKv, D, scale, [0, 1, 2, 3, 4]);
    expect(want.every(Number.isFinite)).toBe(true);
    expect(maxDiff(y.f32, want)).toBeLessThanOrEqual(TOL);
  });

  it("refuses a decode step with no cached past, and heads not divisible by KV heads", () => {
    const { ctx } = attnCtx([{ seqId: 3, start: 0, count: 1 }], [2]);
    expect(() =>
      run(
        "attention",
        [t([1, nH * D], q.slice(0, nH * D)), t([1, nKv * D], k.slice(0, 8)), t([1, nKv * D], v.slice(0, 8))],
        attrs,
        ctx,
      ),
    ).toThrow("attention: layer 1 sequence 3 has no cached key at position 0");
    const vt = (shape: number[]) => ({ dtype: "f32" as const, shape });
    expect(() =>
      getOp("attention").infer([vt([1, 16]), vt([1, 8]), vt([1, 8])], { ...attrs, num_kv_heads: 3 }),
    ).toThrow("attention: 4 heads not divisible by 3 KV heads");
    expect(() => getOp("attention").infer([vt([1, 12]), vt([1, 8]), vt([1, 8])], attrs)).toThrow(
      "attention: q width 12 != 4×4",
    );
    expect(() => getOp("attention").infer([vt([1, 16]), vt([1, 12]), vt([1, 8])], attrs)).toThrow(
      "attention: k width 12 != 2×4",
    );
    for (const [i, what] of ["q", "k", "v"].entries()) {
      const ins = [vt([1, 16]), vt([1, 8]), vt([1, 8])] as (ReturnType<typeof vt> | null)[];
      ins[i] = null;
      expect(() => getOp("attention").infer(ins, attrs)).toThrow(`attention: missing input ${what}`);
    }
    // fused_attention reads packed qkv [T, (nH + 2·nKv)·D] = [T, 32] and gives [T, nH·D].
    const fa = getOp("fused_attention");
    const half = { dtype: "f16" as const, shape: [{ sym: "num_tokens", max: 8 }, 32] };
    expect(fa.infer([half, vt([8]), null], attrs)).toEqual([{ dtype: "f16", shape: [half.shape[0], 16] }]);
    expect(() => fa.infer([vt([1, 24]), vt([1]), null], attrs)).toThrow(
      "fused_attention: qkv width 24 != 32",
    );
    expect(() => fa.infer([null, vt([1]), null], attrs)).toThrow("fused_attention: missing input qkv");
  });

  for (const [style, R] of [
    ["neox", 4],
    ["gptj", 2],
    ["neox", 0],
  ] as const)
    it(`fused_attention on packed qkv = rope (${style}, rotary_dim ${R}) then attention`, () => {
      const pos = [0, 1, 2, 3, 4];
      const inv = Float32Array.from(
        { length: Math.max(R / 2, 1) },
        (_, i) => 10000 ** (-(2 * i) / Math.max(R, 2)),
      );
      const W = (nH + 2 * nKv) * D;
      const qkv = new Float32Array(T * W);
      for (let r = 0; r < T; r++) {
        qkv.set(q.slice(r * nH * D, (r + 1) * nH * D), r * W);
        qkv.set(k.slice(r * nKv * D, (r + 1) * nKv * D), r * W + nH * D);
        qkv.set(v.slice(r * nKv * D, (r + 1) * nKv * D), r * W + (nH + nKv) * D);
      }
      const { ctx } = attnCtx([{ seqId: 1, start: 0, count: T }], pos);
      const [fa] = run(
        "fused_attention",
        [t([T, W], qkv), ids(pos), R ? t([R / 2], inv) : null],
        { ...attrs, rotary_dim: R, rope_style: style },
        ctx,
      );
      const qr = R ? ropeRef(q, T, nH, D, R, style, pos, inv) : Array.from(q);
      const kr = R ? ropeRef(k, T, nKv, D, R, style, pos, inv) : Array.from(k);
      expect(fa.shape).toEqual([T, nH * D]);
      expect(maxDiff(fa.f32, attnRef(qr, kr, v, nH, nKv, D, scale, pos))).toBeLessThanOrEqual(TOL);
    });
});
