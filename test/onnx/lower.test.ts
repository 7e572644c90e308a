// Each op's ONNX lowering (src/onnx/lower.ts) on a one-node graph in ONNX Runtime, against the op's CPU
// reference implementation (src/ops) on the same inputs: odd shapes, every attribute and default, the
// fp16 activation path (norms and softmax in fp32, cast back), the KV cache through present → past.
// test/onnx/elementwise.test.ts covers the plain elementwise ops, test/onnx/onnx.test.ts whole models.
import { describe, expect, it } from "vitest";
import type { Attrs } from "../../src/ir/types.ts";
import { ELEM, OnnxBuilder } from "../../src/onnx/builder.ts";
import { LOWERINGS, type LowerCtx } from "../../src/onnx/lower.ts";
import { getOp, HostTensor, type RefContext } from "../../src/ops/index.ts";
import { type Lowered, type LowerOpts, lowerRun } from "./lower-run.ts";

let seed = 11;
const rand = () => {
  seed = (seed * 1103515245 + 12345) % 2 ** 31;
  return (seed / 2 ** 31 - 0.5) * 4;
};
const randT = (shape: number[], scale = 1) =>
  new HostTensor(
    shape,
    Float32Array.from({ length: shape.reduce((a, b) => a * b, 1) }, () => rand() * scale),
  );
const ints = (xs: number[]) => new HostTensor([xs.length], Int32Array.from(xs));

const ref = (op: string, inputs: (HostTensor | null)[], attrs: Attrs, ctx = {} as RefContext) =>
  getOp(op).ref(inputs, attrs, ctx);

/** Worst |got − want| / max(1, |want|); lengths must agree. */
function worst(got: Float32Array, want: Float32Array): number {
  expect(got.length).toBe(want.length);
  let w = 0;
  want.forEach((v, i) => (w = Math.max(w, Math.abs(got[i] - v) / Math.max(1, Math.abs(v)))));
  return w;
}

async function expectMatch(
  op: string,
  attrs: Attrs,
  inputs: (HostTensor | null)[],
  o: LowerOpts = {},
  tol = 1e-5,
) {
  const want = ref(op, inputs, attrs);
  const got = await lowerRun(op, attrs, inputs, { numOutputs: want.length, ...o });
  want.forEach((w, j) => expect(worst(got.outs[j], w.f32)).toBeLessThanOrEqual(tol));
  return got;
}

describe("ONNX lowering of linear = reference", () => {
  const x = randT([3, 5]);
  const w = randT([7, 5]);
  const bias = randT([7]);
  const residual = randT([3, 7]);
  const cases: [string, (HostTensor | null)[], Attrs][] = [
    ["no attributes (activation none)", [x, w], {}],
    ["bias", [x, w, bias], { activation: "none" }],
    [
      "residual, silu, post softcap then scale",
      [x, w, null, residual],
      {
        activation: "silu",
        post: { ops: ["softcap", "scale"], args: [2, 0.5] },
      },
    ],
    [
      "bias, residual, gelu (erf), post tanh",
      [x, w, bias, residual],
      { activation: "gelu", post: { ops: ["tanh"], args: [0] } },
    ],
    [
      "bias, gelu_tanh, post sigmoid then exp",
      [x, w, bias],
      {
        activation: "gelu_tanh",
        post: { ops: ["sigmoid", "exp"], args: [0, 0] },
      },
    ],
  ];
  for (const [what, inputs, attrs] of cases)
    it(what, async () => {
      await expectMatch("linear", attrs, inputs);
    });

  it("an unknown activation is refused by name", async () => {
    await expect(lowerRun("linear", { activation: "relu6" }, [x, w])).rejects.toThrow(
      "ONNX export: activation relu6",
    );
  });
});

