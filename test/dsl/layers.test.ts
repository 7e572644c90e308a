// The model DSL (src/dsl/layers.ts, src/dsl/module.ts) against graphs worked out by hand from small configs:
// every node (op, inputs by value name, attributes, output shape) and every weight (Hugging Face's
// checkpoint name, shape, dtype, sharding hints, random-weight init), and how each layer's options change
// what it builds. The numbers of these graphs are checked by the goldens (test/golden.test.ts,
// test/qwen2.test.ts, test/mixtral.test.ts); here, what the model author's calls turn into.
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, expect, it, onTestFinished } from "vitest";
import { compileEngine } from "../../src/compile.ts";
import {
  ACTIVATIONS,
  causalLM,
  gatedMlp,
  type LlamaStyleConfig,
  llamaDecoderLayer,
  llamaStyleLM,
  mlp,
  parallelDecoderLayer,
  preNormDecoderLayer,
  selfAttention,
  sparseMoe,
  stack,
} from "../../src/dsl/layers.ts";
import { Module } from "../../src/dsl/module.ts";
import type { Graph } from "../../src/ir/types.ts";
import { shapeStr } from "../../src/ir/types.ts";
import { tmpDir } from "../fixtures.ts";
import { MODEL, writeToyModel } from "../toy-gemma.ts";

const LIMITS = { maxBatchSize: 2, maxSeqLen: 32, maxNumTokens: 6 };

/** One line per node: `output = op(inputs) attrs : shape`, values by name (null: an absent input). */
function nodes(g: Graph): string[] {
  const name = (id: number | null) => (id === null ? "null" : g.values.get(id)!.name);
  return g.nodes.map(
    (n) =>
      `${n.outputs.map(name).join(", ")} = ${n.op}(${n.inputs.map(name).join(", ")}) ${JSON.stringify(n.attrs)} : ${shapeStr(g.values.get(n.outputs[0])!.shape)}`,
  );
}

/** The weights in creation order: name, shape, dtype, hints, recipe. */
function weights(g: Graph) {
  return [...g.values.values()]
    .filter((v) => v.kind === "weight")
    .map((v) => ({ name: v.name, shape: v.shape, dtype: v.dtype, hints: v.hints, recipe: v.recipe }));
}

const weight = (g: Graph, name: string) => weights(g).find((w) => w.name === name);
const weightNames = (g: Graph) => weights(g).map((w) => w.name);

/** A checkpoint weight's recipe: one part of that name and shape, no transforms. */
const ckpt = (name: string, shape: number[], init: { mean: number; scale: number }) => ({
  kind: "checkpoint",
  parts: [{ name, shape, transforms: [] }],
  transforms: [],
  init,
});
const LINEAR_INIT = { mean: 0, scale: 0.02 * Math.sqrt(3) };
const ZERO_INIT = { mean: 0, scale: 0 };
const ONE_INIT = { mean: 1, scale: 0 };

/** A Llama-family config: vocab 16, hidden 8, 2 heads of 4 with 1 KV head, MLP 12. */
function llamaCfg(over: Partial<LlamaStyleConfig> = {}): LlamaStyleConfig {
  return {
    vocabSize: 16,
    hiddenSize: 8,
    intermediateSize: 12,
    numLayers: 1,
    numHeads: 2,
    numKvHeads: 1,
    headDim: 4,
    ropeTheta: 10000,
    ropeScaling: null,
    maxPositionEmbeddings: 64,
    rmsNormEps: 1e-5,
    tieWordEmbeddings: false,
    ...over,
  } as LlamaStyleConfig;
}

function llamaGraph(
  cfg: LlamaStyleConfig,
  o: Parameters<typeof llamaDecoderLayer>[3] = { qkvBias: false, oBias: false },
  m = new Module("f32", LIMITS),
): Graph {
  llamaStyleLM(m, cfg, (_, p) => llamaDecoderLayer(m, p, cfg, o));
  return m.graph;
}

