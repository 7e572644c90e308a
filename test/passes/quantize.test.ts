// The quantisation passes on tiny-llama's fused graph. quantize-weights: which linears become
// quant_linear, and the stored layout each gets — expected shapes worked out by hand from the config
// (hidden 128, 4 q heads and 2 KV heads of 32, intermediate 352, vocab 512): qkv [256, 128],
// o [128, 128], gate_up [704, 128], down [128, 352]; the numbers those layouts hold are checked in
// test/quant (numerics, fp8, engines). quantize-kv: which nodes get an fp8 KV cache.
import { describe, expect, it } from "vitest";
import { quantizeKvCache } from "../../passes/quantize-kv.ts";
import { checkQuantLegality, quantizeWeights } from "../../passes/quantize-weights.ts";
import { shardForTp } from "../../passes/tensor-parallel.ts";
import type { BuildConfig } from "../../src/engine/format.ts";
import type { Graph } from "../../src/ir/types.ts";
import { roundToDtype } from "../../src/ops/round.ts";
import { LLAMA_MODEL, MIXTRAL_MODEL, TINY_LLAMA, TINY_MIXTRAL } from "../fixtures.ts";
import { fixture, graphOf, passesBefore, runPasses, testBuild } from "./helpers.ts";

const LINEARS = ["self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj"];
const NK: Record<string, [number, number]> = {
  "self_attn.qkv_proj": [256, 128],
  "self_attn.o_proj": [128, 128],
  "mlp.gate_up_proj": [704, 128],
  "mlp.down_proj": [128, 352],
};
const names = [0, 1].flatMap((l) => LINEARS.map((p) => `model.layers.${l}.${p}.weight`));
const EMBED_REASON = "embedding: a row gather, not a GEMM, nothing to gain from quantising";
const ROUTER_REASON =
  "MoE router: a rounding error here flips which experts a token uses; kept in the engine dtype as TensorRT-LLM does";
const LM_HEAD_REASON =
  "lm_head: logits feed sampling directly; kept in the engine dtype as TensorRT-LLM does";

async function fused(build: BuildConfig): Promise<Graph> {
  const f = await fixture("llama");
  return runPasses(f.graph, passesBefore("quantize-weights"), build).graph;
}

const snapshot = (g: Graph) => JSON.stringify({ n: g.nodes, v: [...g.values], m: g.meta });

