// The moe op's CPU reference (src/ops/moe.ts) against a textbook mixture of experts written here in
// fp64 (transformers' MixtralSparseMoeBlock after its router): softmax, top-k with the lowest index first
// on ties, optional renormalisation, Σ p · w2(act(w1·x) ⊙ w3·x), including expert parallelism (a rank
// adds only its own experts), weight-only int8 / int4 experts dequantised by hand, and infer's checks.
// The tiny-mixtral goldens check the op only in aggregate and only for the paths that model takes.
import { describe, expect, it } from "vitest";
import type { Attrs } from "../../src/ir/types.ts";
import { activationFn } from "../../src/ops/activation-math.ts";
import { getOp, HostTensor, type ValueType } from "../../src/ops/index.ts";
import { routeTopK } from "../../src/ops/moe.ts";
import { randomFill } from "../../src/weights/random.ts";

const moe = getOp("moe");
const [T, H, I, E] = [6, 8, 5, 4];

let seed = 3;
/** Uniform in (-s/2, s/2), fp32 values (a new seed per call). */
const rand = (n: number, s: number) => randomFill(n, seed++, 0, s / 2);

const x = rand(T * H, 4);
// Router logits chosen so that every expert is somebody's first and somebody's second choice.
const logits = Float32Array.from(
  [
    [2, 1, 0, -1],
    [0, 3, 1, -2],
    [-1, 0, 2.5, 1],
    [1, -3, 0, 2],
    [0.5, 0.2, -0.1, 0.4],
    [-2, 1.5, 1.4, 0],
  ].flat(),
);
const w1 = rand(E * I * H, 2);
const w3 = rand(E * I * H, 2);
const w2 = rand(E * H * I, 2);

interface Opts {
  K: number;
  normalize?: boolean;
  act?: string;
  /** The experts [start, start + local) whose weights and contributions the op holds. */
  start?: number;
  local?: number;
  /** Dequantised expert weights (default: w1, w3, w2). */
  ws?: [ArrayLike<number>, ArrayLike<number>, ArrayLike<number>];
}

/** fp64 textbook oracle over the whole [E·I, H] / [E·H, I] weight stacks. */
function oracle(o: Opts, lg: ArrayLike<number> = logits): Float64Array {
  const { K, normalize = true, act = "silu", start = 0, local = E } = o;
  const [g, u, d] = o.ws ?? [w1, w3, w2];
  const f = activationFn(act);
  const out = new Float64Array(T * H);
  for (let t = 0; t < T; t++) {
    const row = Array.from(lg).slice(t * E, (t + 1) * E);
    const m = Math.max(...row);
    const ex = row.map((v) => Math.exp(v - m));
    const s = ex.reduce((a, b) => a + b, 0);
    const p = ex.map((v) => v / s);
    const order = p.map((_, e) => e).sort((a, b) => p[b] - p[a] || a - b);
    const top = order.slice(0, K);
    const kept = top.reduce((a, e) => a + p[e], 0);
    for (const e of top) {
      if (e < start || e >= start + local) continue;
      const wgt = normalize ? p[e] / kept : p[e];
      const h = new Float64Array(I);
      for (let i = 0; i < I; i++) {
        let a = 0;
        let b = 0;
        for (let k = 0; k < H; k++) {
          a += g[(e * I + i) * H + k] * x[t * H + k];
          b += u[(e * I + i) * H + k] * x[t * H + k];
        }
        h[i] = f(a) * b;
      }
      for (let n = 0; n < H; n++) {
        let y = 0;
        for (let i = 0; i < I; i++) y += d[(e * H + n) * I + i] * h[i];
        out[t * H + n] += wgt * y;
      }
    }
  }
  return out;
}

