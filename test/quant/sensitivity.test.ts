// Why the GPU suite bounds FP8 W8A8 engines against the CPU reference by a measured sensitivity instead of 0.05
// (test-gpu/quant.test.ts): per-token E4M3 activation quantisation turns an fp16 ulp of difference in an activation
// into a neighbouring E4M3 code (a 6-12% change of that element). The reference executor's two precisions of the
// same engine — activations stored in the engine's dtype at every op output (the default, as the CUDA runtime stores
// them) and kept in fp32 — differ ~65× more on an fp8 engine than on an fp16 one. And the engine-precision mode
// itself hides nothing: on the fp16 engine it meets the goldens as closely as the GPU does (0.0028 measured there).
import * as path from "node:path";
import { expect, it } from "vitest";
import { ReferenceExecutor } from "../../src/executor/reference.ts";
import { checkGolden, readGolden } from "../../src/golden.ts";
import { maxAbsDiff, teacherForced } from "../../test-gpu/helpers.ts";
import { buildFixture, TINY_LLAMA } from "../fixtures.ts";

const golden = readGolden(path.join(TINY_LLAMA, "golden.safetensors"));

/** Max |Δlogit| between the reference at the engine's precision and with fp32 activations (teacher-forced). */
function sensitivity(dir: string): number {
  const a = teacherForced(ReferenceExecutor.load(dir), golden, 100);
  const b = teacherForced(ReferenceExecutor.load(dir, { roundActivations: false }), golden, 100);
  return Math.max(...a.map((r, i) => maxAbsDiff(r, b[i])));
}

it("tiny-llama fp16: fp16 vs fp32 activations ≤ 0.01, fp16-stored reference vs goldens ≤ 0.01", async () => {
  const dir = await buildFixture("llama", { dtype: "fp16" });
  const s = sensitivity(dir);
  const g = checkGolden(ReferenceExecutor.load(dir), golden).maxAbs;
  console.log(`tiny-llama fp16: fp16 vs fp32 activations ${s.toFixed(4)}, vs goldens ${g.toFixed(4)}`);
  expect(s).toBeLessThanOrEqual(0.01); // measured 0.0029
  expect(g).toBeLessThanOrEqual(0.01); // measured 0.0029
});

it("tiny-llama fp8 (W8A8): fp16 vs fp32 activations ≥ 0.1 (the format's sensitivity)", async () => {
  const dir = await buildFixture("llama", { dtype: "fp16", quant: "fp8" });
  const s = sensitivity(dir);
  console.log(`tiny-llama fp8: fp16 vs fp32 activations ${s.toFixed(4)}`);
  expect(s).toBeGreaterThanOrEqual(0.1); // measured 0.1949
});
