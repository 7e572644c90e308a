// Module hooks for model files (registered by src/model-file.ts): `import … from "tsllm"` resolves to
// this package's public entry wherever the model file lives, and files in a model file's folder load
// as ES modules even where no package.json says "type": "module" (so a model file works from any
// folder). Plain JavaScript: hooks load in Node's hooks thread, before any TypeScript loader.
let entry;
const roots = [];

/** Called once per module.register(): each model folder is registered once (register waits for this). */
export function initialize(data) {
  entry = data.entry;
  if (!roots.includes(data.root)) roots.push(data.root);
}

export async function resolve(specifier, context, next) {
  if (specifier === "tsllm") return { url: entry, format: "module", shortCircuit: true };
  const r = await next(specifier, context);
  return isModelSource(r.url) ? { ...r, format: "module" } : r;
}

function isModelSource(url) {
  if (!url.startsWith("file:") || url.includes("/node_modules/")) return false;
  return /\.(ts|mts|js|mjs)$/.test(new URL(url).pathname) && roots.some((root) => url.startsWith(root));
}
