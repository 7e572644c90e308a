// RoPE scalings against transformers' own rope functions: inv_freq and attention factor for YaRN
// (Qwen2.5-style, custom betas, DeepSeek-style mscale, explicit attention_factor) and dynamic NTK
// (at, below and beyond max_position_embeddings; partial rotary), as transformers 5.17 computed them
// (test/data/rope-ref.json).
import * as fs from "node:fs";
import { describe, expect, it } from "vitest";
import { ropeParameters } from "../src/checkpoint/hf-config.ts";
import { ropeAttentionFactor, ropeInvFreq } from "../src/ops/rope-freq.ts";

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