describe("ONNX lowering of the norms = reference", () => {
  const x = randT([3, 6], 2);
  const r = randT([3, 6]);
  const w = randT([6]);
  const bias = randT([6]);
  // Large eps and a weight offset, so that dropping either changes the output well beyond fp32 noise.
  const cases: [string, (HostTensor | null)[], Attrs][] = [
    ["rms_norm", [x, w], { eps: 1e-6 }],
    [
      "rms_norm",
      [x, w],
      {
        eps: 0.5,
        weight_offset: 1,
        pre: { ops: ["scale"], args: [0.5] },
        post: { ops: ["softcap"], args: [0.75] },
      },
    ],
    [
      "add_rms_norm",
      [x, r, w],
      { eps: 0.25, pre: { ops: ["tanh"], args: [0] }, post: { ops: ["scale"], args: [3] } },
    ],
    ["add_rms_norm", [x, r, w], { eps: 0.1, weight_offset: -0.5 }],
    ["layer_norm", [x, w, bias], { eps: 1e-5 }],
    [
      "layer_norm",
      [x, w, bias],
      { eps: 0.75, weight_offset: 1, pre: { ops: ["exp"], args: [0] }, post: { ops: ["tanh"], args: [0] } },
    ],
    [
      "add_layer_norm",
      [x, r, w, bias],
      {
        eps: 0.4,
        weight_offset: 2,
        pre: { ops: ["sigmoid"], args: [0] },
        post: { ops: ["scale"], args: [-2] },
      },
    ],
  ];
  for (const [op, inputs, attrs] of cases)
    it(`${op} ${JSON.stringify(attrs)}`, async () => {
      await expectMatch(op, attrs, inputs);
    });

  it("fp16 activations: rms_norm computed in fp32 between casts (the reference within fp16 rounding)", async () => {
    const attrs = { eps: 0.05, weight_offset: 1 };
    const got = await expectMatch("rms_norm", attrs, [x, w], { act: ELEM.f16 }, 4e-3);
    // The casts are there: the graph reads and writes fp16 around an fp32 ReduceMean.
    const types = got.model.graph!.node!.map((n) => n.opType);
    expect(types.filter((t) => t === "Cast").length).toBeGreaterThanOrEqual(4);
  });

  // The reference computes a norm, weight + weight_offset included, in fp32 and rounds once: the fp16 export must
  // be within half an fp16 ulp of it (plus fp32 noise). Inputs are exact in fp16 (multiples of 2^-10 in (-2, 2)).
  for (const [op, inputs] of [
    ["rms_norm", 2],
    ["layer_norm", 3],
    ["add_rms_norm", 3],
    ["add_layer_norm", 4],
  ] as const)
    it(`fp16 activations: ${op} with weight_offset rounds once, as the reference (≤ ½ fp16 ulp)`, async () => {
      // x and r: multiples of 2^-10 in (-1, 1), so that x + r is exact in fp16 too; w and bias: any fp16 value.
      const grid = (shape: number[]) =>
        new HostTensor(
          shape,
          Float32Array.from(randT(shape).f32, (v) => Math.round((v / 2) * 1024) / 1024),
        );
      const f16 = (shape: number[]) =>
        new HostTensor(
          shape,
          Float32Array.from(randT(shape).f32, (v) => {
            const q = 2 ** (Math.floor(Math.log2(Math.abs(v))) - 10);
            return Math.round(v / q) * q;
          }),
        );
      const make = { x: grid, r: grid, w: f16, bias: f16 };
      const names = op.startsWith("add_")
        ? (["x", "r", "w", "bias"] as const)
        : (["x", "w", "bias"] as const);
      const ins = names.slice(0, inputs).map((k) => make[k](k === "x" || k === "r" ? [4, 64] : [64]));
      const attrs = { eps: 1e-5, weight_offset: 1 };
      const want = ref(op, ins, attrs)[0].f32;
      const got = (
        await lowerRun(op, attrs, ins, { act: ELEM.f16, numOutputs: op.startsWith("add_") ? 2 : 1 })
      ).outs[0];
      let over = 0;
      want.forEach((v, i) => {
        const ulp = 2 ** (Math.floor(Math.log2(Math.max(Math.abs(v), 2 ** -14))) - 10);
        if (Math.abs(got[i] - v) > ulp / 2 + 1e-6 * Math.abs(v)) over++;
      });
      expect(over).toBe(0);
    });

  it("a norm without eps is refused by name", async () => {
    await expect(lowerRun("rms_norm", {}, [x, w])).rejects.toThrow(
      "ONNX export: rms_norm needs a numeric attribute eps",
    );
    await expect(lowerRun("rms_norm", { eps: "1e-5" }, [x, w])).rejects.toThrow(
      "ONNX export: rms_norm needs a numeric attribute eps",
    );
    await expect(lowerRun("rms_norm", { eps: 1e-5, weight_offset: "1" }, [x, w])).rejects.toThrow(
      "ONNX export: rms_norm needs a numeric attribute weight_offset",
    );
  });
});