describe("Module", () => {
  it("declares input_ids, positions and logits_indices: i32, bounded by max_num_tokens, and no layers yet", () => {
    const m = new Module("bf16", LIMITS);
    const g = m.graph;
    expect(Object.keys(g.inputs)).toEqual(["input_ids", "positions", "logits_indices"]);
    expect([m.inputIds.id, m.positions.id, m.logitsIndices.id]).toEqual([
      g.inputs.input_ids,
      g.inputs.positions,
      g.inputs.logits_indices,
    ]);
    for (const [name, sym] of [
      ["input_ids", "num_tokens"],
      ["positions", "num_tokens"],
      ["logits_indices", "num_logits"],
    ])
      expect(g.values.get(g.inputs[name])).toMatchObject({
        name,
        kind: "input",
        dtype: "i32",
        shape: [{ sym, max: 6 }],
      });
    expect(g.meta).toEqual({ numLayers: 0, numKvHeads: 0, headDim: 0 });
    expect(g.nodes).toEqual([]);
    expect(m.initStd).toBe(0.02);
    expect(m.checkpointDtype).toBe("float32");
  });

  it("Linear: weight [out, in] as Hugging Face stores it, hints, init from initStd, bias only when asked", () => {
    const m = new Module("bf16", LIMITS, 0.5);
    const plain = m.Linear("a", 8, 3);
    const biased = m.Linear("b", 8, 3, { bias: true, parallel: "row" });
    const renamed = m.Linear("c", 8, 3, { weightName: "shared.weight", or: ["alt", "alt2"] });
    const x = m.Embedding("emb", 16, 8)(m.inputIds);
    plain(x);
    biased(x);
    renamed(x);
    const init = { mean: 0, scale: 0.5 * Math.sqrt(3) };
    expect(weights(m.graph)).toEqual([
      {
        name: "a.weight",
        shape: [3, 8],
        dtype: "bf16",
        hints: { parallel: "none", role: "linear" },
        recipe: ckpt("a.weight", [3, 8], init),
      },
      {
        name: "b.weight",
        shape: [3, 8],
        dtype: "bf16",
        hints: { parallel: "row", role: "linear" },
        recipe: ckpt("b.weight", [3, 8], init),
      },
      {
        name: "b.bias",
        shape: [3],
        dtype: "bf16",
        hints: { parallel: "row", role: "bias" },
        recipe: ckpt("b.bias", [3], ZERO_INIT),
      },
      {
        name: "shared.weight",
        shape: [3, 8],
        dtype: "bf16",
        hints: { parallel: "none", role: "linear" },
        recipe: {
          kind: "checkpoint",
          parts: [
            {
              name: "shared.weight",
              shape: [3, 8],
              transforms: [],
              or: [
                { name: "alt.weight", shape: [3, 8], transforms: [] },
                { name: "alt2.weight", shape: [3, 8], transforms: [] },
              ],
            },
          ],
          transforms: [],
          init,
        },
      },
      {
        name: "emb.weight",
        shape: [16, 8],
        dtype: "bf16",
        hints: { parallel: "vocab", role: "embedding" },
        recipe: ckpt("emb.weight", [16, 8], init),
      },
    ]);
    expect(nodes(m.graph)).toEqual([
      "emb.embedding = embedding(input_ids, emb.weight) {} : [num_tokens,8]",
      'a.linear = linear(emb.embedding, a.weight, null) {"activation":"none"} : [num_tokens,3]',
      'b.linear = linear(emb.embedding, b.weight, b.bias) {"activation":"none"} : [num_tokens,3]',
      'c.linear = linear(emb.embedding, shared.weight, null) {"activation":"none"} : [num_tokens,3]',
    ]);
  });

  it("RMSNorm and LayerNorm: weight (and LayerNorm's bias) [dim], a weight offset in the attrs and the init", () => {
    const m = new Module("f32", LIMITS);
    const x = m.Embedding("emb", 16, 8)(m.inputIds);
    m.RMSNorm("r", 8, 1e-6)(x);
    m.RMSNorm("g", 8, 1e-6, { weightOffset: 1 })(x);
    m.LayerNorm("l", 8, 1e-5)(x);
    m.LayerNorm("o", 8, 1e-5, { weightOffset: 0.25 })(x);
    expect(nodes(m.graph)).toEqual([
      "emb.embedding = embedding(input_ids, emb.weight) {} : [num_tokens,8]",
      'r.rms_norm = rms_norm(emb.embedding, r.weight) {"eps":0.000001} : [num_tokens,8]',
      'g.rms_norm = rms_norm(emb.embedding, g.weight) {"eps":0.000001,"weight_offset":1} : [num_tokens,8]',
      'l.layer_norm = layer_norm(emb.embedding, l.weight, l.bias) {"eps":0.00001} : [num_tokens,8]',
      'o.layer_norm = layer_norm(emb.embedding, o.weight, o.bias) {"eps":0.00001,"weight_offset":0.25} : [num_tokens,8]',
    ]);
    const norm = { role: "norm" };
    expect(weights(m.graph).slice(1)).toEqual([
      { name: "r.weight", shape: [8], dtype: "f32", hints: norm, recipe: ckpt("r.weight", [8], ONE_INIT) },
      { name: "g.weight", shape: [8], dtype: "f32", hints: norm, recipe: ckpt("g.weight", [8], ZERO_INIT) },
      { name: "l.weight", shape: [8], dtype: "f32", hints: norm, recipe: ckpt("l.weight", [8], ONE_INIT) },
      { name: "l.bias", shape: [8], dtype: "f32", hints: norm, recipe: ckpt("l.bias", [8], ZERO_INIT) },
      {
        name: "o.weight",
        shape: [8],
        dtype: "f32",
        hints: norm,
        recipe: ckpt("o.weight", [8], { mean: 0.75, scale: 0 }),
      },
      { name: "o.bias", shape: [8], dtype: "f32", hints: norm, recipe: ckpt("o.bias", [8], ZERO_INIT) },
    ]);
  });

  it("attention: one KV-cache layer per call in call order, the geometry in the graph's meta, scale 1/√headDim by default", () => {
    const m = new Module("f32", LIMITS);
    const x = m.Embedding("emb", 16, 8)(m.inputIds);
    const kv = m.Linear("kv", 8, 4)(x);
    m.attention(x, kv, kv, { numHeads: 2, numKvHeads: 1, headDim: 4 });
    expect(m.graph.meta).toEqual({ numLayers: 1, numKvHeads: 1, headDim: 4 });
    const kv2 = m.Linear("kv2", 8, 8)(x);
    m.attention(x, kv2, kv2, { numHeads: 4, numKvHeads: 4, headDim: 2, scale: 0.3 });
    expect(m.graph.meta).toEqual({ numLayers: 2, numKvHeads: 4, headDim: 2 });
    expect(nodes(m.graph).filter((l) => l.includes("attention("))).toEqual([
      'emb.attention = attention(emb.embedding, kv.linear, kv.linear) {"layer":0,"num_heads":2,"num_kv_heads":1,"head_dim":4,"scale":0.5} : [num_tokens,8]',
      'emb.attention = attention(emb.embedding, kv2.linear, kv2.linear) {"layer":1,"num_heads":4,"num_kv_heads":4,"head_dim":2,"scale":0.3} : [num_tokens,8]',
    ]);
  });

  it("rope: one f32 inv_freq constant per distinct (rotary dim, theta, scaling, rounding), shared by the calls that agree", () => {
    const m = new Module("f16", LIMITS, 0.02, "bfloat16");
    const x = m.Linear("q", 8, 8)(m.Embedding("emb", 16, 8)(m.inputIds));
    const rope = (o: Partial<Parameters<Module["rope"]>[3]>) =>
      m.rope(x, 2, 4, { rotaryDim: 4, theta: 10000, style: "neox", ...o });
    rope({});
    rope({ style: "gptj" }); // the style is the op's, not the table's
    rope({ invFreqInCheckpointDtype: true });
    rope({ theta: 100 });
    rope({ rotaryDim: 2 });
    rope({ scaling: { type: "linear", factor: 2 } });
    rope({ invFreqInCheckpointDtype: false }); // = the first
    const tables = [...m.graph.values.values()].filter((v) => v.name.startsWith("rope."));
    expect(tables.map((v) => [v.name, v.dtype, v.shape, v.recipe])).toEqual([
      ["rope.inv_freq.0", "f32", [2], { kind: "constant", data: [1, Math.fround(0.01)] }],
      // bf16 rounding of 0.01 (transformers casts Llama's inv_freq buffer to the checkpoint dtype)
      ["rope.inv_freq.1", "f32", [2], { kind: "constant", data: [1, 0.010009765625] }],
      ["rope.inv_freq.2", "f32", [2], { kind: "constant", data: [1, Math.fround(0.1)] }],
      ["rope.inv_freq.3", "f32", [1], { kind: "constant", data: [1] }],
      ["rope.inv_freq.4", "f32", [2], { kind: "constant", data: [0.5, Math.fround(0.01) / 2] }],
    ]);
    expect(nodes(m.graph).filter((l) => l.includes("rope("))).toEqual(
      [
        ["0", 4, "neox"],
        ["0", 4, "gptj"],
        ["1", 4, "neox"],
        ["2", 4, "neox"],
        ["3", 2, "neox"],
        ["4", 4, "neox"],
        ["0", 4, "neox"],
      ].map(
        ([t, r, s]) =>
          `q.rope = rope(q.linear, positions, rope.inv_freq.${t}) {"num_heads":2,"head_dim":4,"rotary_dim":${r},"style":"${s}"} : [num_tokens,8]`,
      ),
    );
  });

  it("rope: dynamic NTK scaling computes its table at the build's max_seq_len", () => {
    const table = (maxSeqLen: number) => {
      const m = new Module("f32", { ...LIMITS, maxSeqLen });
      const x = m.Linear("q", 8, 8)(m.Embedding("emb", 16, 8)(m.inputIds));
      m.rope(x, 2, 4, {
        rotaryDim: 4,
        theta: 10000,
        style: "neox",
        scaling: { type: "dynamic", factor: 2, originalMaxPositionEmbeddings: 16 },
      } as Parameters<Module["rope"]>[3]);
      const v = [...m.graph.values.values()].find((w) => w.name === "rope.inv_freq.0")!;
      return (v.recipe as { data: number[] }).data;
    };
    // transformers' dynamic NTK: base · ((factor · seq / original) − (factor − 1))^(d / (d − 2)); at 16 no growth.
    expect(table(16)).toEqual([1, Math.fround(0.01)]);
    const base = 10000 * ((2 * 64) / 16 - 1) ** 2;
    expect(table(64)[1]).toBeCloseTo(1 / Math.sqrt(base), 9);
  });

  it("moe: the router logits and stacked experts in, num_experts / top_k / normalize as 1 or 0 / activation", () => {
    const m = new Module("f32", LIMITS);
    const x = m.Embedding("emb", 16, 8)(m.inputIds);
    const r = m.Linear("r", 8, 4)(x);
    const w1 = m.stackedParam(
      "w1",
      [{ name: "e0" }, { name: "e1" }, { name: "e2" }, { name: "e3" }],
      [3, 8],
      { role: "expert" },
    );
    const w2 = m.stackedParam(
      "w2",
      [{ name: "d0" }, { name: "d1" }, { name: "d2" }, { name: "d3" }],
      [8, 3],
      { role: "expert" },
    );
    m.moe(x, r, { w1, w3: w1, w2 }, { numExperts: 4, topK: 2, normalize: true, activation: "silu" }, "blk");
    m.moe(x, r, { w1, w3: w1, w2 }, { numExperts: 4, topK: 1, normalize: false, activation: "silu" });
    expect(nodes(m.graph).slice(2)).toEqual([
      'blk.moe = moe(emb.embedding, r.linear, w1, w1, w2) {"num_experts":4,"top_k":2,"normalize":1,"activation":"silu"} : [num_tokens,8]',
      'emb.moe = moe(emb.embedding, r.linear, w1, w1, w2) {"num_experts":4,"top_k":1,"normalize":0,"activation":"silu"} : [num_tokens,8]',
    ]);
    expect(weight(m.graph, "w1")).toEqual({
      name: "w1",
      shape: [12, 8],
      dtype: "f32",
      hints: { role: "expert" },
      recipe: {
        kind: "checkpoint",
        parts: ["e0", "e1", "e2", "e3"].map((name) => ({ name, shape: [3, 8], transforms: [] })),
        transforms: [],
        init: LINEAR_INIT,
      },
    });
    expect(weight(m.graph, "w2")?.shape).toEqual([32, 3]);
  });
});

