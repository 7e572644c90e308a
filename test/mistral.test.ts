// Mistral-style configs build with the Llama model file; the sliding window caps max_seq_len.

import * as fs from "node:fs";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { compileEngine } from "../src/compile.ts";
import { openEngine } from "../src/engine/reader.ts";
import { LLAMA_MODEL, tmpDir } from "./fixtures.ts";

const mistral = {
  architectures: ["MistralForCausalLM"],
  vocab_size: 256,
  hidden_size: 64,
  intermediate_size: 128,
  num_hidden_layers: 1,
  num_attention_heads: 4,
  num_key_value_heads: 1,
  rms_norm_eps: 1e-5,
  max_position_embeddings: 4096,
  rope_theta: 1000000,
  sliding_window: 512,
  hidden_act: "silu",
};

describe("Mistral-style config", () => {
  it("builds, with the sliding window as the default max_seq_len", async () => {
    const dir = tmpDir();
    fs.writeFileSync(path.join(dir, "config.json"), JSON.stringify(mistral));
    const out = path.join(dir, "e");
    await compileEngine({ modelFile: LLAMA_MODEL, config: path.join(dir, "config.json"), sm: 90, out });
    const e = openEngine(out);
    expect(e.config.build.max_seq_len).toBe(512);
    expect(e.ranks[0].header.kv_cache.num_kv_heads).toBe(1);
  });

  it("an absent sliding_window is MistralConfig's default 4096 (null: none; Llama has no window)", async () => {
    // It built full attention up to max_position_embeddings, where transformers attends within 4096 tokens.
    const { sliding_window: _, ...noWindow } = mistral;
    const maxSeqLen = async (json: Record<string, unknown>) => {
      const dir = tmpDir();
      fs.writeFileSync(path.join(dir, "config.json"), JSON.stringify(json));
      const out = path.join(dir, "e");
      await compileEngine({ modelFile: LLAMA_MODEL, config: path.join(dir, "config.json"), sm: 90, out });
      return openEngine(out).config.build.max_seq_len;
    };
    const long = { ...noWindow, max_position_embeddings: 32768 };
    expect(await maxSeqLen(long)).toBe(4096);
    expect(await maxSeqLen({ ...long, sliding_window: null })).toBe(8192);
    expect(await maxSeqLen({ ...long, architectures: ["LlamaForCausalLM"] })).toBe(8192);
  });

  it("refuses a max_seq_len beyond the window", async () => {
    const dir = tmpDir();
    fs.writeFileSync(path.join(dir, "config.json"), JSON.stringify(mistral));
    const out = path.join(dir, "e");
    await expect(
      compileEngine({
        modelFile: LLAMA_MODEL,
        config: path.join(dir, "config.json"),
        sm: 90,
        out,
        maxSeqLen: 1024,
      }),
    ).rejects.toThrow(/--max-seq-len 1024 exceeds the model's sliding_window 512/);
    expect(fs.existsSync(out)).toBe(false);
  });
});