describe("ONNX lowering of gated_act, gelu, split, gather_rows = reference", () => {
  for (const act of ["silu", "gelu", "gelu_tanh", "none"])
    it(`gated_act ${act} over [3, 10]`, async () => {
      await expectMatch("gated_act", { activation: act }, [randT([3, 10])]);
    });

  it("gelu without `approximate` is the tanh form, as the reference's default", async () => {
    await expectMatch("gelu", {}, [randT([2, 9], 2)], {}, 1e-6);
  });

  it("split [3, 5, 2] of [2, 10] into three outputs", async () => {
    await expectMatch("split", { sizes: [3, 5, 2] }, [randT([2, 10])]);
  });

  it("gather_rows gives every token's row (the logits of the whole step)", async () => {
    const x = randT([4, 3]);
    const got = await lowerRun("gather_rows", {}, [x, ints([3])]);
    expect(Array.from(got.outs[0])).toEqual(Array.from(x.f32));
  });
});

describe("ONNX lowering of embedding = reference (vocab-parallel slices give zero rows)", () => {
  const table = randT([6, 5]);
  const ids = ints([0, 3, 5, 7, 9, 4, 2, 10]);
  for (const [tp, start] of [
    [1, 0],
    [2, 0],
    [2, 4],
    [1, 4],
  ])
    it(`tp ${tp}, vocab_start ${start}, ids in and out of the slice`, async () => {
      const attrs: Attrs = start ? { vocab_start: start } : {};
      const inIds = tp === 1 && start === 0 ? ints([0, 3, 5, 1, 4, 2]) : ids;
      const got = await expectMatch("embedding", attrs, [inIds, table], { tp }, 0);
      if (tp > 1 || start) expect(got.outs[0].some((v) => v === 0)).toBe(true);
    });

  it("fp16 activations: rows and zeros in fp16", async () => {
    const t = new HostTensor(
      [6, 5],
      Float32Array.from(table.f32, (v) => Math.round(v * 8) / 8),
    ); // exact in fp16
    await expectMatch("embedding", { vocab_start: 2 }, [ids, t], { tp: 2, act: ELEM.f16 }, 0);
  });
});

describe("ONNX lowering of rope = reference", () => {
  for (const [style, D, R] of [
    ["neox", 8, 8],
    ["neox", 8, 4],
    ["gptj", 6, 6],
    ["gptj", 8, 4],
  ] as const)
    it(`${style}, head_dim ${D}, rotary_dim ${R}, 3 heads, positions out of order`, async () => {
      const heads = 3;
      const x = randT([4, heads * D]);
      const invFreq = new HostTensor(
        [R / 2],
        Float32Array.from({ length: R / 2 }, (_, i) => 10000 ** (-(2 * i) / R)),
      );
      const attrs = { num_heads: heads, head_dim: D, rotary_dim: R, style };
      await expectMatch("rope", attrs, [x, ints([5, 0, 17, 2]), invFreq], {}, 2e-5);
    });
});