describe("llamaStyleLM + llamaDecoderLayer", () => {
  it("builds transformers' LlamaForCausalLM graph, node by node, with its checkpoint names", () => {
    const g = llamaGraph(llamaCfg());
    const L = "model.layers.0";
    const none = '{"activation":"none"}';
    expect(nodes(g)).toEqual([
      "model.embed_tokens.embedding = embedding(input_ids, model.embed_tokens.weight) {} : [num_tokens,8]",
      `${L}.input_layernorm.rms_norm = rms_norm(model.embed_tokens.embedding, ${L}.input_layernorm.weight) {"eps":0.00001} : [num_tokens,8]`,
      `${L}.self_attn.q_proj.linear = linear(${L}.input_layernorm.rms_norm, ${L}.self_attn.q_proj.weight, null) ${none} : [num_tokens,8]`,
      `${L}.self_attn.q_proj.rope = rope(${L}.self_attn.q_proj.linear, positions, rope.inv_freq.0) {"num_heads":2,"head_dim":4,"rotary_dim":4,"style":"neox"} : [num_tokens,8]`,
      `${L}.self_attn.k_proj.linear = linear(${L}.input_layernorm.rms_norm, ${L}.self_attn.k_proj.weight, null) ${none} : [num_tokens,4]`,
      `${L}.self_attn.k_proj.rope = rope(${L}.self_attn.k_proj.linear, positions, rope.inv_freq.0) {"num_heads":1,"head_dim":4,"rotary_dim":4,"style":"neox"} : [num_tokens,4]`,
      `${L}.self_attn.v_proj.linear = linear(${L}.input_layernorm.rms_norm, ${L}.self_attn.v_proj.weight, null) ${none} : [num_tokens,4]`,
      `${L}.self_attn.q_proj.attention = attention(${L}.self_attn.q_proj.rope, ${L}.self_attn.k_proj.rope, ${L}.self_attn.v_proj.linear) {"layer":0,"num_heads":2,"num_kv_heads":1,"head_dim":4,"scale":0.5} : [num_tokens,8]`,
      `${L}.self_attn.o_proj.linear = linear(${L}.self_attn.q_proj.attention, ${L}.self_attn.o_proj.weight, null) ${none} : [num_tokens,8]`,
      `model.embed_tokens.add = add(model.embed_tokens.embedding, ${L}.self_attn.o_proj.linear) {} : [num_tokens,8]`,
      `${L}.post_attention_layernorm.rms_norm = rms_norm(model.embed_tokens.add, ${L}.post_attention_layernorm.weight) {"eps":0.00001} : [num_tokens,8]`,
      `${L}.mlp.gate_proj.linear = linear(${L}.post_attention_layernorm.rms_norm, ${L}.mlp.gate_proj.weight, null) ${none} : [num_tokens,12]`,
      `${L}.mlp.gate_proj.silu = silu(${L}.mlp.gate_proj.linear) {} : [num_tokens,12]`,
      `${L}.mlp.up_proj.linear = linear(${L}.post_attention_layernorm.rms_norm, ${L}.mlp.up_proj.weight, null) ${none} : [num_tokens,12]`,
      `${L}.mlp.gate_proj.mul = mul(${L}.mlp.gate_proj.silu, ${L}.mlp.up_proj.linear) {} : [num_tokens,12]`,
      `${L}.mlp.down_proj.linear = linear(${L}.mlp.gate_proj.mul, ${L}.mlp.down_proj.weight, null) ${none} : [num_tokens,8]`,
      `model.embed_tokens.add = add(model.embed_tokens.add, ${L}.mlp.down_proj.linear) {} : [num_tokens,8]`,
      `model.norm.rms_norm = rms_norm(model.embed_tokens.add, model.norm.weight) {"eps":0.00001} : [num_tokens,8]`,
      "model.norm.gather_rows = gather_rows(model.norm.rms_norm, logits_indices) {} : [num_logits,8]",
      `lm_head.linear = linear(model.norm.gather_rows, lm_head.weight, null) ${none} : [num_logits,16]`,
    ]);
    expect(g.values.get(g.outputs.logits)?.name).toBe("lm_head.linear");
    expect(Object.keys(g.outputs)).toEqual(["logits"]);
    expect(g.meta).toEqual({ numLayers: 1, numKvHeads: 1, headDim: 4 });
    const lin = (name: string, shape: number[], parallel: string) => ({
      name,
      shape,
      dtype: "f32",
      hints: { parallel, role: "linear" },
      recipe: ckpt(name, shape, LINEAR_INIT),
    });
    const norm = (name: string) => ({
      name,
      shape: [8],
      dtype: "f32",
      hints: { role: "norm" },
      recipe: ckpt(name, [8], ONE_INIT),
    });
    expect(weights(g)).toEqual([
      {
        name: "model.embed_tokens.weight",
        shape: [16, 8],
        dtype: "f32",
        hints: { parallel: "vocab", role: "embedding" },
        recipe: ckpt("model.embed_tokens.weight", [16, 8], LINEAR_INIT),
      },
      norm(`${L}.input_layernorm.weight`),
      lin(`${L}.self_attn.q_proj.weight`, [8, 8], "column"),
      lin(`${L}.self_attn.k_proj.weight`, [4, 8], "column"),
      lin(`${L}.self_attn.v_proj.weight`, [4, 8], "column"),
      lin(`${L}.self_attn.o_proj.weight`, [8, 8], "row"),
      norm(`${L}.post_attention_layernorm.weight`),
      lin(`${L}.mlp.gate_proj.weight`, [12, 8], "column"),
      lin(`${L}.mlp.up_proj.weight`, [12, 8], "column"),
      lin(`${L}.mlp.down_proj.weight`, [8, 12], "row"),
      norm("model.norm.weight"),
      lin("lm_head.weight", [16, 8], "vocab"),
      // created at the first rope call, while the layer's forward runs
      {
        name: "rope.inv_freq.0",
        shape: [2],
        dtype: "f32",
        hints: undefined,
        recipe: { kind: "constant", data: [1, Math.fround(0.01)] },
      },
    ]);
  });

  it("layers in order, each its own KV-cache layer; one inv_freq table for all; rounded to the checkpoint dtype", () => {
    const g = llamaGraph(
      llamaCfg({ numLayers: 3 }),
      { qkvBias: false, oBias: false },
      new Module("f32", LIMITS, 0.02, "bfloat16"),
    );
    expect(g.meta.numLayers).toBe(3);
    const attn = g.nodes.filter((n) => n.op === "attention");
    expect(attn.map((n) => [n.attrs.layer, g.values.get(n.inputs[0]!)?.name])).toEqual(
      [0, 1, 2].map((i) => [i, `model.layers.${i}.self_attn.q_proj.rope`]),
    );
    expect(weightNames(g).filter((n) => n.startsWith("rope."))).toEqual(["rope.inv_freq.0"]);
    expect(weight(g, "rope.inv_freq.0")?.recipe).toEqual({ kind: "constant", data: [1, 0.010009765625] });
    // the last layer's output feeds model.norm
    const norm = g.nodes.find((n) => n.scope === "model.norm")!;
    const fed = g.nodes.find((n) => n.outputs[0] === norm.inputs[0])!;
    expect(g.values.get(fed.inputs[1]!)?.name).toBe("model.layers.2.mlp.down_proj.linear");
  });

  it("attention_bias and mlp_bias add the biases (zero-initialised, sharded like their weights) that the linears take", () => {
    const g = llamaGraph(llamaCfg(), { qkvBias: true, oBias: false, mlpBias: true });
    const L = "model.layers.0";
    const biases = weights(g).filter((w) => w.name.endsWith(".bias"));
    const bias = (n: string, size: number, parallel: string) => ({
      name: `${L}.${n}.bias`,
      shape: [size],
      dtype: "f32",
      hints: { parallel, role: "bias" },
      recipe: ckpt(`${L}.${n}.bias`, [size], ZERO_INIT),
    });
    expect(biases).toEqual([
      bias("self_attn.q_proj", 8, "column"),
      bias("self_attn.k_proj", 4, "column"),
      bias("self_attn.v_proj", 4, "column"),
      bias("mlp.gate_proj", 12, "column"),
      bias("mlp.up_proj", 12, "column"),
      bias("mlp.down_proj", 8, "row"),
    ]);
    const linears = g.nodes
      .filter((n) => n.op === "linear")
      .map((n) => `${n.scope}: ${n.inputs[2] === null ? "-" : g.values.get(n.inputs[2])?.name}`);
    expect(linears).toEqual([
      `${L}.self_attn.q_proj: ${L}.self_attn.q_proj.bias`,
      `${L}.self_attn.k_proj: ${L}.self_attn.k_proj.bias`,
      `${L}.self_attn.v_proj: ${L}.self_attn.v_proj.bias`,
      `${L}.self_attn.o_proj: -`,
      `${L}.mlp.gate_proj: ${L}.mlp.gate_proj.bias`,
      `${L}.mlp.up_proj: ${L}.mlp.up_proj.bias`,
      `${L}.mlp.down_proj: ${L}.mlp.down_proj.bias`,
      "lm_head: -",
    ]);
    const oOnly = llamaGraph(llamaCfg(), { qkvBias: false, oBias: true });
    expect(weightNames(oOnly).filter((n) => n.endsWith(".bias"))).toEqual([`${L}.self_attn.o_proj.bias`]);
    expect(weight(oOnly, `${L}.self_attn.o_proj.bias`)?.hints).toEqual({ parallel: "row", role: "bias" });
  });

  it("tie_word_embeddings: lm_head reads model.embed_tokens.weight (vocab-sharded); no lm_head.weight", () => {
    const g = llamaGraph(llamaCfg({ tieWordEmbeddings: true }));
    expect(weightNames(g).filter((n) => n.startsWith("lm_head"))).toEqual([]);
    const head = g.nodes.at(-1)!;
    expect(head.scope).toBe("lm_head");
    const w = g.values.get(head.inputs[1]!)!;
    expect(w.name).toBe("model.embed_tokens.weight");
    expect(w.id).not.toBe(g.nodes[0].inputs[1]); // a second weight value over the same checkpoint tensor
    expect(w.hints).toEqual({ parallel: "vocab", role: "linear" });
    expect(w.shape).toEqual([16, 8]);
  });

  it("the activation option picks the gated MLP's activation (silu by default); a given mlp replaces it", () => {
    const acts = (o: Parameters<typeof llamaDecoderLayer>[3]) =>
      llamaGraph(llamaCfg(), o)
        .nodes.filter((n) => n.op === "silu" || n.op === "gelu")
        .map((n) => `${n.op} ${JSON.stringify(n.attrs)}`);
    expect(acts({ qkvBias: false, oBias: false })).toEqual(["silu {}"]);
    expect(acts({ qkvBias: false, oBias: false, activation: "gelu" })).toEqual([
      'gelu {"approximate":"none"}',
    ]);
    const m = new Module("f32", LIMITS);
    const g = llamaGraph(llamaCfg(), { qkvBias: false, oBias: false, mlp: (x) => x.scale(3) }, m);
    expect(weightNames(g).filter((n) => n.includes(".mlp."))).toEqual([]);
    expect(nodes(g).filter((l) => l.includes("scale("))).toEqual([
      'model.layers.0.post_attention_layernorm.scale = scale(model.layers.0.post_attention_layernorm.rms_norm) {"factor":3} : [num_tokens,8]',
    ]);
  });

  it("RoPE scaling from the config reaches the table (linear) and the softmax scale (YaRN)", () => {
    const table = (ropeScaling: LlamaStyleConfig["ropeScaling"]) =>
      weight(llamaGraph(llamaCfg({ ropeScaling })), "rope.inv_freq.0")?.recipe;
    expect(table({ type: "linear", factor: 4 })).toEqual({
      kind: "constant",
      data: [0.25, Math.fround(0.01) / 4],
    });
    const yarn = {
      type: "yarn" as const,
      factor: 4,
      originalMaxPositionEmbeddings: 16,
      betaFast: 32,
      betaSlow: 1,
      attentionFactor: 1.5,
      mscale: null,
      mscaleAllDim: null,
      truncate: true,
    };
    const g = llamaGraph(llamaCfg({ ropeScaling: yarn }));
    expect(g.nodes.find((n) => n.op === "attention")?.attrs.scale).toBe(0.5 * 1.5 * 1.5);
  });
});

