// Loads a model file (TypeScript or JavaScript, from any folder) and checks that it default-exports a
// model definition. Model files import the DSL as "tsllm"; src/model-hooks.mjs makes that resolve to
// this package and makes the file an ES module wherever it lives. Errors name the file and line.
import * as fs from "node:fs";
import { register } from "node:module";
import * as path from "node:path";
import { pathToFileURL } from "node:url";
import type { ModelDef } from "./dsl/model.ts";

const ENTRY = new URL("./dsl/index.ts", import.meta.url).href;
const registered = new Set<string>();

function registerModelFolder(dir: string): void {
  const root = pathToFileURL(dir + path.sep).href;
  if (registered.has(root)) return;
  registered.add(root);
  register("./model-hooks.mjs", import.meta.url, { data: { entry: ENTRY, root } });
}

export async function loadModelFile(file: string): Promise<ModelDef> {
  const abs = path.resolve(file);
  if (!fs.existsSync(abs)) throw new Error(`${file}: model file not found`);
  registerModelFolder(path.dirname(abs));
  let mod: { default?: unknown };
  try {
    mod = await import(pathToFileURL(abs).href);
  } catch (e) {
    throw new Error(`${file}: cannot load model file: ${describeError(e, abs, file)}`);
  }
  const def = mod.default as ModelDef | undefined;
  if (!def || typeof def.forward !== "function" || !Array.isArray(def.architectures))
    throw new Error(
      `${file}: must default-export defineModel({ architectures, parseConfig, defaultConfig, forward })`,
    );
  return def;
}

/**
 * One line for an error raised while loading or running a model file: a syntax error as
 * file:line:column: message (esbuild's location, as tsx reports it), anything else as its message
 * plus the model file's line it came from (`shown` is the file as the user named it).
 */
export function describeError(e: unknown, modelFile: string, shown = modelFile): string {
  const err = e as Error;
  const lines = (err?.message ?? String(e)).split("\n");
  const syntax = /^Transform failed with \d+ errors?:$/.test(lines[0])
    ? /^(.*):(\d+):(\d+): ERROR: (.*)$/.exec(lines[1] ?? "")
    : null;
  if (syntax) {
    const where = path.resolve(syntax[1]) === modelFile ? shown : syntax[1];
    return `${where}:${syntax[2]}:${syntax[3]}: ${syntax[4]}`;
  }
  const at = modelFileFrame(err?.stack, modelFile, shown);
  return at ? `${lines[0]} (at ${at})` : lines[0];
}

/** The first stack frame inside the model file, as file:line:column. */
export function modelFileFrame(
  stack: string | undefined,
  modelFile: string,
  shown = modelFile,
): string | undefined {
  if (!stack) return undefined;
  const url = pathToFileURL(modelFile).href;
  for (const line of stack.split("\n")) {
    const m = /\(?((?:file:\/\/)?[^()\s]+):(\d+):(\d+)\)?\s*$/.exec(line);
    if (!m) continue;
    const f = m[1].startsWith("file:") ? m[1] : pathToFileURL(m[1]).href;
    if (f === url) return `${shown}:${m[2]}:${m[3]}`;
  }
  return undefined;
}
