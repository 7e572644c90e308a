// The fusion report's graph figures (src/report/figures.ts) of tiny-llama's unfused graph, every number counted
// by hand from the config (hidden 128, q 4 × 32 = 128, k and v 2 × 32 = 64, intermediate 352, vocab 512, 2
// layers, fp32: 4 bytes an element; symbolic token dims bound to 1) and the model's 16 ops per decoder layer:
// input rms_norm, q linear, rope, k linear, rope, v linear, attention, o linear, residual add, post-attention
// rms_norm, gate linear, silu, up linear, mul, down linear, residual add.
import { describe, expect, it } from "vitest";
import { PASSES, runPasses as runReported } from "../passes/index.ts";
import { addInput, addNode, addWeight, emptyGraph } from "../src/ir/builder.ts";
import { drawLayer, graphFigures, nodeLayers, representativeLayer } from "../src/report/figures.ts";
import type { WeightRecipe } from "../src/weights/recipe.ts";
import { MIXTRAL_MODEL, TINY_MIXTRAL } from "./fixtures.ts";
import { fixture, graphOf, testBuild } from "./passes/helpers.ts";

const LAYER_OPS = [
  "rms_norm",
  "linear",
  "rope",
  "linear",
  "rope",
  "linear",
  "attention",
  "linear",
  "add",
  "rms_norm",
  "linear",
  "silu",
  "linear",
  "mul",
  "linear",
  "add",
];

describe("graph figures of tiny-llama (unfused, fp32)", () => {
  it("layers of the nodes: embedding, final norm, gather_rows and lm_head outside every layer", async () => {
    const g = (await fixture("llama")).graph;
    const layers = nodeLayers(g);
    expect(g.nodes.map((n) => n.op)).toEqual([
      "embedding",
      ...LAYER_OPS,
      ...LAYER_OPS,
      "rms_norm",
      "gather_rows",
      "linear",
    ]);
    expect(layers).toEqual([null, ...LAYER_OPS.map(() => 0), ...LAYER_OPS.map(() => 1), null, null, null]);
    expect(representativeLayer(layers)).toBe(1);
    expect(representativeLayer([null, 0, 0, null])).toBe(0);
    expect(representativeLayer([null, null])).toBe(0);
    expect(representativeLayer([0, 1, 2, 3])).toBe(1);
  });

  it("launches, activations and their traffic per token", async () => {
    const g = (await fixture("llama")).graph;
    // Outputs of one layer, bytes: 128-wide (512): the two norms, q, rope q, attention, o, both adds, down;
    // 64-wide (256): k, rope k, v; 352-wide (1408): gate, silu, up, mul.
    const layerWritten = 9 * 512 + 3 * 256 + 4 * 1408; // 11,008
    // Reads of produced values: norm 512, q 512, rope 512, k 512, rope 256, v 512, attention 512 + 256 + 256,
    // o 512, add 512 + 512, norm 512, gate 512, silu 1408, up 512, mul 1408 + 1408, down 1408, add 512 + 512.
    const layerRead = 14 * 512 + 3 * 256 + 4 * 1408; // 13,568
    // Outside the layers: embedding 512 written (its ids are a graph input); final norm 512 + 512;
    // gather_rows 512 + 512; lm_head 2048 written, 512 read.
    const outside = 512 + 1024 + 1024 + 2560;
    expect(graphFigures(g)).toEqual({
      ops: 36,
      launches: 36,
      launchesPerLayer: 16,
      layers: 2,
      layerOps: { rms_norm: 2, linear: 7, rope: 2, attention: 1, add: 2, silu: 1, mul: 1 },
      activations: 36,
      activationBytesPerToken: 2 * layerWritten + 512 + 512 + 512 + 2048,
      trafficPerToken: 2 * (layerWritten + layerRead) + outside,
      layerTrafficPerToken: layerWritten + layerRead,
    });
  });

  it("the drawing of layer 1: its 16 ops, the residual and positions coming in, the residual going out", async () => {
    const g = (await fixture("llama")).graph;
    const d = drawLayer(g, 1);
    expect(d.layer).toBe(1);
    expect(d.launches).toBe(16);
    const op = (o: string, label: string, detail: string) => ({
      kind: "op",
      op: o,
      label,
      detail,
      fused: false,
    });
    expect(d.nodes).toEqual([
      op("rms_norm", "rms_norm", "input_layernorm"),
      op("linear", "linear", "self_attn.q_proj 128→128"),
      op("rope", "rope", "neox 32/32"),
      op("linear", "linear", "self_attn.k_proj 128→64"),
      op("rope", "rope", "neox 32/32"),
      op("linear", "linear", "self_attn.v_proj 128→64"),
      op("attention", "attention", "L1 4/2 heads"),
      op("linear", "linear", "self_attn.o_proj 128→128"),
      op("add", "add", ""),
      op("rms_norm", "rms_norm", "post_attention_layernorm"),
      op("linear", "linear", "mlp.gate_proj 128→352"),
      op("silu", "silu", ""),
      op("linear", "linear", "mlp.up_proj 128→352"),
      op("mul", "mul", ""),
      op("linear", "linear", "mlp.down_proj 352→128"),
      op("add", "add", ""),
      { kind: "in", op: "add", label: "layer 0 · add", detail: "", fused: false },
      { kind: "in", op: "input", label: "positions", detail: "", fused: false },
      { kind: "out", op: "output", label: "→ after the layers", detail: "", fused: false },
    ]);
    const h = "f32[num_tokens,128]";
    const k = "f32[num_tokens,64]";
    const m = "f32[num_tokens,352]";
    const p = "i32[num_tokens]";
    const e = (from: number, to: number, bytesPerToken: number, label: string) => ({
      from,
      to,
      bytesPerToken,
      label,
    });
    expect(d.edges).toEqual([
      e(16, 0, 512, h), // layer 0's residual → input norm
      e(0, 1, 512, h),
      e(1, 2, 512, h),
      e(17, 2, 4, p), // positions → rope q
      e(0, 3, 512, h),
      e(3, 4, 256, k),
      e(17, 4, 4, p),
      e(0, 5, 512, h),
      e(2, 6, 512, h),
      e(4, 6, 256, k),
      e(5, 6, 256, k),
      e(6, 7, 512, h),
      e(16, 8, 512, h), // residual + o
      e(7, 8, 512, h),
      e(8, 9, 512, h),
      e(9, 10, 512, h),
      e(10, 11, 1408, m),
      e(9, 12, 512, h),
      e(11, 13, 1408, m),
      e(12, 13, 1408, m),
      e(13, 14, 1408, m),
      e(8, 15, 512, h),
      e(14, 15, 512, h),
      e(15, 18, 512, h), // the layer's residual → the final norm
    ]);
  });

  it("layer 0's drawing: the embedding comes in, the residual goes to layer 1", async () => {
    const g = (await fixture("llama")).graph;
    const d = drawLayer(g, 0);
    expect(d.nodes.filter((n) => n.kind !== "op")).toEqual([
      { kind: "in", op: "embedding", label: "embedding", detail: "", fused: false },
      { kind: "in", op: "input", label: "positions", detail: "", fused: false },
      { kind: "out", op: "output", label: "→ layer 1", detail: "", fused: false },
    ]);
  });
});