describe("selfAttention", () => {
  const base = { hiddenSize: 8, numHeads: 2, numKvHeads: 2, headDim: 4 };
  function attn(o: Partial<Parameters<typeof selfAttention>[2]>, m = new Module("f32", LIMITS)) {
    const x = m.Embedding("e", 16, 8)(m.inputIds);
    m.output("y", selfAttention(m, "a", { ...base, ...o })(x));
    return m.graph;
  }

  it("no rope: q and k go to attention unrotated, no inv_freq table; scale 1/√headDim unless given", () => {
    const g = attn({});
    expect(nodes(g).slice(1)).toEqual([
      'a.q_proj.linear = linear(e.embedding, a.q_proj.weight, null) {"activation":"none"} : [num_tokens,8]',
      'a.k_proj.linear = linear(e.embedding, a.k_proj.weight, null) {"activation":"none"} : [num_tokens,8]',
      'a.v_proj.linear = linear(e.embedding, a.v_proj.weight, null) {"activation":"none"} : [num_tokens,8]',
      'a.q_proj.attention = attention(a.q_proj.linear, a.k_proj.linear, a.v_proj.linear) {"layer":0,"num_heads":2,"num_kv_heads":2,"head_dim":4,"scale":0.5} : [num_tokens,8]',
      'a.o_proj.linear = linear(a.q_proj.attention, a.o_proj.weight, null) {"activation":"none"} : [num_tokens,8]',
    ]);
    expect(weightNames(g)).toEqual([
      "e.weight",
      "a.q_proj.weight",
      "a.k_proj.weight",
      "a.v_proj.weight",
      "a.o_proj.weight",
    ]);
    expect(attn({ scale: 0.125 }).nodes.find((n) => n.op === "attention")?.attrs.scale).toBe(0.125);
    expect(attn({ headDim: 16, hiddenSize: 8 }).nodes.find((n) => n.op === "attention")?.attrs.scale).toBe(
      0.25,
    );
  });

  it("projection names and a given scale; a scale given with YaRN is multiplied by the factor squared", () => {
    const g = attn({
      names: { q: "wq", k: "wk", v: "wv", o: "wo" },
      scale: 0.1,
      rope: { theta: 100, style: "gptj", rotaryDim: 2 },
    });
    expect(weightNames(g)).toEqual([
      "e.weight",
      "a.wq.weight",
      "a.wk.weight",
      "a.wv.weight",
      "a.wo.weight",
      "rope.inv_freq.0",
    ]);
    expect(nodes(g).filter((l) => l.includes("rope(") || l.includes("attention("))).toEqual([
      'a.wq.rope = rope(a.wq.linear, positions, rope.inv_freq.0) {"num_heads":2,"head_dim":4,"rotary_dim":2,"style":"gptj"} : [num_tokens,8]',
      'a.wk.rope = rope(a.wk.linear, positions, rope.inv_freq.0) {"num_heads":2,"head_dim":4,"rotary_dim":2,"style":"gptj"} : [num_tokens,8]',
      'a.wq.attention = attention(a.wq.rope, a.wk.rope, a.wv.linear) {"layer":0,"num_heads":2,"num_kv_heads":2,"head_dim":4,"scale":0.1} : [num_tokens,8]',
    ]);
    const yarn = (attentionFactor: number | null, rotaryDim?: number) => ({
      theta: 10000,
      style: "neox" as const,
      rotaryDim,
      scaling: {
        type: "yarn" as const,
        factor: 4,
        originalMaxPositionEmbeddings: 16,
        betaFast: 32,
        betaSlow: 1,
        attentionFactor,
        mscale: null,
        mscaleAllDim: null,
        truncate: true,
      },
    });
    const scaleOf = (g: Graph) => g.nodes.find((n) => n.op === "attention")?.attrs.scale;
    expect(scaleOf(attn({ scale: 0.1, rope: yarn(2) }))).toBeCloseTo(0.4, 15);
    // the default attention factor 0.1·ln(4) + 1, squared, with a full rotary dim given explicitly
    expect(scaleOf(attn({ rope: yarn(null, 4) }))).toBeCloseTo(0.5 * (0.1 * Math.log(4) + 1) ** 2, 14);
    // an attention factor of exactly 1 with partial rotary dims changes nothing
    expect(scaleOf(attn({ rope: yarn(1, 2) }))).toBe(0.5);
  });

  it("a YaRN attention factor with partial rotary dims is refused, naming the layer", () => {
    expect(() =>
      attn({
        rope: {
          theta: 10000,
          style: "neox",
          rotaryDim: 2,
          scaling: {
            type: "yarn",
            factor: 4,
            originalMaxPositionEmbeddings: 16,
            betaFast: 32,
            betaSlow: 1,
            attentionFactor: null,
            mscale: null,
            mscaleAllDim: null,
            truncate: true,
          },
        },
      }),
    ).toThrow(/^a: a RoPE attention factor with partial rotary dims is not supported$/);
  });
});

