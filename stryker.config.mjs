// Mutation testing (issue 9): a one-off measurement, not run in CI. `npm run mutation`.
// The machine is shared, so one test process at a time (concurrency 1) and per-test coverage so each
// mutant runs only the tests that reach it. Results are kept incrementally in an ignored directory.
/** @type {import('@stryker-mutator/api/core').PartialStrykerOptions} */
export default {
  testRunner: "vitest",
  // (No `pool` here: the vitest runner of Stryker 9, which package.json pins for Node 20, rejects the
  // option and runs its tests in one worker thread.)
  // related: false. By default the runner narrows each mutant's run to the test files that import the mutated file
  // (vitest's related filter), so code that tests reach only through a dynamic import() (the DSL through the model
  // files, src/model-file.ts) was never run against the goldens: src/dsl/layers.ts scored 26.92 % with the filter,
  // 96.15 % without (docs/mutation.md "Session 33 (model DSL)"). Per-test coverage still picks the tests per mutant.
  vitest: { configFile: "stryker.vitest.config.ts", related: false },
  plugins: ["@stryker-mutator/vitest-runner"],
  mutate: ["src/ops/**/*.ts", "src/quant/**/*.ts", "passes/**/*.ts", "src/checkpoint/safetensors.ts"],
  // The sandbox sits in .stryker-tmp/sandbox-*/, so the tests' `../shared` is .stryker-tmp/shared,
  // which `npm run mutation` links to the real ../shared.
  tempDirName: ".stryker-tmp",
  cleanTempDir: false,
  ignorePatterns: ["test-gpu", "docs", "native/build", "/reports"],
  coverageAnalysis: "perTest",
  // Module-level code (op registrations) would need every test for each mutant: reported as ignored.
  ignoreStatic: true,
  concurrency: 1,
  dryRunTimeoutMinutes: 30, // the whole suite once, instrumented, on a loaded machine
  timeoutMS: 60_000,
  timeoutFactor: 2,
  incremental: true,
  incrementalFile: ".stryker-tmp/incremental.json",
  reporters: ["progress-append-only", "clear-text", "json"],
  jsonReporter: { fileName: ".stryker-tmp/reports/mutation.json" },
  thresholds: { high: 80, low: 60, break: null },
};