describe("graph figures of tiny-llama after every pass (fp32)", () => {
  it("8 fused kernels a layer: qkv and gate/up packed, attention with rope, residuals in the GEMMs", async () => {
    const f = await fixture("llama");
    const g = runReported(f.graph, PASSES, f.build, { records: [] });
    // Layer outputs: norms 512 each, qkv 128 + 64 + 64 = 256 wide (1024), attention 512, o 512, gate/up
    // 2 × 352 = 704 wide (2816), gated_act 1408, down 512. Reads: norm 512, qkv 512, attention 1024 (positions
    // is a graph input), o 512 + residual 512, norm 512, gate/up 512, gated_act 2816, down 1408 + residual 512.
    const written = 4 * 512 + 1024 + 512 + 2816 + 1408; // 7,808
    const read = 512 + 512 + 1024 + 1024 + 512 + 512 + 2816 + 1920; // 8,832
    expect(graphFigures(g)).toEqual({
      ops: 20,
      launches: 20,
      launchesPerLayer: 8,
      layers: 2,
      layerOps: { rms_norm: 2, linear: 4, fused_attention: 1, gated_act: 1 },
      activations: 20,
      activationBytesPerToken: 2 * written + 512 + 512 + 512 + 2048,
      trafficPerToken: 2 * (written + read) + 5120,
      layerTrafficPerToken: written + read,
    });
    const d = drawLayer(g, 1);
    const op = (o: string, label: string, detail: string, fused: boolean) => ({
      kind: "op",
      op: o,
      label,
      detail,
      fused,
    });
    expect(d.nodes).toEqual([
      op("rms_norm", "rms_norm", "input_layernorm", false),
      op("linear", "linear", "self_attn.qkv_proj 128→256", true), // three checkpoint tensors in one
      op("fused_attention", "fused_attention", "L1 4/2 heads, rope neox 32/32", true),
      op("linear", "linear (+residual)", "self_attn.o_proj 128→128", true),
      op("rms_norm", "rms_norm", "post_attention_layernorm", false),
      op("linear", "linear", "mlp.gate_up_proj 128→704", true),
      op("gated_act", "gated_act", "silu", true),
      op("linear", "linear (+residual)", "mlp.down_proj 352→128", true),
      { kind: "in", op: "linear", label: "layer 0 · linear mlp.down_proj", detail: "", fused: false },
      { kind: "in", op: "input", label: "positions", detail: "", fused: false },
      { kind: "out", op: "output", label: "→ after the layers", detail: "", fused: false },
    ]);
    expect(d.edges.map((e) => [e.from, e.to, e.bytesPerToken])).toEqual([
      [8, 0, 512],
      [0, 1, 512],
      [1, 2, 1024],
      [9, 2, 4],
      [2, 3, 512],
      [8, 3, 512],
      [3, 4, 512],
      [4, 5, 512],
      [5, 6, 2816],
      [6, 7, 1408],
      [3, 7, 512],
      [7, 10, 512],
    ]);
  });
});

