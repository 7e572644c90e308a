// The tests Stryker runs against each mutant (stryker.config.mjs): the fast ones that execute the
// mutated code (src/ops, src/quant, passes, safetensors) in-process — op and quantisation unit tests,
// the pass tests, tensor parallelism and the fp32 goldens (llama, gptj, mistral, mixtral) through the
// reference executor. Left out, so that a run fits on a shared 2-core machine: tests that run the code
// in child processes (CLI, server), tokenizer and serving tests, fuzzing, the other model files'
// goldens, and the slower engine-building suites (quantised engines vs goldens, fp8 sensitivity,
// report, ONNX: each costs seconds per surviving mutant). Instrumented code runs many times slower,
// hence the long timeouts.
// (Not mergeConfig over vitest.config.ts: it would concatenate the include lists.)
import { defineConfig } from "vitest/config";
import { BaseSequencer, type TestSpecification } from "vitest/node";

/** Cheapest first: Stryker bails at a mutant's first failing test, so the unit tests should get there first. */
const ORDER = [
  "test/ops/",
  "test/quant/numerics",
  "test/quant/fp8",
  "test/checkpoint/",
  "test/rope-scaling",
  "test/passes/pattern",
  "test/tp/errors",
  "test/tp/shard",
  "test/mistral",
  "test/quant/build",
  "test/tp/tensor-parallel",
  "test/passes/",
  "test/golden",
  "test/mixtral",
];
const rank = (f: string) => {
  const i = ORDER.findIndex((p) => f.includes(`/${p}`));
  return i < 0 ? ORDER.length : i;
};

class CheapFirst extends BaseSequencer {
  override async sort(files: TestSpecification[]) {
    return [...files].sort((a, b) => rank(a.moduleId) - rank(b.moduleId));
  }
}

export default defineConfig({
  test: {
    // STRYKER_TESTS (comma-separated globs) narrows the set further, e.g. to measure before/after.
    include: process.env.STRYKER_TESTS?.split(",") ?? [
      "test/ops/**/*.test.ts",
      "test/golden.test.ts",
      "test/mistral.test.ts",
      "test/mixtral.test.ts",
      "test/rope-scaling.test.ts",
      "test/checkpoint/**/*.test.ts",
      "test/passes/**/*.test.ts",
      "test/quant/numerics.test.ts",
      "test/quant/fp8.test.ts",
      "test/quant/fp8-rows.test.ts",
      "test/quant/fp8-pool*.test.ts",
      "test/quant/build.test.ts",
      "test/tp/shard.test.ts",
      "test/tp/errors.test.ts",
      "test/tp/tensor-parallel.test.ts",
    ],
    // STRYKER_TEST_NAMES (a regular expression over "describe > test" names) narrows it to some tests of
    // those files, e.g. a file's op-level tests without its engine-building goldens.
    testNamePattern: process.env.STRYKER_TEST_NAMES,
    testTimeout: 900_000,
    hookTimeout: 900_000,
    pool: "forks",
    // One long-lived worker instead of a process per test file (3x faster here: 14 s against 40 s for
    // these files), the module registry reset per file by the setup file as isolation would.
    isolate: false,
    setupFiles: ["test/stryker-fresh-modules.ts"],
    sequence: { sequencer: CheapFirst },
  },
});
