// models/qwen2.ts, built only from the layer library, against transformers' own logits for
// tiny-qwen2 (bias on q/k/v only, none on o_proj; tied embeddings; RoPE theta 1e6; GQA 4/2):
// prefill plus teacher-forced decode in fp32 on the reference executor, at --tp 1 and --tp 2.
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { parseQwen2Config } from "../models/qwen2.ts";
import { compileEngine } from "../src/compile.ts";
import { openEngine } from "../src/engine/reader.ts";
import { ReferenceExecutor } from "../src/executor/reference.ts";
import { checkGolden, readGolden } from "../src/golden.ts";
import { QWEN2_MODEL, TINY_QWEN2, tmpDir } from "./fixtures.ts";

async function build(tp: number): Promise<string> {
  const out = path.join(tmpDir(), "engine");
  await compileEngine({
    modelFile: QWEN2_MODEL,
    checkpoint: TINY_QWEN2,
    sm: 90,
    tp,
    dtype: "fp32",
    maxNumTokens: 256,
    maxSeqLen: 256,
    maxBatchSize: 8,
    out,
  });
  return out;
}

describe("tiny-qwen2", () => {
  for (const tp of [1, 2])
    it(`matches the transformers goldens at --tp ${tp} (fp32, ≤ 1e-5)`, async () => {
      const report = checkGolden(
        ReferenceExecutor.load(await build(tp)),
        readGolden(path.join(TINY_QWEN2, "golden.safetensors")),
      );
      expect(report.perPrompt.length).toBe(3);
      for (const p of report.perPrompt) expect(p.top1Agree).toBe(p.positions);
      // Measured 1.9e-6 (tp 1) and 2.0e-6 (tp 2); the fixture README's fp32 bound is 1e-3.
      expect(report.maxAbs).toBeLessThanOrEqual(1e-5);
    });

  it("the engine's model record names its architecture (qwen2.ts's config has none of its own)", async () => {
    // Was missing: tsllm-inspect named the engine "model", onnx.json's architecture was "".
    expect(openEngine(await build(1)).config.model.architecture).toBe("Qwen2ForCausalLM");
  });

  it("has q/k/v biases, no o_proj bias and an lm_head tied to the embedding", async () => {
    const engine = openEngine(await build(1));
    const names = engine.ranks[0].header.values.filter((v) => v.kind === "weight").map((v) => v.name);
    expect(names).toContain("model.layers.0.self_attn.qkv_proj.bias"); // q, k, v biases, fused
    expect(names.some((n) => /o_proj\.bias/.test(n))).toBe(false);
    expect(names.some((n) => n.startsWith("lm_head"))).toBe(false);
  });
});

describe("Qwen2 sliding window", () => {
  it("use_sliding_window without a sliding_window takes Qwen2Config's default 4096 (null: none)", () => {
    // It had no window: full attention up to max_seq_len, where transformers attends within 4096 tokens.
    const json = JSON.parse(fs.readFileSync(path.join(TINY_QWEN2, "config.json"), "utf8"));
    delete json.sliding_window;
    const window = (extra: Record<string, unknown>) =>
      parseQwen2Config({ ...json, ...extra }, "c.json").slidingWindow;
    expect(window({ use_sliding_window: true })).toBe(4096);
    expect(window({ use_sliding_window: true, sliding_window: 64 })).toBe(64);
    expect(window({ use_sliding_window: true, sliding_window: null })).toBeUndefined();
    expect(window({ use_sliding_window: false })).toBeUndefined();
    expect(window({})).toBeUndefined();
  });
});
