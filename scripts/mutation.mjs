// Runs Stryker (stryker.config.mjs) through its programmatic API. StrykerJS 10 refuses Node < 22 by
// a version guard in its CLI module alone (which the package index re-exports); the project targets
// Node 20, where the runner itself works, so this imports the Stryker class from beside the index.
// Not part of CI. Extra arguments replace the config's `mutate` globs.
// MUTATION_RUN=name keeps that run's incremental results and JSON report apart
// (.stryker-tmp/incremental-name.json, .stryker-tmp/reports/mutation-name.json), so the scope can be
// measured in chunks on a shared machine; MUTATION_CONCURRENCY and MUTATION_TIMEOUT_MS override the
// config's concurrency and timeoutMS.
const index = import.meta.resolve("@stryker-mutator/core");
const { Stryker } = await import(new URL("./stryker.js", index).href);

const args = process.argv.slice(2);
const options = { configFile: "stryker.config.mjs" };
if (args.length > 0) options.mutate = args;
const run = process.env.MUTATION_RUN;
if (run) {
  options.incrementalFile = `.stryker-tmp/incremental-${run}.json`;
  options.jsonReporter = { fileName: `.stryker-tmp/reports/mutation-${run}.json` };
}
if (process.env.MUTATION_CONCURRENCY) options.concurrency = Number(process.env.MUTATION_CONCURRENCY);
// A mutant that loops forever costs timeoutMS (+ a runner restart) before it counts as detected.
if (process.env.MUTATION_TIMEOUT_MS) options.timeoutMS = Number(process.env.MUTATION_TIMEOUT_MS);
// The tests then memoise nothing (test/passes/helpers.ts MEMOISE), so that per-test coverage credits
// each mutant to every test that runs it; the Stryker processes inherit the variable.
process.env.TSLLM_MUTATION = "1";
const results = await new Stryker(options).runMutationTest();
console.log(`${results.length} mutants`);
