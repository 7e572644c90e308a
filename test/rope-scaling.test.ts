// RoPE scalings against transformers' own rope functions: inv_freq and attention factor for YaRN
// (Qwen2.5-style, custom betas, DeepSeek-style mscale, explicit attention_factor) and dynamic NTK
// (at, below and beyond max_position_embeddings; partial rotary), as transformers 5.17 computed them
// (test/data/rope-ref.json); a YaRN config reaching the graph (inv_freq table, softmax scale); llama3
// and linear scaling against transformers' formulas computed here in fp64.
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import qwen2 from "../models/qwen2.ts";
import { ropeParameters } from "../src/checkpoint/hf-config.ts";
import { Module } from "../src/dsl/module.ts";
import { ropeAttentionFactor, ropeInvFreq } from "../src/ops/rope-freq.ts";
import { TINY_QWEN2 } from "./fixtures.ts";

interface Case {
  name: string;
  config: {
    hidden_size: number;
    num_attention_heads: number;
    head_dim?: number;
    partial_rotary_factor?: number;
    max_position_embeddings: number;
    rope_parameters: Record<string, unknown>;
  };
  seq_len: number | null;
  inv_freq: number[];
  attention_factor: number;
}

const ref: { cases: Case[] } = JSON.parse(
  fs.readFileSync(new URL("./data/rope-ref.json", import.meta.url), "utf8"),
);

describe("RoPE scaling matches transformers 5.17", () => {
  it("has the reference cases", () => {
    expect(ref.cases.map((c) => c.name)).toEqual(
      expect.arrayContaining([
        "yarn_qwen25",
        "yarn_beta",
        "yarn_mscale",
        "yarn_attn_factor",
        "dynamic",
        "dynamic_partial",
      ]),
    );
  });

  for (const c of ref.cases)
    it(`${c.name}${c.seq_len === null ? "" : ` at seq_len ${c.seq_len}`}`, () => {
      const cfg = c.config;
      const { theta, scaling } = ropeParameters(cfg as never, "config.json", cfg.max_position_embeddings);
      const headDim = cfg.head_dim ?? cfg.hidden_size / cfg.num_attention_heads;
      const rotaryDim = Math.trunc(headDim * (cfg.partial_rotary_factor ?? 1));
      const inv = ropeInvFreq(rotaryDim, theta, scaling, { seqLen: c.seq_len ?? undefined });
      expect(inv.length).toBe(c.inv_freq.length);
      let worst = 0;
      c.inv_freq.forEach((want, i) => {
        worst = Math.max(worst, Math.abs(inv[i] - want) / want);
      });
      // Both sides are fp32 tables: measured worst relative difference 1.01e-7 (YaRN, under one fp32
      // ulp: transformers rounds each step to fp32); dynamic NTK matches exactly.
      expect(worst).toBeLessThanOrEqual(2e-7);
      expect(ropeAttentionFactor(scaling)).toBeCloseTo(c.attention_factor, 12);
    });
});

describe("a YaRN config compiles into the graph", () => {
  it("Qwen2.5-style rope_scaling: the inv_freq table and the softmax scale carry YaRN", () => {
    const json = JSON.parse(fs.readFileSync(path.join(TINY_QWEN2, "config.json"), "utf8"));
    delete json.rope_parameters;
    Object.assign(json, {
      rope_theta: 1e6,
      rope_scaling: { type: "yarn", factor: 4, original_max_position_embeddings: 64 },
    });
    const cfg = qwen2.parseConfig(json, "config.json");
    const m = new Module("f32", { maxBatchSize: 1, maxSeqLen: 256, maxNumTokens: 16 });
    qwen2.forward(m, cfg);
    const attn = m.graph.nodes.filter((n) => n.op === "attention");
    const factor = 0.1 * Math.log(4) + 1; // transformers' get_mscale(4)
    for (const n of attn) expect(n.attrs.scale).toBeCloseTo((factor * factor) / Math.sqrt(32), 12);
    const rope = m.graph.nodes.find((n) => n.op === "rope")!;
    const table = m.graph.values.get(rope.inputs[2]!)!;
    const want = ropeInvFreq(32, 1e6, cfg.ropeScaling);
    expect(table.recipe).toEqual({ kind: "constant", data: Array.from(want) });
    expect(want[15]).toBeLessThan(ropeInvFreq(32, 1e6, null)[15]); // low frequencies interpolated
  });
});