/** The op over the experts [start, start + local) of the stacks (a rank's slice under expert parallelism). */
function runMoe(
  attrs: Attrs,
  ws = [w1, w3, w2],
  scales: (HostTensor | null)[] = [],
  lg = logits,
): Float32Array {
  const start = Number(attrs.expert_start ?? 0);
  const local = Number(attrs.local_experts ?? E);
  const rows = (w: Float32Array, n: number) => w.slice(start * n, (start + local) * n);
  return moe.ref(
    [
      new HostTensor([T, H], x),
      new HostTensor([T, E], lg),
      new HostTensor([local * I, ws[0].length / (E * I)], rows(ws[0], ws[0].length / E)),
      new HostTensor([local * I, ws[1].length / (E * I)], rows(ws[1], ws[1].length / E)),
      new HostTensor([local * H, ws[2].length / (E * H)], rows(ws[2], ws[2].length / E)),
      ...scales,
    ],
    { num_experts: E, ...attrs },
    {} as never,
  )[0].f32;
}

function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) return Infinity;
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

/** max |got - want| relative to max |want|. */
function relDiff(got: ArrayLike<number>, want: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < want.length; i++) m = Math.max(m, Math.abs(want[i]));
  return maxDiff(got, want) / m;
}

// fp32 products and sums (and fp32 dequantised weights) against fp64: measured max relative |Δ| 1.12e-7.
const TOL = 4e-7;

describe("moe reference vs an fp64 mixture of experts", () => {
  it("routes each token to its top-k experts (renormalised by default) and sums their SwiGLU outputs", () => {
    for (const K of [1, 2, 3, 4]) {
      const want = oracle({ K });
      expect(relDiff(runMoe({ top_k: K }), want)).toBeLessThanOrEqual(TOL);
      expect(relDiff(runMoe({ top_k: K, normalize: 1, activation: "silu" }), want)).toBeLessThanOrEqual(TOL);
    }
    // The oracle's outputs are not near zero (a wrong op could not pass by being small).
    expect(Math.max(...oracle({ K: 2 }).map(Math.abs))).toBeGreaterThan(0.3);
  });

  it("normalize 0 keeps the raw softmax probabilities (Qwen-MoE's norm_topk_prob false)", () => {
    const want = oracle({ K: 2, normalize: false });
    expect(relDiff(runMoe({ top_k: 2, normalize: 0 }), want)).toBeLessThanOrEqual(TOL);
    expect(relDiff(want, oracle({ K: 2 }))).toBeGreaterThan(0.05);
  });

  it("applies the activation attribute to the gate (gelu_tanh, gelu)", () => {
    for (const act of ["gelu_tanh", "gelu"]) {
      const want = oracle({ K: 2, act });
      expect(relDiff(runMoe({ top_k: 2, activation: act }), want)).toBeLessThanOrEqual(TOL);
      expect(relDiff(want, oracle({ K: 2 }))).toBeGreaterThan(0.01);
    }
  });

  it("router logits thousands apart: the softmax subtracts the row max", () => {
    const big = logits.map((v) => v * 300 + 5000);
    const want = oracle({ K: 2 }, big);
    expect(relDiff(runMoe({ top_k: 2 }, undefined, undefined, big), want)).toBeLessThanOrEqual(TOL);
    const neg = logits.map((v) => v - 5000);
    expect(
      relDiff(runMoe({ top_k: 2 }, undefined, undefined, neg), oracle({ K: 2 }, neg)),
    ).toBeLessThanOrEqual(TOL);
  });

  it("expert parallelism: each rank adds only its own experts, and the ranks sum to the whole op", () => {
    for (const [start, local] of [
      [0, 2],
      [2, 2],
      [1, 1],
      [3, 1],
      [0, 3],
    ]) {
      const got = runMoe({ top_k: 2, expert_start: start, local_experts: local });
      expect(relDiff(got, oracle({ K: 2, start, local }))).toBeLessThanOrEqual(TOL);
    }
    const a = runMoe({ top_k: 3, expert_start: 0, local_experts: 1 });
    const b = runMoe({ top_k: 3, expert_start: 1, local_experts: 3 });
    expect(
      relDiff(
        a.map((v, i) => v + b[i]),
        oracle({ K: 3 }),
      ),
    ).toBeLessThanOrEqual(TOL);
  });
});