describe("MLPs and activations", () => {
  it("ACTIVATIONS: Hugging Face's hidden_act names to silu and exact or tanh gelu", () => {
    const m = new Module("f32", LIMITS);
    const x = m.Embedding("e", 16, 8)(m.inputIds);
    const got = Object.entries(ACTIVATIONS).map(([k, f]) => {
      const y = f(x);
      const n = m.graph.nodes.find((node) => node.outputs[0] === y.id)!;
      return `${k}: ${n.op} ${JSON.stringify(n.attrs)}`;
    });
    expect(got).toEqual([
      "silu: silu {}",
      "swish: silu {}",
      'gelu: gelu {"approximate":"none"}',
      'gelu_new: gelu {"approximate":"tanh"}',
      'gelu_pytorch_tanh: gelu {"approximate":"tanh"}',
      'gelu_fast: gelu {"approximate":"tanh"}',
    ]);
  });

  it("gatedMlp: down(act(gate(x)) · up(x)), renamed projections, biases when asked", () => {
    const m = new Module("f32", LIMITS);
    const x = m.Embedding("e", 16, 8)(m.inputIds);
    gatedMlp(m, "f", {
      hiddenSize: 8,
      intermediateSize: 6,
      activation: "gelu_new",
      bias: true,
      names: { gate: "w1", up: "w3", down: "w2" },
    })(x);
    expect(nodes(m.graph).slice(1)).toEqual([
      'f.w1.linear = linear(e.embedding, f.w1.weight, f.w1.bias) {"activation":"none"} : [num_tokens,6]',
      'f.w1.gelu = gelu(f.w1.linear) {"approximate":"tanh"} : [num_tokens,6]',
      'f.w3.linear = linear(e.embedding, f.w3.weight, f.w3.bias) {"activation":"none"} : [num_tokens,6]',
      "f.w1.mul = mul(f.w1.gelu, f.w3.linear) {} : [num_tokens,6]",
      'f.w2.linear = linear(f.w1.mul, f.w2.weight, f.w2.bias) {"activation":"none"} : [num_tokens,8]',
    ]);
    expect(
      weights(m.graph)
        .slice(1)
        .map((w) => `${w.name} ${shapeStr(w.shape)} ${w.hints?.parallel}`),
    ).toEqual([
      "f.w1.weight [6,8] column",
      "f.w1.bias [6] column",
      "f.w3.weight [6,8] column",
      "f.w3.bias [6] column",
      "f.w2.weight [8,6] row",
      "f.w2.bias [8] row",
    ]);
  });

  it("mlp: fc_out(act(fc_in(x))) with GPT-J's names by default, biases only when asked, renamable", () => {
    const m = new Module("f32", LIMITS);
    const x = m.Embedding("e", 16, 8)(m.inputIds);
    mlp(m, "p", { hiddenSize: 8, intermediateSize: 32, activation: "gelu_new", bias: true })(x);
    mlp(m, "q", {
      hiddenSize: 8,
      intermediateSize: 5,
      activation: "silu",
      names: { in: "c_fc", out: "c_proj" },
    })(x);
    expect(nodes(m.graph).slice(1)).toEqual([
      'p.fc_in.linear = linear(e.embedding, p.fc_in.weight, p.fc_in.bias) {"activation":"none"} : [num_tokens,32]',
      'p.fc_in.gelu = gelu(p.fc_in.linear) {"approximate":"tanh"} : [num_tokens,32]',
      'p.fc_out.linear = linear(p.fc_in.gelu, p.fc_out.weight, p.fc_out.bias) {"activation":"none"} : [num_tokens,8]',
      'q.c_fc.linear = linear(e.embedding, q.c_fc.weight, null) {"activation":"none"} : [num_tokens,5]',
      "q.c_fc.silu = silu(q.c_fc.linear) {} : [num_tokens,5]",
      'q.c_proj.linear = linear(q.c_fc.silu, q.c_proj.weight, null) {"activation":"none"} : [num_tokens,8]',
    ]);
    expect(
      weights(m.graph)
        .slice(1)
        .map((w) => `${w.name} ${shapeStr(w.shape)} ${w.hints?.parallel}`),
    ).toEqual([
      "p.fc_in.weight [32,8] column",
      "p.fc_in.bias [32] column",
      "p.fc_out.weight [8,32] row",
      "p.fc_out.bias [8] row",
      "q.c_fc.weight [5,8] column",
      "q.c_proj.weight [8,5] row",
    ]);
  });
});