/** The reference executor's KV store and step layout for one sequence. */
function refCtx() {
  const caches = new Map<string, { k: Float32Array[]; v: Float32Array[] }>();
  const kv = {
    get(seqId: number, layer: number) {
      const key = `${seqId}/${layer}`;
      if (!caches.has(key)) caches.set(key, { k: [], v: [] });
      return caches.get(key)!;
    },
  };
  return {
    at: (positions: number[]) =>
      ({
        step: {
          seqs: [{ seqId: 0, start: 0, count: positions.length }],
          positions: Int32Array.from(positions),
        },
        kv,
      }) as unknown as RefContext,
    cache: (layer: number) => kv.get(0, layer),
  };
}

/** The reference cache rows [P][nKv·D] as ONNX's [1, nKv, P, D]. */
function cacheAsPresent(rows: Float32Array[], heads: number, D: number): Float32Array {
  const P = rows.length;
  const out = new Float32Array(heads * P * D);
  for (let h = 0; h < heads; h++)
    for (let p = 0; p < P; p++) for (let d = 0; d < D; d++) out[(h * P + p) * D + d] = rows[p][h * D + d];
  return out;
}

describe("ONNX lowering of attention = reference, through present → past", () => {
  // Prefill of 3 tokens, then 2 tokens at once, then 1: the mask must use each token's position.
  const steps = [[0, 1, 2], [3, 4], [5]];
  for (const [fused, nH, nKv, D, R, style] of [
    [false, 4, 2, 4, 0, ""],
    [false, 3, 3, 5, 0, ""],
    [true, 4, 2, 4, 0, ""],
    [true, 4, 1, 8, 8, "neox"],
    [true, 2, 2, 8, 4, "gptj"],
    [true, 6, 2, 6, 4, "neox"],
  ] as const)
    it(`${fused ? "fused_attention" : "attention"}: ${nH} heads, ${nKv} KV heads, head_dim ${D}${R ? `, ${style} rope rotary_dim ${R}` : ""}`, async () => {
      const layer = 3;
      const attrs: Attrs = { layer, num_heads: nH, num_kv_heads: nKv, head_dim: D, scale: 0.37 };
      if (R) Object.assign(attrs, { rotary_dim: R, rope_style: style });
      const invFreq = new HostTensor(
        [Math.max(R, 2) / 2],
        Float32Array.from({ length: Math.max(R, 2) / 2 }, (_, i) => 0.9 ** i),
      );
      const rc = refCtx();
      let past: { k: Float32Array; v: Float32Array } = { k: new Float32Array(0), v: new Float32Array(0) };
      for (const pos of steps) {
        const T = pos.length;
        const kvOpt = { layer, heads: nKv, D, pastKey: past.k, pastValue: past.v };
        let want: HostTensor[];
        let got: Lowered;
        if (fused) {
          const qkv = randT([T, (nH + 2 * nKv) * D]);
          const inputs = [qkv, ints(pos), R ? invFreq : null];
          want = ref("fused_attention", inputs, attrs, rc.at(pos));
          got = await lowerRun("fused_attention", attrs, inputs, { kv: kvOpt });
        } else {
          const inputs = [randT([T, nH * D]), randT([T, nKv * D]), randT([T, nKv * D])];
          want = ref("attention", inputs, attrs, rc.at(pos));
          got = await lowerRun("attention", attrs, inputs, { kv: kvOpt, positions: pos });
        }
        expect(worst(got.outs[0], want[0].f32)).toBeLessThanOrEqual(2e-5);
        const cache = rc.cache(layer);
        expect(worst(got.presentKey!, cacheAsPresent(cache.k, nKv, D))).toBeLessThanOrEqual(2e-5);
        expect(worst(got.presentValue!, cacheAsPresent(cache.v, nKv, D))).toBeLessThanOrEqual(0);
        past = { k: got.presentKey!, v: got.presentValue! };
      }
    });

  it("fp16 activations: GQA attention with scores and softmax in fp32", async () => {
    const attrs: Attrs = { layer: 0, num_heads: 4, num_kv_heads: 2, head_dim: 4, scale: 0.5 };
    const rc = refCtx();
    const pos = [0, 1, 2, 3];
    const q16 = (t: HostTensor) =>
      new HostTensor(
        t.shape,
        Float32Array.from(t.f32, (v) => Math.round(v * 64) / 64),
      );
    const inputs = [q16(randT([4, 16])), q16(randT([4, 8])), q16(randT([4, 8]))];
    const want = ref("attention", inputs, attrs, rc.at(pos));
    const kv = { layer: 0, heads: 2, D: 4, pastKey: new Float32Array(0), pastValue: new Float32Array(0) };
    const got = await lowerRun("attention", attrs, inputs, { kv, positions: pos, act: ELEM.f16 });
    expect(worst(got.outs[0], want[0].f32)).toBeLessThanOrEqual(4e-3);
    expect(worst(got.presentValue!, cacheAsPresent(rc.cache(0).v, 2, 4))).toBe(0);
  });

  it("a missing attention attribute is refused by name", async () => {
    const inputs = [randT([1, 8]), randT([1, 8]), randT([1, 8])];
    const kv = { layer: 0, heads: 2, D: 4, pastKey: new Float32Array(0), pastValue: new Float32Array(0) };
    await expect(
      lowerRun("attention", { layer: 0, num_heads: 2, num_kv_heads: 2, head_dim: 4 }, inputs, {
        kv,
        positions: [0],
      }),
    ).rejects.toThrow("ONNX export: attention needs a numeric attribute scale");
  });
});