describe("moe with weight-only quantised experts, dequantised by hand", () => {
  // Stored codes and per-row (int8) or per-group (int4) scales made up here; the oracle multiplies them
  // out in fp64, so a wrong row, group or nibble is far off. Scales are not powers of two, so that the
  // compute dtype's rounding of q · s shows.
  /** Integer codes spread over [lo, hi]. */
  const codes = (n: number, lo: number, hi: number) =>
    rand(n, 1).map((r) => Math.min(hi, Math.floor((r + 0.5) * (hi - lo + 1)) + lo));
  const rowScales = (n: number) =>
    Float32Array.from({ length: n }, (_, r) => Math.fround(0.0123 + 0.0017 * r));

  it("int8-wo: w = q · s[row]", () => {
    const q = [codes(E * I * H, -127, 127), codes(E * I * H, -127, 127), codes(E * H * I, -127, 127)];
    const s = [rowScales(E * I), rowScales(E * I), rowScales(E * H)];
    const ws = q.map((v, j) => v.map((c, i) => c * s[j][Math.floor(i / (j < 2 ? H : I))])) as [
      Float32Array,
      Float32Array,
      Float32Array,
    ];
    const got = runMoe(
      { top_k: 2, quant: "int8-wo" },
      q,
      s.map((v) => new HostTensor([v.length], v)),
    );
    const want = oracle({ K: 2, ws });
    expect(relDiff(got, want)).toBeLessThanOrEqual(TOL);
    expect(Math.max(...want.map(Math.abs))).toBeGreaterThan(1);
    // Rounded to bf16 as the weight-only kernels do when the activations are bf16.
    const bf16 = (v: number) => {
      const b = new Uint32Array(Float32Array.of(v).buffer)[0];
      return new Float32Array(Uint32Array.of(((b + 0x7fff + ((b >> 16) & 1)) >>> 16) << 16).buffer)[0];
    };
    const gotBf = runMoe(
      { top_k: 2, quant: "int8-wo", compute_dtype: "bf16" },
      q,
      s.map((v) => new HostTensor([v.length], v)),
    );
    const wantBf = oracle({ K: 2, ws: ws.map((w) => w.map((v) => bf16(Math.fround(v)))) as typeof ws });
    expect(relDiff(gotBf, wantBf)).toBeLessThanOrEqual(TOL);
    expect(relDiff(gotBf, want)).toBeGreaterThan(1e-4);
  });

  it("int4-wo (group 4): two's complement nibbles, element k in the low nibble of byte k/2 when even", () => {
    // One group size for all three weights, so I = 8 here (a multiple of G, unlike the shared I = 5).
    const G = 4;
    const I8 = 8;
    const nib = (n: number) => codes(n, -8, 7);
    const pack = (v: Float32Array) =>
      Float32Array.from({ length: v.length / 2 }, (_, j) => (v[2 * j] & 0xf) | ((v[2 * j + 1] & 0xf) << 4));
    const groupScales = (n: number) =>
      Float32Array.from({ length: n }, (_, r) => Math.fround(0.031 + 0.0071 * r));
    const q1 = nib(E * I8 * H);
    const q3 = nib(E * I8 * H);
    const q2 = nib(E * H * I8);
    const s1 = groupScales((E * I8 * H) / G);
    const s3 = groupScales((E * I8 * H) / G);
    const s2 = groupScales((E * H * I8) / G);
    const deq = (q: Float32Array, s: Float32Array) => q.map((c, i) => c * s[Math.floor(i / G)]);
    const [g, u, d] = [deq(q1, s1), deq(q3, s3), deq(q2, s2)];
    const got = moe.ref(
      [
        new HostTensor([T, H], x),
        new HostTensor([T, E], logits),
        new HostTensor([E * I8, H / 2], pack(q1)),
        new HostTensor([E * I8, H / 2], pack(q3)),
        new HostTensor([E * H, I8 / 2], pack(q2)),
        new HostTensor([E * I8, H / G], s1),
        new HostTensor([E * I8, H / G], s3),
        new HostTensor([E * H, I8 / G], s2),
      ],
      { num_experts: E, top_k: 2, quant: "int4-wo", group_size: G },
      {} as never,
    )[0].f32;
    // The oracle with I = 8.
    const want = new Float64Array(T * H);
    const f = activationFn("silu");
    const r = routeOracle(logits, 2);
    for (let t = 0; t < T; t++)
      for (const [e, wgt] of r[t]) {
        const h = Array.from({ length: I8 }, (_, i) => {
          let a = 0;
          let b = 0;
          for (let k = 0; k < H; k++) {
            a += g[(e * I8 + i) * H + k] * x[t * H + k];
            b += u[(e * I8 + i) * H + k] * x[t * H + k];
          }
          return f(a) * b;
        });
        for (let n = 0; n < H; n++) {
          let y = 0;
          for (let i = 0; i < I8; i++) y += d[(e * H + n) * I8 + i] * h[i];
          want[t * H + n] += wgt * y;
        }
      }
    expect(relDiff(got, want)).toBeLessThanOrEqual(TOL);
    expect(Math.max(...want.map(Math.abs))).toBeGreaterThan(0.5);
  });
});