describe("decoder layers and causalLM", () => {
  it("GPT-J's block: one LayerNorm feeding attention and MLP, attn + mlp + residual; partial interleaved rope", () => {
    const m = new Module("f32", LIMITS);
    const p = "transformer.h.0";
    causalLM(m, {
      embed: m.Embedding("transformer.wte", 16, 8),
      layers: stack(1, (i) =>
        parallelDecoderLayer({
          norm: m.LayerNorm(`transformer.h.${i}.ln_1`, 8, 1e-5),
          attention: selfAttention(m, `transformer.h.${i}.attn`, {
            hiddenSize: 8,
            numHeads: 2,
            numKvHeads: 2,
            headDim: 4,
            rope: { rotaryDim: 2, theta: 10000, style: "gptj" },
            names: { q: "q_proj", k: "k_proj", v: "v_proj", o: "out_proj" },
          }),
          mlp: mlp(m, `transformer.h.${i}.mlp`, {
            hiddenSize: 8,
            intermediateSize: 32,
            activation: "gelu_new",
            bias: true,
          }),
        }),
      ),
      norm: m.LayerNorm("transformer.ln_f", 8, 1e-5),
      lmHead: m.Linear("lm_head", 8, 16, { bias: true, parallel: "vocab" }),
    });
    const none = '{"activation":"none"}';
    const rope = (w: string) =>
      `${p}.attn.${w}_proj.rope = rope(${p}.attn.${w}_proj.linear, positions, rope.inv_freq.0) {"num_heads":2,"head_dim":4,"rotary_dim":2,"style":"gptj"} : [num_tokens,8]`;
    expect(nodes(m.graph)).toEqual([
      "transformer.wte.embedding = embedding(input_ids, transformer.wte.weight) {} : [num_tokens,8]",
      `${p}.ln_1.layer_norm = layer_norm(transformer.wte.embedding, ${p}.ln_1.weight, ${p}.ln_1.bias) {"eps":0.00001} : [num_tokens,8]`,
      `${p}.attn.q_proj.linear = linear(${p}.ln_1.layer_norm, ${p}.attn.q_proj.weight, null) ${none} : [num_tokens,8]`,
      rope("q"),
      `${p}.attn.k_proj.linear = linear(${p}.ln_1.layer_norm, ${p}.attn.k_proj.weight, null) ${none} : [num_tokens,8]`,
      rope("k"),
      `${p}.attn.v_proj.linear = linear(${p}.ln_1.layer_norm, ${p}.attn.v_proj.weight, null) ${none} : [num_tokens,8]`,
      `${p}.attn.q_proj.attention = attention(${p}.attn.q_proj.rope, ${p}.attn.k_proj.rope, ${p}.attn.v_proj.linear) {"layer":0,"num_heads":2,"num_kv_heads":2,"head_dim":4,"scale":0.5} : [num_tokens,8]`,
      `${p}.attn.out_proj.linear = linear(${p}.attn.q_proj.attention, ${p}.attn.out_proj.weight, null) ${none} : [num_tokens,8]`,
      `${p}.mlp.fc_in.linear = linear(${p}.ln_1.layer_norm, ${p}.mlp.fc_in.weight, ${p}.mlp.fc_in.bias) ${none} : [num_tokens,32]`,
      `${p}.mlp.fc_in.gelu = gelu(${p}.mlp.fc_in.linear) {"approximate":"tanh"} : [num_tokens,8]`.replace(
        "[num_tokens,8]",
        "[num_tokens,32]",
      ),
      `${p}.mlp.fc_out.linear = linear(${p}.mlp.fc_in.gelu, ${p}.mlp.fc_out.weight, ${p}.mlp.fc_out.bias) ${none} : [num_tokens,8]`,
      `${p}.attn.out_proj.add = add(${p}.attn.out_proj.linear, ${p}.mlp.fc_out.linear) {} : [num_tokens,8]`,
      `${p}.attn.out_proj.add = add(${p}.attn.out_proj.add, transformer.wte.embedding) {} : [num_tokens,8]`,
      `transformer.ln_f.layer_norm = layer_norm(${p}.attn.out_proj.add, transformer.ln_f.weight, transformer.ln_f.bias) {"eps":0.00001} : [num_tokens,8]`,
      "transformer.ln_f.gather_rows = gather_rows(transformer.ln_f.layer_norm, logits_indices) {} : [num_logits,8]",
      `lm_head.linear = linear(transformer.ln_f.gather_rows, lm_head.weight, lm_head.bias) ${none} : [num_logits,16]`,
    ]);
    expect(weight(m.graph, "rope.inv_freq.0")?.recipe).toEqual({ kind: "constant", data: [1] });
    expect(weight(m.graph, "lm_head.bias")?.hints).toEqual({ parallel: "vocab", role: "bias" });
  });

  it("preNormDecoderLayer: h = x + attn(norm1(x)); h + mlp(norm2(h)), each piece called once in that order", () => {
    const m = new Module("f32", LIMITS);
    const x = m.Embedding("e", 16, 8)(m.inputIds);
    const calls: string[] = [];
    const tag = (name: string, f: number) => (t: Parameters<typeof ACTIVATIONS.silu>[0]) => {
      calls.push(`${name}(${m.graph.values.get(t.id)?.name})`);
      return t.scale(f);
    };
    const out = preNormDecoderLayer({
      inputNorm: tag("n1", 2),
      attention: tag("attn", 3),
      postAttentionNorm: tag("n2", 5),
      mlp: tag("mlp", 7),
    })(x);
    expect(calls).toEqual(["n1(e.embedding)", "attn(e.scale)", "n2(e.add)", "mlp(e.scale)"]);
    expect(nodes(m.graph).slice(1)).toEqual([
      'e.scale = scale(e.embedding) {"factor":2} : [num_tokens,8]',
      'e.scale = scale(e.scale) {"factor":3} : [num_tokens,8]',
      "e.add = add(e.embedding, e.scale) {} : [num_tokens,8]",
      'e.scale = scale(e.add) {"factor":5} : [num_tokens,8]',
      'e.scale = scale(e.scale) {"factor":7} : [num_tokens,8]',
      "e.add = add(e.add, e.scale) {} : [num_tokens,8]",
    ]);
    expect(out.id).toBe(m.graph.nodes.at(-1)?.outputs[0]);
    // the second add takes the first add (h), not the layer input
    const [a1, a2] = m.graph.nodes.filter((n) => n.op === "add");
    expect(a2.inputs[0]).toBe(a1.outputs[0]);
    expect(m.graph.nodes.filter((n) => n.op === "scale").map((n) => n.attrs.factor)).toEqual([2, 3, 5, 7]);
  });

  it("stack: count layers made in order by index; causalLM applies them in order and sets only logits", () => {
    const made: number[] = [];
    const layers = stack(3, (i) => {
      made.push(i);
      return (t) => t.scale(i + 10);
    });
    expect(made).toEqual([0, 1, 2]);
    expect(stack(0, () => (t) => t)).toEqual([]);
    const m = new Module("f32", LIMITS);
    causalLM(m, {
      embed: m.Embedding("e", 16, 8),
      layers,
      norm: (t) => t.silu(),
      lmHead: m.Linear("h", 8, 16),
    });
    expect(nodes(m.graph)).toEqual([
      "e.embedding = embedding(input_ids, e.weight) {} : [num_tokens,8]",
      'e.scale = scale(e.embedding) {"factor":10} : [num_tokens,8]',
      'e.scale = scale(e.scale) {"factor":11} : [num_tokens,8]',
      'e.scale = scale(e.scale) {"factor":12} : [num_tokens,8]',
      "e.silu = silu(e.scale) {} : [num_tokens,8]",
      "e.gather_rows = gather_rows(e.silu, logits_indices) {} : [num_logits,8]",
      'h.linear = linear(e.gather_rows, h.weight, null) {"activation":"none"} : [num_logits,16]',
    ]);
    expect(m.graph.outputs).toEqual({ logits: m.graph.nodes.at(-1)?.outputs[0] });
  });
});