describe("graph figures of tiny-mixtral (unfused, fp32)", () => {
  it("the moe node: 4 launches, its scratch traffic, what one routed token reads per expert", async () => {
    // config: hidden 128, intermediate 192, 4 experts, top-2, 4 heads / 2 kv heads of 32, 2 layers.
    const g = await graphOf(MIXTRAL_MODEL, TINY_MIXTRAL);
    const layer = g.nodes.filter((_, i) => nodeLayers(g)[i] === 1);
    expect(layer.map((n) => n.op)).toEqual([...LAYER_OPS.slice(0, 10), "linear", "moe", "add"]);
    const f = graphFigures(g);
    // 12 single-kernel ops and the moe's routing, gate/up, down and combine kernels.
    expect(f.launchesPerLayer).toBe(16);
    expect(f.layerOps).toEqual({ rms_norm: 2, linear: 5, rope: 2, attention: 1, add: 2, moe: 1 });
    // Written: 128-wide (512): norms, q, rope q, attention, o, adds, moe; 64-wide (256): k, rope k, v; router
    // logits 4 × 4 = 16. Read: 14 × 512 (as in llama's attention half, the router's and the moe's x, the adds),
    // k, v and rope k's 256 three times, the router logits 16. The moe kernels' scratch per token:
    // 2 × top_k × (8 + I × 4 + H × 4) = 4 × (8 + 768 + 512).
    const written = 9 * 512 + 3 * 256 + 16;
    const read = 14 * 512 + 3 * 256 + 16;
    expect(f.layerTrafficPerToken).toBe(written + read + 4 * (8 + 768 + 512));
    const moe = drawLayer(g, 1).nodes.find((n) => n.op === "moe")!;
    // w1, w3, w2 of one expert: 3 × 192 × 128 × 4 bytes = 288 KiB.
    expect(moe).toEqual({
      kind: "op",
      op: "moe",
      label: "moe",
      detail: "4 experts, top 2 · 288 KiB per expert",
      fused: false,
    });
  });
});

describe("the drawing of a weight-quantised tiny-mixtral (fp16, after every pass)", () => {
  // One expert's stored bytes, counted from the config (hidden 128, intermediate 192): w1 and w3 192 rows by 128,
  // w2 128 rows by 192, and their fp32 scales, which the kernels read with them (roofline.ts counts them too).
  for (const [quant, extra, bytes] of [
    // int8-wo: 1 byte a value, one scale a row: 3 × 192 × 128 + 4 × (192 + 192 + 128) = 75,776 B.
    ["int8-wo", {}, "74.0 KiB"],
    // int4-wo group 32: two values a byte, a scale per 32 values: 3 × 192 × 64 + 4 × 3 × 192 × 4 = 46,080 B
    // (was 36.0 KiB: the scales left out).
    ["int4-wo", { group_size: 32 }, "45.0 KiB"],
  ] as const)
    it(`${quant}: what one routed token reads per expert includes the experts' scales`, async () => {
      const g0 = await graphOf(MIXTRAL_MODEL, TINY_MIXTRAL);
      const g = runReported(g0, PASSES, testBuild({ quant, dtype: "fp16", ...extra }), { records: [] });
      const moe = drawLayer(g, 1).nodes.find((n) => n.op === "moe")!;
      expect([moe.label, moe.detail]).toEqual([`moe (${quant})`, `4 experts, top 2 · ${bytes} per expert`]);
    });
});

