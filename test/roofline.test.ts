// tsllm-bench's roofline bytes (src/native/roofline.ts): a decode step reads every weight but the embedding rows
// it does not gather and, in moe layers, the experts it is not routed to. Expected figures from the configs.
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { compileEngine } from "../src/compile.ts";
import { openEngine } from "../src/engine/reader.ts";
import { decodeStepWeightBytes } from "../src/native/roofline.ts";
import { buildFixture, FIXTURES, REPO, tmpDir } from "./fixtures.ts";

describe("decode-step weight bytes for the roofline", () => {
  it("tiny-mixtral bf16: top_k of num_experts at batch 1, all experts at batch 64, one embedding row per token", async () => {
    const out = path.join(tmpDir(), "engine");
    await compileEngine({
      modelFile: path.join(REPO, "models/mixtral.ts"),
      checkpoint: path.join(FIXTURES, "tiny-mixtral"),
      sm: 90,
      dtype: "bf16",
      maxNumTokens: 64,
      maxSeqLen: 64,
      maxBatchSize: 64,
      out,
    });
    const h = openEngine(out).ranks[0].header;
    // config: 2 layers, 4 experts of H 128 × I 192 (w1, w3, w2), top-2, vocab 512; bf16.
    const experts = 2 * 3 * 4 * 192 * 128 * 2;
    const embedding = 512 * 128 * 2;
    const row = 128 * 2;
    const one = decodeStepWeightBytes(h, 1);
    expect(one.expertBytes).toBe(experts);
    expect(one.expertFraction).toBe(0.5);
    expect(one.bytes).toBe(one.totalBytes - embedding + row - experts / 2);
    const b64 = decodeStepWeightBytes(h, 64);
    expect(b64.expertFraction).toBeCloseTo(1, 12);
    expect(b64.bytes).toBeCloseTo(one.totalBytes - embedding + 64 * row, 0);
    // 2 tokens on 4 experts, top-2: 1 − (1/2)² of them expected.
    expect(decodeStepWeightBytes(h, 2).expertFraction).toBe(0.75);
  });

  it("a dense engine (tiny-llama fp16): everything but the embedding rows not gathered", async () => {
    const h = openEngine(await buildFixture("llama", { dtype: "fp16" })).ranks[0].header;
    const r = decodeStepWeightBytes(h, 1);
    expect([r.expertBytes, r.expertFraction]).toEqual([0, 1]);
    expect(r.bytes).toBe(r.totalBytes - 512 * 128 * 2 + 128 * 2);
  });
});
