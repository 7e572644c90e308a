// src/engine/header.ts (graph → rank header) on a graph written out here, and src/engine/format.ts's helpers
// and build-config refusals (docs/engine-format.md): values read back, exact messages.
import { describe, expect, it } from "vitest";
import { alignUp, BuildConfig, EngineHeader, isPlainFileName, valueDtypeOf } from "../src/engine/format.ts";
import {
  buildHeader,
  isRandomStored,
  liveValues,
  rankWeightSeed,
  weightBytes,
} from "../src/engine/header.ts";
import type { Graph, Value } from "../src/ir/types.ts";
import { weightSeed } from "../src/weights/random.ts";
import type { WeightRecipe } from "../src/weights/recipe.ts";
import { tinyLlamaBuild } from "./fixtures.ts";

const ckpt = (mean: number, scale: number): WeightRecipe => ({
  kind: "checkpoint",
  parts: [],
  transforms: [],
  init: { mean, scale },
});

/** Ids out of order in the nodes, a dead weight (9), a constant, a zero-size weight, symbolic dims. */
function graph(): Graph {
  const T = { sym: "T", max: 8 };
  const vs: Value[] = [
    { id: 0, name: "ids", dtype: "i32", shape: [T], kind: "input" },
    { id: 1, name: "emb", dtype: "f32", shape: [10, 3], kind: "weight", recipe: ckpt(0.5, 0.25) },
    {
      id: 2,
      name: "rope",
      dtype: "f16",
      shape: [{ sym: "S", max: 5 }],
      kind: "weight",
      recipe: { kind: "constant", data: [1] },
    },
    { id: 3, name: "h", dtype: "f32", shape: [T, 3], kind: "activation" },
    { id: 4, name: "w", dtype: "bf16", shape: [3, 3], kind: "weight", recipe: ckpt(0, 0.1) },
    { id: 5, name: "empty", dtype: "f32", shape: [0, 3], kind: "weight", recipe: ckpt(0, 1) },
    { id: 6, name: "logits", dtype: "f32", shape: [T, 10], kind: "activation" },
    { id: 7, name: "positions", dtype: "i32", shape: [T], kind: "input" },
    { id: 9, name: "dead", dtype: "f32", shape: [1000], kind: "weight", recipe: ckpt(0, 1) },
  ];
  return {
    values: new Map(vs.map((v) => [v.id, v])),
    nodes: [
      { op: "matmul", inputs: [3, 4, null], outputs: [6], attrs: { t: true } },
      { op: "embed", inputs: [0, 1, 2, 5], outputs: [3], attrs: {}, scope: "model.embed" },
    ],
    inputs: { input_ids: 0, positions: 7 }, // positions used by no node
    outputs: { logits: 6 },
    meta: { numLayers: 2, numKvHeads: 1, headDim: 4, arena: { bytes: 512, offsets: { "3": 0, "6": 256 } } },
    nextId: 10,
  };
}

