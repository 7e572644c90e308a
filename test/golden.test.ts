// The compiled engines match Hugging Face's own logits (fixtures' golden.safetensors) through the
// reference executor: prefill plus teacher-forced decode, fp32 math, max |Δlogit| within
// FP32_GOLDEN_BOUND (measured 2.92e-6 tiny-llama, 6.72e-5 tiny-gptj).
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { ReferenceExecutor } from "../src/executor/reference.ts";
import { checkGolden, readGolden } from "../src/golden.ts";
import { buildFixture, FP32_GOLDEN_BOUND, TINY_GPTJ, TINY_LLAMA } from "./fixtures.ts";

for (const [which, dir] of [
  ["llama", TINY_LLAMA],
  ["gptj", TINY_GPTJ],
] as const) {
  describe(`tiny-${which}`, () => {
    it(`matches the transformers goldens over prefill and teacher-forced decode (≤ ${FP32_GOLDEN_BOUND[which]})`, async () => {
      const engine = await buildFixture(which, { disablePasses: [] });
      const golden = readGolden(path.join(dir, "golden.safetensors"));
      const report = checkGolden(ReferenceExecutor.load(engine), golden);
      expect(report.perPrompt.length).toBe(3);
      for (const p of report.perPrompt) expect(p.positions).toBeGreaterThan(1);
      console.log(`tiny-${which}: max |Δlogit| ${report.maxAbs.toExponential(2)}`);
      expect(report.maxAbs).toBeLessThanOrEqual(FP32_GOLDEN_BOUND[which]); // 2.92e-6 llama, 6.72e-5 gptj
    });

    it("three prompts packed in one step give the same logits as one at a time (bit-identical)", async () => {
      const engine = await buildFixture(which);
      const golden = readGolden(path.join(dir, "golden.safetensors"));
      const ex = ReferenceExecutor.load(engine);
      const one = golden.prompts.map(
        (p, i) => ex.step([{ seqId: i, tokens: p.inputIds, logits: "all" }]).get(i)!,
      );
      golden.prompts.forEach((_, i) => ex.release(i));
      const packed = ex.step(
        golden.prompts.map((p, i) => ({ seqId: 10 + i, tokens: p.inputIds, logits: "all" })),
      );
      let max = 0;
      one.forEach((rows, i) =>
        rows.forEach((row, r) => {
          const other = packed.get(10 + i)![r];
          for (let k = 0; k < row.length; k++) max = Math.max(max, Math.abs(row[k] - other[k]));
        }),
      );
      console.log(`tiny-${which} packed vs one at a time: max |Δlogit| ${max.toExponential(2)}`);
      // Measured 0 on both fixtures: the reference executor computes each token's row on its own, so
      // packing must not change a bit.
      expect(max).toBe(0);
    });
  });
}