/** Per token, [expert, renormalised weight] of its top-k, in fp64. */
function routeOracle(lg: ArrayLike<number>, K: number): [number, number][][] {
  return Array.from({ length: lg.length / E }, (_, t) => {
    const row = Array.from(lg).slice(t * E, (t + 1) * E);
    const m = Math.max(...row);
    const p = row.map((v) => Math.exp(v - m));
    const top = p
      .map((_, e) => e)
      .sort((a, b) => p[b] - p[a] || a - b)
      .slice(0, K);
    const kept = top.reduce((a, e) => a + p[e], 0);
    return top.map((e) => [e, p[e] / kept] as [number, number]);
  });
}

describe("routeTopK", () => {
  it("experts best first with their (renormalised) probabilities, per token", () => {
    for (const K of [1, 2, 4]) {
      const r = routeTopK(logits, E, K, true);
      const want = routeOracle(logits, K);
      expect(Array.from(r.experts)).toEqual(want.flatMap((row) => row.map(([e]) => e)));
      expect(
        maxDiff(
          r.weights,
          want.flatMap((row) => row.map(([, w]) => w)),
        ),
      ).toBeLessThanOrEqual(1e-7);
    }
    // Raw probabilities: token 0's softmax of [2, 1, 0, -1].
    const raw = routeTopK(logits.subarray(0, E), E, 2, false);
    const z = Math.exp(2) + Math.exp(1) + 1 + Math.exp(-1);
    expect(Array.from(raw.experts)).toEqual([0, 1]);
    expect(maxDiff(raw.weights, [Math.exp(2) / z, Math.exp(1) / z])).toBeLessThanOrEqual(1e-7);
    // Values rounded to fp32 (what the kernels store).
    for (const v of raw.weights) expect(Math.fround(v)).toBe(v);
  });
});