describe("buildHeader", () => {
  it("stored weights: live values only, in id order, offsets packed at 256-byte steps", () => {
    const h = buildHeader({ rank: 1, graph: graph() }, tinyLlamaBuild({ sm: 89, max_seq_len: 6 }));
    expect(EngineHeader.parse(h)).toEqual(h);
    expect(h.values.map((v) => v.id)).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
    expect(h.values[2]).toEqual({
      id: 2,
      name: "rope",
      dtype: "f16",
      shape: [{ sym: "S", max: 5 }],
      kind: "weight",
    });
    expect(h.weights).toEqual([
      { value: 1, offset: 0, nbytes: 120, random: null },
      { value: 2, offset: 256, nbytes: 10, random: null },
      { value: 4, offset: 512, nbytes: 18, random: null },
      { value: 5, offset: 768, nbytes: 0, random: null },
    ]);
    expect(h).toMatchObject({
      format_version: 1,
      rank: 1,
      tp: 1,
      sm: 89,
      dtype: "fp32",
      limits: { max_batch_size: 1, max_seq_len: 6, max_num_tokens: 8 },
      kv_cache: { num_layers: 2, num_kv_heads: 1, head_dim: 4, dtype: "fp32", tokens_per_block: 32 },
      inputs: { input_ids: 0, positions: 7 },
      outputs: { logits: 6 },
      arena: { bytes: 512, offsets: { "3": 0, "6": 256 } },
    });
    expect(h.nodes).toEqual([
      { op: "matmul", inputs: [3, 4, null], outputs: [6], attrs: { t: true } },
      { op: "embed", inputs: [0, 1, 2, 5], outputs: [3], attrs: {}, scope: "model.embed" },
    ]);
    expect("scope" in h.nodes[0]).toBe(false);
  });

  it("an offset exactly on a 256-byte step is not moved on", () => {
    const g = graph();
    g.values.get(1)!.shape = [16, 4]; // 256 bytes
    const h = buildHeader({ rank: 0, graph: g }, tinyLlamaBuild());
    expect(h.weights.map((w) => w.offset)).toEqual([0, 256, 512, 768]);
  });

  it("random weights: checkpoint weights stored as a seed per rank and name with their init, constants as bytes", () => {
    const build = tinyLlamaBuild({ random_weights: true, seed: 11, kv_cache_dtype: "fp8" });
    const h = buildHeader({ rank: 2, graph: graph() }, build);
    const seed = (name: string) => weightSeed(11 + 2 * 7919, name);
    expect(h.weights).toEqual([
      { value: 1, offset: 0, nbytes: 0, random: { seed: seed("emb"), mean: 0.5, scale: 0.25 } },
      { value: 2, offset: 0, nbytes: 10, random: null },
      { value: 4, offset: 0, nbytes: 0, random: { seed: seed("w"), mean: 0, scale: 0.1 } },
      { value: 5, offset: 0, nbytes: 0, random: { seed: seed("empty"), mean: 0, scale: 1 } },
    ]);
    expect(h.kv_cache.dtype).toBe("fp8");
    expect(rankWeightSeed(build, 2, "emb")).toBe(seed("emb"));
    expect(rankWeightSeed(build, 0, "emb")).toBe(weightSeed(11, "emb"));
    expect(seed("emb")).not.toBe(weightSeed(11, "emb"));
  });

  it("isRandomStored, weightBytes and liveValues", () => {
    const g = graph();
    const on = tinyLlamaBuild({ random_weights: true });
    const off = tinyLlamaBuild();
    expect(isRandomStored(g.values.get(1)!, on)).toBe(true);
    expect(isRandomStored(g.values.get(1)!, off)).toBe(false);
    expect(isRandomStored(g.values.get(2)!, on)).toBe(false);
    expect(isRandomStored(g.values.get(0)!, on)).toBe(false);
    expect(weightBytes(g.values.get(2)!)).toBe(10);
    expect(weightBytes(g.values.get(4)!)).toBe(18);
    expect(liveValues(g).map((v) => v.name)).toEqual([
      "ids",
      "emb",
      "rope",
      "h",
      "w",
      "empty",
      "logits",
      "positions",
    ]);
  });
});

describe("format.ts", () => {
  it("valueDtypeOf", () => {
    expect(valueDtypeOf("fp32")).toBe("f32");
    expect(valueDtypeOf("fp16")).toBe("f16");
    expect(valueDtypeOf("bf16")).toBe("bf16");
  });

  it("alignUp", () => {
    expect([0, 1, 255, 256, 257].map((n) => alignUp(n, 256))).toEqual([0, 256, 256, 256, 512]);
  });

  it("isPlainFileName: letters, digits, _ . - and no leading dot or dash, at most 255 characters", () => {
    for (const ok of ["rank0.engine", "_a", "A-b_c.9", "tokenizer.json", "x".repeat(255), "9"])
      expect(isPlainFileName(ok), ok).toBe(true);
    for (const bad of [
      "",
      ".hidden",
      "..",
      "-x",
      "a/b",
      "a\\b",
      "/abs",
      "a b",
      "x".repeat(256),
      "ä",
      "a\nb",
      "rank0.engine\n",
    ])
      expect(isPlainFileName(bad), JSON.stringify(bad)).toBe(false);
  });

  it("BuildConfig refusals name what is wrong", () => {
    const issue = (extra: Record<string, unknown>) => {
      const r = BuildConfig.safeParse({ ...tinyLlamaBuild(), ...extra });
      expect(r.success).toBe(false);
      return r.error!.issues.map((i) => `${i.path.join(".")}: ${i.message}`);
    };
    expect(issue({ sm: 75 })).toEqual([
      "sm: the tsllm CUDA runtime needs sm 80 or newer (Ampere and later); such an engine could never load",
    ]);
    expect(issue({ sm: 81 })).toEqual([
      "sm: not a known GPU architecture (known: 80, 86, 87, 89, 90, 100, 120)",
    ]);
    expect(issue({ tp: 3 })).toEqual(["tp: --tp must be 1, 2, 4 or 8"]);
    expect(issue({ tokens_per_block: 48 })).toEqual([
      "tokens_per_block: --tokens-per-block must be a power of two",
    ]);
    for (const sm of [80, 86, 87, 89, 90, 100, 120])
      expect(BuildConfig.parse({ ...tinyLlamaBuild(), sm }).sm).toBe(sm);
    for (const tp of [1, 2, 4, 8]) expect(BuildConfig.parse({ ...tinyLlamaBuild(), tp }).tp).toBe(tp);
    for (const n of [1, 2, 64])
      expect(BuildConfig.parse({ ...tinyLlamaBuild(), tokens_per_block: n }).tokens_per_block).toBe(n);
    const d = BuildConfig.parse({ ...tinyLlamaBuild() });
    expect([d.moe_ep_size, d.quant, d.group_size, d.passes]).toEqual([1, "none", 128, []]);
  });
});