describe("sparseMoe", () => {
  const o = { hiddenSize: 8, intermediateSize: 3, numExperts: 2, topK: 1, normalize: false };

  it("Mixtral's names: router `gate` (replicated), experts.{e}.w1 / w3 / w2 stacked with expert sharding hints", () => {
    const m = new Module("f32", LIMITS);
    const x = m.Embedding("e", 16, 8)(m.inputIds);
    sparseMoe(m, "b", o)(x);
    expect(nodes(m.graph).slice(1)).toEqual([
      'b.gate.linear = linear(e.embedding, b.gate.weight, null) {"activation":"none"} : [num_tokens,2]',
      'b.moe = moe(e.embedding, b.gate.linear, b.experts.w1.weight, b.experts.w3.weight, b.experts.w2.weight) {"num_experts":2,"top_k":1,"normalize":0,"activation":"silu"} : [num_tokens,8]',
    ]);
    const part = (w: string, e: number, shape: number[]) => ({
      name: `b.experts.${e}.${w}.weight`,
      or: [],
      shape,
      transforms: [],
    });
    const stackedW = (w: string, shape: number[], parallel: string) => ({
      name: `b.experts.${w}.weight`,
      shape: [2 * shape[0], shape[1]],
      dtype: "f32",
      hints: { parallel, role: "expert", experts: 2 },
      recipe: {
        kind: "checkpoint",
        parts: [part(w, 0, shape), part(w, 1, shape)],
        transforms: [],
        init: LINEAR_INIT,
      },
    });
    expect(weights(m.graph).slice(1)).toEqual([
      {
        name: "b.gate.weight",
        shape: [2, 8],
        dtype: "f32",
        hints: { parallel: "none", role: "linear" },
        recipe: ckpt("b.gate.weight", [2, 8], LINEAR_INIT),
      },
      stackedW("w1", [3, 8], "expert_column"),
      stackedW("w3", [3, 8], "expert_column"),
      stackedW("w2", [8, 3], "expert_row"),
    ]);
  });

  it("renamed pieces, top-k and normalize; transformers 5's fused layouts as alternatives (select, then gate / up rows)", () => {
    const m = new Module("f32", LIMITS);
    const x = m.Embedding("e", 16, 8)(m.inputIds);
    sparseMoe(m, "b", {
      ...o,
      topK: 2,
      normalize: true,
      names: { router: "router", experts: "ex", gate: "g", up: "u", down: "d" },
      fusedPrefixes: ["p", "q"],
    })(x);
    expect(nodes(m.graph)[2]).toBe(
      'b.moe = moe(e.embedding, b.router.linear, b.ex.g.weight, b.ex.u.weight, b.ex.d.weight) {"num_experts":2,"top_k":2,"normalize":1,"activation":"silu"} : [num_tokens,8]',
    );
    const router = weight(m.graph, "b.router.weight")!;
    expect(router.recipe).toEqual({
      kind: "checkpoint",
      parts: [
        {
          name: "b.router.weight",
          shape: [2, 8],
          transforms: [],
          or: [
            { name: "p.gate.weight", shape: [2, 8], transforms: [] },
            { name: "q.gate.weight", shape: [2, 8], transforms: [] },
          ],
        },
      ],
      transforms: [],
      init: LINEAR_INIT,
    });
    const alt = (w: string, e: number) =>
      (weight(m.graph, `b.ex.${w}.weight`)!.recipe as { parts: { name: string; or: unknown[] }[] }).parts[e];
    const sel = (e: number) => ({ op: "select", axis: 0, index: e });
    for (const e of [0, 1]) {
      expect(alt("g", e)).toEqual({
        name: `b.ex.${e}.g.weight`,
        shape: [3, 8],
        transforms: [],
        or: ["p", "q"].map((p) => ({
          name: `${p}.experts.gate_up_proj`,
          shape: [2, 6, 8],
          transforms: [sel(e), { op: "slice", axis: 0, start: 0, end: 3 }],
        })),
      });
      expect(alt("u", e).or).toEqual(
        ["p", "q"].map((p) => ({
          name: `${p}.experts.gate_up_proj`,
          shape: [2, 6, 8],
          transforms: [sel(e), { op: "slice", axis: 0, start: 3, end: 6 }],
        })),
      );
      expect(alt("d", e)).toEqual({
        name: `b.ex.${e}.d.weight`,
        shape: [8, 3],
        transforms: [],
        or: ["p", "q"].map((p) => ({
          name: `${p}.experts.down_proj`,
          shape: [2, 8, 3],
          transforms: [sel(e)],
        })),
      });
    }
  });
});

