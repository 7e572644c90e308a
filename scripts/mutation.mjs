// Runs Stryker (stryker.config.mjs) through its programmatic API. StrykerJS 10 refuses Node < 22 by
// a version guard in its CLI module alone (which the package index re-exports); the project targets
// Node 20, where the runner itself works, so this imports the Stryker class from beside the index.
// Not part of CI. Extra arguments replace the config's `mutate` globs.
const index = import.meta.resolve("@stryker-mutator/core");
const { Stryker } = await import(new URL("./stryker.js", index).href);

const args = process.argv.slice(2);
const mutate = args.length > 0 ? { mutate: args } : {};
const results = await new Stryker({ configFile: "stryker.config.mjs", ...mutate }).runMutationTest();
console.log(`${results.length} mutants`);
