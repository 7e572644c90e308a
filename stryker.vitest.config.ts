// The tests Stryker runs against each mutant (stryker.config.mjs): the fast ones that execute the
// mutated code (src/ops, src/quant, passes, safetensors) in-process — op and quantisation unit tests,
// the pass tests and the fp32 goldens through the reference executor. Left out, so that a run fits on
// a shared 2-core machine: tests that run the code in child processes (CLI, server), tokenizer and
// serving tests, and the slow engine-building suites (quantised engines, tensor parallel, report,
// ONNX). Instrumented code runs many times slower, hence the long timeouts.
// (Not mergeConfig over vitest.config.ts: it would concatenate the include lists.)
import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    // STRYKER_TESTS (comma-separated globs) narrows the set further, e.g. to measure before/after.
    include: process.env.STRYKER_TESTS?.split(",") ?? [
      "test/ops/**/*.test.ts",
      "test/golden.test.ts",
      "test/mistral.test.ts",
      "test/checkpoint/**/*.test.ts",
      "test/passes/**/*.test.ts",
      "test/quant/numerics.test.ts",
      "test/quant/fp8.test.ts",
      "test/tp/shard.test.ts",
      "test/tp/errors.test.ts",
    ],
    testTimeout: 900_000,
    hookTimeout: 900_000,
    pool: "forks",
  },
});
