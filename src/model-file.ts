// Loads a model file (TypeScript, at run time) and checks that it default-exports a model definition.
import * as fs from "node:fs";
import * as path from "node:path";
import { pathToFileURL } from "node:url";
import type { ModelDef } from "./dsl/model.ts";

export async function loadModelFile(file: string): Promise<ModelDef> {
  const abs = path.resolve(file);
  if (!fs.existsSync(abs)) throw new Error(`${file}: model file not found`);
  let mod: { default?: unknown };
  try {
    mod = await import(pathToFileURL(abs).href);
  } catch (e) {
    throw new Error(`${file}: cannot load model file: ${(e as Error).message.split("\n")[0]}`);
  }
  const def = mod.default as ModelDef | undefined;
  if (!def || typeof def.forward !== "function" || !Array.isArray(def.architectures))
    throw new Error(
      `${file}: must default-export defineModel({ architectures, parseConfig, defaultConfig, forward })`,
    );
  return def;
}
