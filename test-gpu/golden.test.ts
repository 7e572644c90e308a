// The native CUDA runtime reproduces Hugging Face's logits (fixtures' golden.safetensors) on engines
// compiled by the TypeScript compiler: prefill plus teacher-forced decode, fp16 and bf16.
// Bounds per fixture and dtype, ~3.5× the max |Δlogit| measured on an H100 (one-by-one runs; logit
// std ≈ 0.7, so bf16's 8-bit mantissa costs ≈ 8× fp16's 11-bit one):
//   tiny-llama  fp16 0.0028 → 0.01    bf16 0.0222 → 0.075
//   tiny-gptj   fp16 0.0019 → 0.0075  bf16 0.0186 → 0.065
import { afterAll, describe, expect, it } from "vitest";
import { checkGolden, readGolden } from "../src/golden.ts";
import { CudaEngine, type CudaLoadOptions } from "../src/native/binding.ts";
import { CudaExecutor } from "../src/native/executor.ts";
import { goldenFile, maxAbsDiff, packedVsOneByOne, teacherForced, tinyEngine } from "./helpers.ts";

const BOUND = {
  llama: { fp16: 0.01, bf16: 0.075 }, // measured 0.0028, 0.0222
  gptj: { fp16: 0.0075, bf16: 0.065 }, // measured 0.0019, 0.0186
  qwen2: { fp16: 0.05, bf16: 0.05 }, // not yet measured on a GPU: the fixture README's half-precision bound
  // Not yet measured on a GPU; the CPU reference executor with activations rounded to the dtype (the GPU's
  // storage) gives 0.0025 / 0.0179 (tiny-llama the same way: 0.0029 / 0.0226, its GPU 0.0028 / 0.0222).
  // fp16 ~4x that; bf16 issue 14's acceptance bound.
  mixtral: { fp16: 0.01, bf16: 0.05 },
} as const;

const open: CudaEngine[] = [];
function executor(dir: string, o: CudaLoadOptions = {}): CudaExecutor {
  const e = CudaEngine.load(dir, o);
  open.push(e);
  return new CudaExecutor(e);
}
afterAll(() => {
  for (const e of open) e.close();
});

for (const which of ["llama", "gptj", "qwen2", "mixtral"] as const) {
  for (const dtype of ["fp16", "bf16"] as const) {
    describe(`tiny-${which} ${dtype} on CUDA`, () => {
      const golden = readGolden(goldenFile(which));
      const bound = BOUND[which][dtype];

      it(`matches the goldens over prefill and teacher-forced decode, one prompt at a time (≤ ${bound})`, async () => {
        const ex = executor(await tinyEngine(which, dtype));
        const r = checkGolden(ex, golden);
        console.log(
          `tiny-${which} ${dtype} one-by-one: max |Δlogit| ${r.maxAbs.toFixed(4)}`,
          r.perPrompt.map((p) => [
            p.prefillMaxAbs.toFixed(4),
            p.decodeMaxAbs.toFixed(4),
            `${p.top1Agree}/${p.positions}`,
          ]),
        );
        expect(r.perPrompt.length).toBe(3);
        for (const p of r.perPrompt) expect(p.positions).toBeGreaterThan(p.positions > 0 ? 1 : 0);
        expect(r.maxAbs).toBeLessThanOrEqual(bound);
      });

      it(`matches the goldens with the three prompts packed in each step (≤ ${bound})`, async () => {
        const ex = executor(await tinyEngine(which, dtype));
        const r = checkGolden(ex, golden, { batched: true, seqBase: 2000 });
        console.log(`tiny-${which} ${dtype} batched: max |Δlogit| ${r.maxAbs.toFixed(4)}`);
        expect(r.maxAbs).toBeLessThanOrEqual(bound);
      });

      // Packed and single steps run the same kernels on different row counts, so cuBLASLt may pick other
      // tilings (other fp32 summation orders): equal up to a few half-precision ulps.
      it("three prompts packed in one step give the logits of one at a time (≤ 0.02)", async () => {
        const max = packedVsOneByOne(executor(await tinyEngine(which, dtype)), golden, 100);
        console.log(`tiny-${which} ${dtype} packed vs single: ${max}`);
        expect(max).toBeLessThanOrEqual(0.02);
      });

      it("tokens_per_block 4 gives the logits of 32-token blocks (≤ 0.01)", async () => {
        const big = teacherForced(executor(await tinyEngine(which, dtype)), golden, 300);
        const small = teacherForced(
          executor(await tinyEngine(which, dtype, { tokensPerBlock: 4 })),
          golden,
          400,
        );
        const max = Math.max(...big.map((b, i) => maxAbsDiff(b, small[i])));
        console.log(`tiny-${which} ${dtype} tpb 4 vs 32: ${max}`);
        expect(max).toBeLessThanOrEqual(0.01);
      });
    });
  }
}
