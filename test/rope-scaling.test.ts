// RoPE scalings against transformers' own rope functions: inv_freq and attention factor for YaRN
// (Qwen2.5-style, custom betas, DeepSeek-style mscale, explicit attention_factor) and dynamic NTK
// (at, below and beyond max_position_embeddings; partial rotary), as transformers 5.17 computed them
// (test/data/rope-ref.json); and a YaRN config reaching the graph (inv_freq table, softmax scale).
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import qwen2 from "../models/qwen2.ts";
import { ropeParameters } from "../src/checkpoint/hf-config.ts";
import { Module } from "../src/dsl/module.ts";
import { ropeAttentionFactor, ropeInvFreq } from "../src/ops/rope-freq.ts";
import { FIXTURES } from "./fixtures.ts";

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
    const json = JSON.parse(fs.readFileSync(path.join(FIXTURES, "tiny-qwen2/config.json"), "utf8"));
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