describe("llama3 and linear scaling against transformers' formulas, computed here in fp64", () => {
  /** transformers' _compute_default_rope_parameters: 1 / theta^(2i/dim). */
  const base = (dim: number, theta: number) =>
    Array.from({ length: dim / 2 }, (_, i) => 1 / theta ** ((2 * i) / dim));
  /** max over i of |got - want| / want. */
  const worstRel = (got: ArrayLike<number>, want: number[]) =>
    want.reduce(
      (m, w, i) => Math.max(m, Math.abs(got[i] - w) / w),
      got.length === want.length ? 0 : Infinity,
    );

  // [name, factor, low_freq_factor, high_freq_factor, original context, theta, head_dim, region sizes].
  // Region sizes by hand: wavelen_i = 2π·theta^(2i/dim) is kept below old/high, divided above old/low.
  //   Llama 3.1: 2π·500000^(i/64) < 2048 for i ≤ 28, > 8192 for i ≥ 35;
  //   low ≠ 1:   2π·10000^(i/32) < 128 for i ≤ 10, > 512 for i ≥ 16.
  for (const [name, factor, low, high, old, theta, dim, regionSizes] of [
    ["Llama 3.1", 8, 1, 4, 8192, 500000, 128, { kept: 29, divided: 29, smoothed: 6 }],
    ["low_freq_factor 2", 4, 2, 8, 1024, 10000, 64, { kept: 11, divided: 16, smoothed: 5 }],
  ] as const)
    it(`llama3 (${name}: factor ${factor}, low ${low}, high ${high}, original context ${old}, theta ${theta}, head_dim ${dim})`, () => {
      const inv = ropeInvFreq(dim, theta, {
        type: "llama3",
        factor,
        lowFreqFactor: low,
        highFreqFactor: high,
        originalMaxPositionEmbeddings: old,
      });
      // _compute_llama3_parameters, as torch.where over the whole table.
      const regions = { kept: 0, divided: 0, smoothed: 0 };
      const want = base(dim, theta).map((f) => {
        const wavelen = (2 * Math.PI) / f;
        const divided = wavelen > old / low ? f / factor : f;
        const smooth = (old / wavelen - low) / (high - low);
        const medium = !(wavelen < old / high) && !(wavelen > old / low);
        regions[medium ? "smoothed" : wavelen > old / low ? "divided" : "kept"]++;
        return medium ? ((1 - smooth) * divided) / factor + smooth * divided : divided;
      });
      expect(regions).toEqual(regionSizes); // all three branches are exercised
      const worst = worstRel(inv, want);
      console.log(`llama3 ${name} inv_freq vs fp64: worst relative error ${worst.toExponential(2)}`);
      // fp32 table (fp32 powers, reciprocals and results) vs fp64: measured 2.28e-7 (Llama 3.1), 1.45e-7.
      expect(worst).toBeLessThanOrEqual(3e-7);
    });

  it("linear: every frequency divided by the factor", () => {
    const inv = ropeInvFreq(64, 10000, { type: "linear", factor: 4 });
    // fp32 table vs fp64: measured worst relative error 6.97e-8.
    const worst = worstRel(
      inv,
      base(64, 10000).map((f) => f / 4),
    );
    console.log(`linear inv_freq vs fp64: worst relative error ${worst.toExponential(2)}`);
    expect(worst).toBeLessThanOrEqual(3e-7);
    expect(ropeAttentionFactor({ type: "linear", factor: 4 })).toBe(1);
    expect(ropeAttentionFactor(null)).toBe(1);
  });

  it("YaRN attention factor: transformers' get_mscale (1 for factor ≤ 1; mscale only with mscale_all_dim)", () => {
    // get_mscale(scale, m=1) = 1 if scale <= 1 else 0.1·m·ln(scale) + 1; the ratio of two only when both
    // mscale and mscale_all_dim are set, else get_mscale(factor).
    const yarn = (factor: number, mscale: number | null, mscaleAllDim: number | null) => ({
      type: "yarn" as const,
      factor,
      originalMaxPositionEmbeddings: 4096,
      betaFast: 32,
      betaSlow: 1,
      attentionFactor: null,
      mscale,
      mscaleAllDim,
      truncate: true,
    });
    expect(ropeAttentionFactor(yarn(0.5, null, null))).toBe(1);
    expect(ropeAttentionFactor(yarn(4, 2, null))).toBeCloseTo(0.1 * Math.log(4) + 1, 14);
    expect(ropeAttentionFactor(yarn(4, 1, 0.5))).toBeCloseTo(
      (0.1 * Math.log(4) + 1) / (0.05 * Math.log(4) + 1),
      14,
    );
  });
});