describe("the drawing of a weight-quantised tiny-llama (fp16, after every pass)", () => {
  // The projections' dims are the model's whatever the storage: qkv 128 → 128 + 64 + 64, o 128 → 128, gate/up
  // 128 → 2 × 352, down 352 → 128 (int4-wo packs two values a byte: the stored weights are 64 and 176 columns).
  for (const [quant, extra] of [
    ["int8-wo", {}],
    ["int4-wo", { group_size: 32 }],
    ["fp8", {}],
  ] as const)
    it(`${quant}: the layer's GEMMs with their scheme and their input and output dims`, async () => {
      const f = await fixture("llama");
      const g = runReported(f.graph, PASSES, testBuild({ quant, dtype: "fp16", ...extra }), { records: [] });
      const d = drawLayer(g, 1);
      const q = (label: string, detail: string) => ({
        kind: "op",
        op: "quant_linear",
        label: `quant_linear (${label})`,
        detail,
        fused: true,
      });
      expect(d.nodes.filter((n) => n.kind === "op" && n.op === "quant_linear")).toEqual([
        q(quant, "self_attn.qkv_proj 128→256"),
        q(`${quant}, +residual`, "self_attn.o_proj 128→128"),
        q(quant, "mlp.gate_up_proj 128→704"),
        q(`${quant}, +residual`, "mlp.down_proj 352→128"),
      ]);
      // The residual from layer 0 is named by its GEMM, as in the unquantised drawing.
      expect(d.nodes.find((n) => n.kind === "in" && n.op === "quant_linear")!.label).toBe(
        "layer 0 · quant_linear mlp.down_proj",
      );
    });
});

describe("the drawing's details of ops the tiny checkpoints do not have", () => {
  // A hand-built layer 0 (weights named m.layers.0.…): rms_norm with a weight offset, scale, softcap, split, and
  // rank 1 of an expert-parallel moe (experts 2 and 3 of 4, top-2) of intermediate 6 over hidden 8 in f16.
  it("norm offset, scale factor, softcap, split sizes, the experts on this rank and their bytes", () => {
    const g = emptyGraph({ numLayers: 1, numKvHeads: 1, headDim: 8 });
    const T = { sym: "num_tokens", max: 4 };
    const ckpt = { kind: "checkpoint", parts: [{}], transforms: [], init: {} } as unknown as WeightRecipe;
    const w = (name: string, shape: number[]) => addWeight(g, `m.layers.0.${name}`, "f16", shape, ckpt).id;
    const x = addInput(g, "x", "f16", [T, 8]).id;
    const [n] = addNode(g, "rms_norm", [x, w("norm.weight", [8])], { eps: 1e-6, weight_offset: 1 });
    const [s] = addNode(g, "scale", [n], { factor: 2 });
    const [c] = addNode(g, "softcap", [s], { cap: 30 });
    const [a, b] = addNode(g, "split", [c], { sizes: [5, 3] });
    const [logits] = addNode(g, "linear", [n, w("gate.weight", [4, 8]), null], { activation: "none" });
    // Two local experts: w1 and w3 of 2 × 6 rows by 8, w2 of 2 × 8 rows by 6; f16.
    const [m] = addNode(
      g,
      "moe",
      [c, logits, w("experts.w1", [12, 8]), w("experts.w3", [12, 8]), w("experts.w2", [16, 6])],
      { num_experts: 4, top_k: 2, expert_start: 2, local_experts: 2 },
    );
    g.outputs = { a, b, m };
    expect(nodeLayers(g)).toEqual([0, 0, 0, 0, 0, 0]);
    const d = drawLayer(g, 0);
    expect(d.nodes.filter((v) => v.kind === "op").map((v) => [v.label, v.detail, v.fused])).toEqual([
      ["rms_norm", "norm (w + 1)", false],
      ["scale", "· 2", false],
      ["softcap", "cap 30", false],
      ["split", "5 | 3", false],
      ["linear", "gate 8→4", false],
      // One expert's w1, w3, w2: 3 × 6 × 8 × 2 = 288 bytes.
      ["moe", "4 experts (2–3 on this rank), top 2 · 288 B per expert", false],
    ]);
    // The graph outputs leave the layer; x comes in.
    expect(d.nodes.filter((v) => v.kind !== "op").map((v) => v.label)).toEqual([
      "x",
      "→ after the layers",
      "→ after the layers",
      "→ after the layers",
    ]);
    // 4 single launches and the moe's 4 kernels.
    expect(d.launches).toBe(9);
  });
});