describe("quantize-weights", () => {
  for (const [quant, group] of [
    ["int4-wo", 32],
    ["int8-wo", undefined],
    ["fp8", undefined],
  ] as const)
    it(`${quant}: every decoder linear → quant_linear(x, values, scales, bias, residual); lm_head and embedding kept`, async () => {
      const build = testBuild({ quant, ...(group ? { group_size: group } : {}) });
      const before = await fused(build);
      const frozen = snapshot(before);
      const g = quantizeWeights(before, build);
      expect(snapshot(before)).toBe(frozen); // the input graph is left alone
      const ql = g.nodes.filter((n) => n.op === "quant_linear");
      const beforeLinears = new Map(
        before.nodes.filter((n) => n.op === "linear").map((n) => [before.values.get(n.inputs[1]!)!.name, n]),
      );
      expect(ql.map((n) => g.values.get(n.inputs[1]!)!.name)).toEqual(names);
      for (const n of ql) {
        const values = g.values.get(n.inputs[1]!)!;
        const scales = g.values.get(n.inputs[2]!)!;
        const src = before.values.get(beforeLinears.get(values.name)!.inputs[1]!)!;
        const old = beforeLinears.get(values.name)!;
        const [N, K] = NK[values.name.replace(/^model\.layers\.\d\./, "").replace(/\.weight$/, "")];
        // x, bias and residual are the linear's own; values and scales are new, adjacent.
        expect([n.inputs[0], n.inputs[3], n.inputs[4]]).toEqual([
          old.inputs[0],
          old.inputs[2] ?? null,
          old.inputs[3] ?? null,
        ]);
        expect(n.outputs).toEqual(old.outputs);
        expect(scales.id).toBe(values.id + 1);
        expect(n.attrs).toEqual({
          ...old.attrs,
          quant,
          compute_dtype: "f32",
          ...(group ? { group_size: group } : {}),
        });
        expect([values.dtype, values.shape, values.kind]).toEqual([
          { "int4-wo": "u8", "int8-wo": "i8", fp8: "fp8e4m3" }[quant],
          quant === "int4-wo" ? [N, K / 2] : [N, K],
          "weight",
        ]);
        expect([scales.name, scales.dtype, scales.shape, scales.kind]).toEqual([
          values.name.replace(/\.weight$/, ".weight_scale"),
          "f32",
          quant === "int4-wo" ? [N, K / 32] : [N],
          "weight",
        ]);
        expect(values.hints).toEqual({ ...src.hints, quant });
        expect(scales.hints).toEqual({ role: "scales", quant });
        // Same sources, one quantize transform appended, asking for values or scales.
        const q = { op: "quantize", scheme: quant, ...(group ? { group_size: group } : {}) };
        for (const [v, output] of [
          [values, "values"],
          [scales, "scales"],
        ] as const) {
          const r = v.recipe as Extract<typeof v.recipe, { kind: "checkpoint" }>;
          const s = src.recipe as typeof r;
          expect(r.kind).toBe("checkpoint");
          expect(r.parts).toEqual(s.parts);
          expect(r.transforms).toEqual([...s.transforms, { ...q, output }]);
        }
      }
      // lm_head stays a linear on its f32 weight; the embedding is untouched.
      const lin = g.nodes.filter((n) => n.op === "linear").map((n) => g.values.get(n.inputs[1]!)!);
      expect(lin.map((w) => [w.name, w.dtype])).toEqual([["lm_head.weight", "f32"]]);
      expect(g.meta.quant).toEqual({
        scheme: quant,
        kvCacheDtype: "fp32",
        quantized: names,
        kept: [
          { name: "model.embed_tokens.weight", reason: EMBED_REASON },
          { name: "lm_head.weight", reason: LM_HEAD_REASON },
        ],
      });
    });

  it("tiny-mixtral int4-wo: the stacked experts quantised per row (scales as moe inputs 5-7), the routers kept", async () => {
    // 4 experts, intermediate 192, hidden 128: w1, w3 [4·192, 128] → [768, 64] bytes, scales [768, 128/32];
    // w2 [4·128, 192] → [512, 96], scales [512, 192/32].
    const build = testBuild({ quant: "int4-wo", group_size: 32 });
    const g0 = await graphOf(MIXTRAL_MODEL, TINY_MIXTRAL, build);
    const before = runPasses(g0, passesBefore("quantize-weights"), build).graph;
    const g = quantizeWeights(before, build);
    const moe = g.nodes.filter((n) => n.op === "moe");
    expect(moe).toHaveLength(2);
    moe.forEach((n, l) => {
      const p = `model.layers.${l}.block_sparse_moe`;
      const old = before.nodes.find((m) => m.op === "moe" && m.outputs[0] === n.outputs[0])!;
      expect(n.inputs.slice(0, 2)).toEqual(old.inputs.slice(0, 2));
      const vs = n.inputs.slice(2).map((id) => g.values.get(id!)!);
      expect(vs.map((v) => [v.name, v.dtype, v.shape])).toEqual([
        [`${p}.experts.w1.weight`, "u8", [768, 64]],
        [`${p}.experts.w3.weight`, "u8", [768, 64]],
        [`${p}.experts.w2.weight`, "u8", [512, 96]],
        [`${p}.experts.w1.weight_scale`, "f32", [768, 4]],
        [`${p}.experts.w3.weight_scale`, "f32", [768, 4]],
        [`${p}.experts.w2.weight_scale`, "f32", [512, 6]],
      ]);
      expect(n.attrs).toEqual({ ...old.attrs, quant: "int4-wo", compute_dtype: "f32", group_size: 32 });
      // The router stays a linear on its f32 weight.
      const router = g.nodes.find((m) => m.outputs[0] === n.inputs[1])!;
      expect([router.op, g.values.get(router.inputs[1]!)!.dtype]).toEqual(["linear", "f32"]);
    });
    const q = g.meta.quant!;
    expect(q.quantized).toEqual(
      [0, 1].flatMap((l) => [
        `model.layers.${l}.self_attn.qkv_proj.weight`,
        `model.layers.${l}.self_attn.o_proj.weight`,
        ...["w1", "w3", "w2"].map((w) => `model.layers.${l}.block_sparse_moe.experts.${w}.weight`),
      ]),
    );
    expect(q.kept).toEqual([
      { name: "model.embed_tokens.weight", reason: EMBED_REASON },
      ...[0, 1].map((l) => ({
        name: `model.layers.${l}.block_sparse_moe.gate.weight`,
        reason: ROUTER_REASON,
      })),
      { name: "lm_head.weight", reason: LM_HEAD_REASON },
    ]);
    // A group size that does not divide an expert's input dim (192 for w2) is refused, naming it.
    const bad = testBuild({ quant: "int4-wo", group_size: 128 });
    expect(() => quantizeWeights(before, bad)).toThrow(
      /^--group-size 128: does not divide the input dim 192 of model\.layers\.0\.block_sparse_moe\.experts\.w2\.weight$/,
    );
  });

  it("random-weight inits in the quantised layout: int4 bytes uniform over 0..255, scales constant (std/7)", async () => {
    const build = testBuild({ quant: "int4-wo", group_size: 32 });
    const g = quantizeWeights(await fused(build), build);
    const n = g.nodes.find((x) => x.op === "quant_linear")!;
    const [values, scales] = [1, 2].map((k) => g.values.get(n.inputs[k]!)!.recipe!);
    const std = 0.034641016151377546; // the model's init: 0.02·√3 (uniform with std 0.02)
    expect(values.kind === "checkpoint" && values.init).toEqual({ mean: 127.5, scale: 128 });
    expect(scales.kind === "checkpoint" && scales.init.scale).toBe(0);
    expect(scales.kind === "checkpoint" && scales.init.mean).toBeCloseTo(std / 7, 15);
  });

  it("weight-only scales of an f16 / bf16 build are rounded up to it (scale_dtype, random scale's mean); fp8 and fp32 builds keep f32 scales", async () => {
    const mant = { f16: 10, bf16: 7 };
    for (const [model, dir, dtype, quant, want] of [
      [LLAMA_MODEL, TINY_LLAMA, "fp16", "int8-wo", "f16"],
      [LLAMA_MODEL, TINY_LLAMA, "bf16", "int4-wo", "bf16"],
      [LLAMA_MODEL, TINY_LLAMA, "fp16", "fp8", undefined],
      [LLAMA_MODEL, TINY_LLAMA, "fp32", "int4-wo", undefined],
      [MIXTRAL_MODEL, TINY_MIXTRAL, "bf16", "int8-wo", "bf16"],
    ] as const) {
      const build = testBuild({ dtype, quant, group_size: 32 });
      const g0 = await graphOf(model, dir, build);
      const g = quantizeWeights(runPasses(g0, passesBefore("quantize-weights"), build).graph, build);
      const pairs = g.nodes.flatMap((n) =>
        n.op === "quant_linear"
          ? [[n.inputs[1], n.inputs[2]]]
          : n.op === "moe"
            ? [2, 3, 4].map((k) => [n.inputs[k], n.inputs[k + 3]])
            : [],
      );
      expect(pairs.length).toBe(model === LLAMA_MODEL ? 8 : 10);
      for (const [vid, sid] of pairs) {
        const [values, scales] = [vid, sid].map((id) => g.values.get(id!)!);
        expect(values.dtype).toBe({ "int8-wo": "i8", "int4-wo": "u8", fp8: "fp8e4m3" }[quant]);
        for (const v of [values, scales]) {
          const last = (v.recipe as Extract<typeof v.recipe, { kind: "checkpoint" }>).transforms.at(-1)!;
          expect(last).toEqual({
            op: "quantize",
            scheme: quant,
            ...(quant === "int4-wo" ? { group_size: 32 } : {}),
            ...(want ? { scale_dtype: want } : {}),
            output: v === values ? "values" : "scales",
          });
          expect("scale_dtype" in last).toBe(want !== undefined); // absent, not undefined
        }
        const r = scales.recipe as Extract<typeof scales.recipe, { kind: "checkpoint" }>;
        const qmax = { "int8-wo": 127, "int4-wo": 7, fp8: 448 }[quant];
        const s32 = Math.fround(0.034641016151377546 / qmax); // the model's init a = 0.02·√3, over qmax
        if (!want) expect(r.init.mean).toBe(0.034641016151377546 / qmax);
        else {
          const a = Float32Array.of(r.init.mean);
          roundToDtype(a, want);
          expect(a[0]).toBe(r.init.mean); // representable
          expect(r.init.mean).toBeGreaterThan(s32); // rounded up (s32 itself is not representable here)
          expect(r.init.mean - s32).toBeLessThan(s32 * 2 ** -mant[want]); // by less than one step
        }
      }
    }
  });

  it("quant none returns the graph itself", async () => {
    const build = testBuild();
    const g = await fused(build);
    expect(quantizeWeights(g, build)).toBe(g);
  });

  it("an lm_head without the vocab hint is still kept because it feeds the logits (also through all_gather at tp 2)", async () => {
    for (const tp of [1, 2]) {
      const build = testBuild({ quant: "int8-wo", tp });
      const f = await fixture("llama");
      const rank0 = shardForTp(f.graph, build)[0];
      const g = runPasses(rank0, passesBefore("quantize-weights"), build).graph;
      for (const v of g.values.values())
        if (v.name === "lm_head.weight") v.hints = { ...v.hints, parallel: tp > 1 ? "column" : "none" };
      const out = quantizeWeights(g, build);
      expect(out.meta.quant!.kept.map((k) => k.name)).toEqual([
        "model.embed_tokens.weight",
        "lm_head.weight",
      ]);
      expect(out.meta.quant!.quantized).toEqual(names);
      if (tp > 1) expect(out.nodes.some((n) => n.op === "all_gather")).toBe(true);
    }
  });

  it("refuses what the hardware or the packing cannot do, one line each", async () => {
    expect(() => checkQuantLegality(testBuild({ quant: "fp8", sm: 89 }))).not.toThrow();
    expect(() => checkQuantLegality(testBuild({ kv_cache_dtype: "fp8", sm: 89 }))).not.toThrow();
    expect(() => checkQuantLegality(testBuild({ quant: "fp8", sm: 86 }))).toThrow(
      /^--quant fp8 needs --sm 89 or newer \(FP8 tensor cores: Ada, Hopper\); --sm 86 has none$/,
    );
    expect(() => checkQuantLegality(testBuild({ kv_cache_dtype: "fp8", sm: 80 }))).toThrow(
      /^--kv-cache-dtype fp8 needs --sm 89 or newer \(FP8 conversions: Ada, Hopper\); --sm 80 has none$/,
    );
    expect(() => checkQuantLegality(testBuild({ quant: "int8-wo", sm: 80 }))).not.toThrow();
    // Group size 1 divides every K but cannot pack int4 pairs.
    const build = testBuild({ quant: "int4-wo", group_size: 1 });
    const g = await fused(testBuild());
    expect(() => quantizeWeights(g, build)).toThrow(
      /^--group-size 1: int4 values are packed in pairs, use an even group size$/,
    );
    // The pass checks legality itself (not only through quantize-kv), with its own error class.
    let err: unknown;
    try {
      quantizeWeights(g, testBuild({ quant: "fp8", sm: 86 }));
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(Error);
    expect([(err as Error).name, (err as Error).message]).toEqual([
      "QuantError",
      "--quant fp8 needs --sm 89 or newer (FP8 tensor cores: Ada, Hopper); --sm 86 has none",
    ]);
  });

  it("without epilogue fusion (residual adds apart) every decoder linear is still quantised, none taken for a router", async () => {
    const build = testBuild({ quant: "int8-wo" });
    const f = await fixture("llama");
    const before = runPasses(
      f.graph,
      passesBefore("quantize-weights").filter((p) => p !== "epilogue-fusion" && p !== "add-norm-fusion"),
      build,
    ).graph;
    // o_proj and down_proj outputs are now the second input of a residual add.
    expect(before.nodes.some((n) => n.op === "add")).toBe(true);
    const g = quantizeWeights(before, build);
    expect(g.meta.quant!.quantized).toEqual(names);
    expect(g.meta.quant!.kept.map((k) => k.name)).toEqual(["model.embed_tokens.weight", "lm_head.weight"]);
  });

  it("tiny-gptj: biases stay the quant_linear's fourth input", async () => {
    const build = testBuild({ quant: "int8-wo" });
    const f = await fixture("gptj");
    const before = runPasses(f.graph, passesBefore("quantize-weights"), build).graph;
    const g = quantizeWeights(before, build);
    const ql = g.nodes.filter((n) => n.op === "quant_linear");
    const old = before.nodes.filter(
      (n) => n.op === "linear" && ql.some((q) => q.outputs[0] === n.outputs[0]),
    );
    expect(ql.map((n) => n.inputs[3])).toEqual(old.map((n) => n.inputs[2] ?? null));
    expect(ql.filter((n) => n.inputs[3] !== null).length).toBeGreaterThan(0);
  });
});

describe("quantize-kv", () => {
  it("--kv-cache-dtype fp8 marks every attention (fused or not) fp8 with unit scales; nothing else changes", async () => {
    for (const pass of ["attention-fusion", "quantize-kv"]) {
      const build = testBuild({ kv_cache_dtype: "fp8" });
      const f = await fixture("llama");
      // Before attention-fusion: plain attention nodes; in the pipeline: fused_attention.
      const g = runPasses(f.graph, passesBefore(pass), build).graph;
      const frozen = snapshot(g);
      const out = quantizeKvCache(g, build);
      expect(snapshot(g)).toBe(frozen);
      const attn = pass === "quantize-kv" ? "fused_attention" : "attention";
      expect(out.nodes.map((n) => n.op)).toEqual(g.nodes.map((n) => n.op));
      out.nodes.forEach((n, i) => {
        const want =
          n.op === attn
            ? { ...g.nodes[i].attrs, kv_cache_dtype: "fp8", k_scale: 1, v_scale: 1 }
            : g.nodes[i].attrs;
        expect(n.attrs).toEqual(want);
      });
      expect(out.nodes.filter((n) => n.attrs.kv_cache_dtype === "fp8").map((n) => n.attrs.layer)).toEqual([
        0, 1,
      ]);
    }
  });

  it("other KV cache dtypes return the graph itself; fp8 below sm 89 is refused", async () => {
    const g = await fused(testBuild());
    expect(quantizeKvCache(g, testBuild({ kv_cache_dtype: "fp16" }))).toBe(g);
    expect(() => quantizeKvCache(g, testBuild({ kv_cache_dtype: "fp8", sm: 80 }))).toThrow(
      /--kv-cache-dtype fp8 needs --sm 89/,
    );
  });
});