describe("an activation the layer library lacks", () => {
  const known = "known: silu, swish, gelu, gelu_new, gelu_pytorch_tanh, gelu_fast";

  it("is refused by gatedMlp and mlp when the layer is made, naming the layer and the known names", () => {
    const m = new Module("f32", LIMITS);
    const x = m.Embedding("e", 16, 8)(m.inputIds);
    const o = { hiddenSize: 8, intermediateSize: 6 };
    // A JavaScript model file is not type-checked: any string can arrive here, an inherited key too.
    for (const name of ["relu", "toString", "constructor"]) {
      const want = `layers.0.mlp: unknown activation "${name}" (${known})`;
      expect(() => gatedMlp(m, "layers.0.mlp", { ...o, activation: name as never })).toThrow(want);
      expect(() => mlp(m, "layers.0.mlp", { ...o, activation: name as never })).toThrow(want);
    }
    // every name it knows still builds
    for (const name of Object.keys(ACTIVATIONS)) gatedMlp(m, "ok", { ...o, activation: name as never })(x);
  });

  it("in a model file's forward(), is one line naming the file's line (no TypeError from inside the library)", async () => {
    // Made here, not in the describe: a run that filters this test out (Stryker's) would never remove it.
    const dir = tmpDir("tsllm-dsl-");
    onTestFinished(() => fs.rmSync(dir, { recursive: true, force: true }));
    writeToyModel(dir);
    fs.writeFileSync(
      path.join(dir, "relu.mjs"),
      MODEL.replace('activation: "gelu_pytorch_tanh"', 'activation: "relu"'),
    );
    const out = path.join(dir, "engine");
    const err = await compileEngine({
      modelFile: path.join(dir, "relu.mjs"),
      checkpoint: path.join(dir, "ckpt"),
      sm: 90,
      dtype: "fp32",
      maxNumTokens: 16,
      maxSeqLen: 16,
      maxBatchSize: 1,
      out,
    }).catch((e: Error) => e);
    const file = path.join(dir, "relu.mjs");
    expect((err as Error).message.split("\n")).toHaveLength(1);
    expect(
      (err as Error).message.startsWith(
        `${file}: forward(): layers.0.mlp: unknown activation "relu" (${known}) (at ${file}:`,
      ),
    ).toBe(true);
    expect((err as Error).message).toMatch(/:\d+:\d+\)$/);
    expect(fs.existsSync(out)).toBe(false);
  });
});
