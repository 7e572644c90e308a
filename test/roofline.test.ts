// tsllm-bench's roofline bytes (src/native/roofline.ts): a decode step reads every weight but the embedding rows
// it does not gather and, in moe layers, the experts it is not routed to. Expected figures from the configs.
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { compileEngine } from "../src/compile.ts";
import { EngineHeader } from "../src/engine/format.ts";
import { openEngine } from "../src/engine/reader.ts";
import { decodeStepWeightBytes } from "../src/native/roofline.ts";
import { buildFixture, MIXTRAL_MODEL, TINY_MIXTRAL, tmpDir } from "./fixtures.ts";

describe("decode-step weight bytes for the roofline", () => {
  it("tiny-mixtral bf16: top_k of num_experts at batch 1, all experts at batch 64, one embedding row per token", async () => {
    const out = path.join(tmpDir(), "engine");
    await compileEngine({
      modelFile: MIXTRAL_MODEL,
      checkpoint: TINY_MIXTRAL,
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

// Totals counted from the configs by hand, and a hand-written engine header for what no compiled engine has:
// a symbolic row count (counted at its max), an expert layer's missing scales, a batch larger than the table.
describe("decode-step weight bytes: totals from the config and hand-built headers", () => {
  it("tiny-llama fp16: every weight counted once in its stored dtype; a batch beyond the vocab reads the table once", async () => {
    const engine = await buildFixture("llama", { dtype: "fp16" });
    const h = openEngine(engine).ranks[0].header;
    fs.rmSync(path.dirname(engine), { recursive: true, force: true });
    // config: hidden 128, 4 heads × head_dim 32 (q, o 128 × 128), 2 kv heads (k, v 64 × 128), intermediate 352
    // (gate, up 352 × 128, down 128 × 352), two rms norms of 128 per layer; 2 layers; vocab 512 (embedding and
    // an untied lm_head 512 × 128), final norm 128. fp16: 2 bytes each. Plus the rope table the fused attention
    // reads: head_dim / 2 = 16 inverse frequencies in f32.
    const layer = 2 * 128 + 128 * 128 * 2 + 64 * 128 * 2 + 352 * 128 * 3;
    const elements = 2 * layer + 512 * 128 * 2 + 128;
    const total = elements * 2 + 16 * 4;
    const r1 = decodeStepWeightBytes(h, 1);
    expect(r1.totalBytes).toBe(total);
    // Batch 1: one 256-byte row of the 131,072-byte embedding table.
    expect(r1.bytes).toBe(total - 512 * 128 * 2 + 128 * 2);
    expect(decodeStepWeightBytes(h, 8).bytes).toBe(total - 512 * 128 * 2 + 8 * 128 * 2);
    // 512 rows at most: a batch of 512 or of 1024 tokens reads the whole table, once.
    expect(decodeStepWeightBytes(h, 512).bytes).toBe(total);
    expect(decodeStepWeightBytes(h, 1024).bytes).toBe(total);
  });

  // A header with only what the roofline reads (values, weights, nodes) filled in meaningfully.
  function header(
    values: EngineHeader["values"],
    nodes: EngineHeader["nodes"],
    weights: number[],
  ): EngineHeader {
    return EngineHeader.parse({
      format_version: 1,
      rank: 0,
      tp: 1,
      sm: 90,
      dtype: "fp16",
      limits: { max_batch_size: 8, max_seq_len: 16, max_num_tokens: 16 },
      kv_cache: { num_layers: 1, num_kv_heads: 1, head_dim: 8, dtype: "fp16", tokens_per_block: 16 },
      values,
      inputs: { input_ids: 0 },
      outputs: {},
      weights: weights.map((value) => ({ value, offset: 0, nbytes: 0, random: null })),
      nodes,
      arena: { bytes: 0, offsets: {} },
    });
  }
  const T = { sym: "num_tokens", max: 16 };
  const v = (
    id: number,
    dtype: EngineHeader["values"][number]["dtype"],
    shape: EngineHeader["values"][number]["shape"],
    kind: "input" | "weight" | "activation" = "weight",
  ) => ({
    id,
    name: `v${id}`,
    dtype,
    shape,
    kind,
  });

  it("symbolic dims count at their max: an embedding table of up to 100 rows of 8 f16", () => {
    const h = header(
      [
        v(0, "i32", [T], "input"),
        v(1, "f16", [{ sym: "vocab", max: 100 }, 8]),
        v(2, "f16", [T, 8], "activation"),
        v(3, "f32", [8, 8]),
      ],
      [
        { op: "embedding", inputs: [0, 1], outputs: [2], attrs: {} },
        { op: "linear", inputs: [2, 3, null], outputs: [4], attrs: {} },
      ],
      [1, 3],
    );
    // Table 100 × 8 × 2 = 1600 bytes, rows of 16; the f32 8 × 8 weight: 256 bytes.
    const r = decodeStepWeightBytes(h, 3);
    expect(r).toEqual({ bytes: 3 * 16 + 256, totalBytes: 1600 + 256, expertBytes: 0, expertFraction: 1 });
    expect(decodeStepWeightBytes(h, 200).bytes).toBe(1600 + 256);
  });

  it("an int8 expert layer without w3 scales: experts and their scales at the routed fraction, the rest whole", () => {
    // 8 experts, top-2; w1, w3, w2 of 8 × 4 × 8 i8 (256 bytes each), w1 and w2 scales of 8 × 4 f32 (128 bytes
    // each), w3's scales missing; the router weight (8 × 8 f16, 128 bytes) is read whole.
    const h = header(
      [
        v(0, "f16", [T, 8], "input"),
        v(1, "f16", [8, 8]),
        v(2, "f16", [T, 8], "activation"),
        v(3, "i8", [8, 4, 8]),
        v(4, "i8", [8, 4, 8]),
        v(5, "i8", [8, 8, 4]),
        v(6, "f32", [8, 4]),
        v(7, "f32", [8, 8]),
      ],
      [
        { op: "linear", inputs: [0, 1, null], outputs: [2], attrs: {} },
        {
          op: "moe",
          inputs: [0, 2, 3, 4, 5, 6, null, 7],
          outputs: [8],
          attrs: { num_experts: 8, top_k: 2, quant: "int8-wo" },
        },
      ],
      [1, 3, 4, 5, 6, 7],
    );
    const experts = 3 * 256 + 128 + 256;
    const one = decodeStepWeightBytes(h, 1);
    expect(one).toEqual({
      bytes: 128 + experts / 4,
      totalBytes: 128 + experts,
      expertBytes: experts,
      expertFraction: 0.25,
    });
    // 3 tokens: 1 − (3/4)³ = 37/64 of the experts.
    const three = decodeStepWeightBytes(h, 3);
    expect(three.expertFraction).toBe(37 / 64);
    expect(three.bytes).toBe(128 + (experts * 37) / 64);
  });
});