describe("ONNX lowering of moe = reference (dense: every expert, masked by the routing weights)", () => {
  const T = 5;
  const H = 6;
  const I = 3;
  const E = 4;
  const inputsFor = (local: number) => [
    randT([T, H]),
    randT([T, E], 2),
    randT([local * I, H]),
    randT([local * I, H]),
    randT([local * H, I]),
  ];
  for (const [what, attrs] of [
    ["top 2 of 4, renormalised (default), silu (default)", { num_experts: E, top_k: 2 }],
    ["top 3 of 4, not renormalised, gelu", { num_experts: E, top_k: 3, normalize: 0, activation: "gelu" }],
    [
      "top 1 of 4, normalize 1, gelu_tanh",
      { num_experts: E, top_k: 1, normalize: 1, activation: "gelu_tanh" },
    ],
    [
      "an expert-parallel rank: experts [1, 3) of 4",
      { num_experts: E, top_k: 2, expert_start: 1, local_experts: 2 },
    ],
    [
      "an expert-parallel rank: experts [0, 2) of 4, not renormalised",
      { num_experts: E, top_k: 2, expert_start: 0, local_experts: 2, normalize: 0 },
    ],
  ] as [string, Attrs][])
    it(what, async () => {
      const local = Number(attrs.local_experts ?? E);
      await expectMatch("moe", attrs, inputsFor(local), {}, 1e-5);
    });

  it("quantised experts are refused", async () => {
    await expect(
      lowerRun("moe", { num_experts: E, top_k: 2, quant: "int8-wo" }, inputsFor(E)),
    ).rejects.toThrow("ONNX export: quantised MoE experts are not exported yet");
  });
});

describe("ONNX lowering of the collectives (com.microsoft contrib ops)", () => {
  it("all_reduce is one AllReduce, all_gather one AllGather over the last axis of tp ranks", () => {
    for (const [op, type, attrs] of [
      ["all_reduce", "AllReduce", {}],
      ["all_gather", "AllGather", { group_size: 4, axis: 1 }],
    ] as const) {
      const b = new OnnxBuilder();
      let out = "";
      const c = { b, act: ELEM.f32, tp: 4, name: () => "x", set: (_: number, n: string) => (out = n) };
      LOWERINGS[op](c as unknown as LowerCtx, { op, inputs: [0], outputs: [1], attrs: {} });
      expect(b.nodes.length).toBe(1);
      const n = b.nodes[0];
      expect([n.opType, n.domain, n.input, n.output]).toEqual([type, "com.microsoft", ["x"], [out]]);
      const got = Object.fromEntries((n.attribute ?? []).map((a) => [a.name, Number(a.i)]));
      expect(got).toEqual(attrs);
    }
  });
});