describe("moe infer, attrs and kernels", () => {
  const v = (shape: number[], dtype: ValueType["dtype"] = "f32"): ValueType => ({ dtype, shape });
  const infer = (inputs: (ValueType | null)[], attrs: Attrs) =>
    moe.infer(inputs, { num_experts: 4, top_k: 2, ...attrs });
  const ok = [v([3, 8], "f16"), v([3, 4]), v([20, 8]), v([20, 8]), v([32, 5])];

  it("output has x's shape and dtype; local experts set the stacked rows", () => {
    expect(infer(ok, {})).toEqual([v([3, 8], "f16")]);
    expect(
      infer([ok[0], ok[1], v([10, 8]), v([10, 8]), v([16, 5])], { local_experts: 2, expert_start: 2 }),
    ).toEqual([v([3, 8], "f16")]);
    const int4 = { quant: "int4-wo", group_size: 4 };
    const s = v([1]);
    expect(
      infer([ok[0], ok[1], v([16, 4], "u8"), v([16, 4], "u8"), v([32, 2], "u8"), s, s, s], int4),
    ).toEqual([v([3, 8], "f16")]);
  });

  it("refuses each malformed input with its own line", () => {
    const bad = (inputs: (ValueType | null)[], attrs: Attrs, msg: string) =>
      expect(() => infer(inputs, attrs)).toThrow(msg);
    bad([null, ...ok.slice(1)], {}, "moe: missing input x");
    bad([ok[0], null, ...ok.slice(2)], {}, "moe: missing input router_logits");
    bad([ok[0], ok[1], null, ok[3], ok[4]], {}, "moe: missing input w1");
    bad([...ok.slice(0, 3), null, ok[4]], {}, "moe: missing input w3");
    bad([...ok.slice(0, 4), null], {}, "moe: missing input w2");
    bad([ok[0], v([3, 5]), ...ok.slice(2)], {}, "moe: router logits width is 5, expected 4");
    bad([ok[0], ok[1], v([20, 7]), ...ok.slice(3)], {}, "moe: w1 input features is 7, expected 8");
    bad([...ok.slice(0, 3), v([20, 7]), ok[4]], {}, "moe: w3 input features is 7, expected 8");
    bad([...ok.slice(0, 3), v([24, 8]), ok[4]], {}, "moe: w3 rows is 24, expected 20");
    bad([ok[0], ok[1], v([22, 8]), v([22, 8]), ok[4]], {}, "moe: w1 rows 22 are not local_experts 4 × I");
    bad([...ok.slice(0, 4), v([32, 6])], {}, "moe: w2 input features (I) is 6, expected 5");
    bad([...ok.slice(0, 4), v([30, 5])], {}, "moe: w2 rows (local experts · H) is 30, expected 32");
    bad(ok, { quant: "int8-wo" }, "moe: quant int8-wo needs w1_scales, w3_scales and w2_scales");
    bad(
      [...ok, v([20]), v([20])],
      { quant: "fp8" },
      "moe: quant fp8 needs w1_scales, w3_scales and w2_scales",
    );
    // Each of the three scales is needed, whichever is missing.
    for (const miss of [5, 6, 7]) {
      const ins: (ValueType | null)[] = [...ok, v([20]), v([20]), v([32])];
      ins[miss] = null;
      bad(ins, { quant: "int8-wo" }, "moe: quant int8-wo needs w1_scales, w3_scales and w2_scales");
    }
    bad(ok, { quant: "int2" }, 'moe: unsupported expert quant "int2"');
    // int4 packs two values per stored element: an unpacked width is wrong.
    const s = v([1]);
    bad(
      [ok[0], ok[1], v([16, 8], "u8"), v([16, 4], "u8"), v([32, 2], "u8"), s, s, s],
      { quant: "int4-wo", group_size: 4 },
      "moe: w1 input features is 16, expected 8",
    );
  });

  it("refuses top_k and expert ranges outside num_experts", () => {
    const bad = (attrs: Attrs, msg: string) => expect(() => infer(ok, attrs)).toThrow(msg);
    bad({ top_k: 0 }, "moe: top_k 0 must be between 1 and num_experts 4");
    bad({ top_k: 5 }, "moe: top_k 5 must be between 1 and num_experts 4");
    bad({ expert_start: 1 }, "moe: experts [1, 5) are not within num_experts 4");
    bad({ expert_start: -1, local_experts: 2 }, "moe: experts [-1, 1) are not within num_experts 4");
    bad({ expert_start: 0.5, local_experts: 2 }, "moe: experts [0.5, 2.5) are not within num_experts 4");
    bad({ local_experts: 0 }, "moe: experts [0, 0) are not within num_experts 4");
    expect(infer(ok, { top_k: 4 })).toHaveLength(1);
    expect(infer(ok, { top_k: 1 })).toHaveLength(1);
    expect(
      infer([ok[0], ok[1], v([5, 8]), v([5, 8]), v([8, 5])], { expert_start: 3, local_experts: 1 }),
    ).toHaveLength(1);
  });

  it("kernels: four launches; per token 2·top_k·(8 + I·element size + H·4) bytes of scratch", () => {
    const k = moe.kernels!(ok, { num_experts: 4, top_k: 2 });
    // I = 20 rows / 4 experts = 5; f16 elements of 2 bytes; H = 8.
    expect(k).toEqual({ launches: 4, scratchBytesPerToken: 2 * 2 * (8 + 5 * 2 + 8 * 4) });
    expect(
      moe.kernels!([v([3, 8]), ok[1], v([10, 8])], { num_experts: 4, top_k: 3, local_experts: 2 }),
    ).toEqual({
      launches: 4,
      scratchBytesPerToken: 2 * 3 * (8 + 5 * 4 + 8 * 4),
    });
    expect(moe.kernels!([null, ok[1], null], { num_experts: 4, top_k: 1 })).toEqual({
      launches: 4,
      scratchBytesPerToken: 2 * 1 * 8,
    });
  });
});
