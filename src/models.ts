// The bundled model files (models/*.ts) and the architectures they implement: the list is read from
// the files themselves, so a new model file is picked up without editing anything else.
import * as fs from "node:fs";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { ConfigError } from "./checkpoint/errors.ts";
import { configArchitecture, readConfigJson } from "./checkpoint/hf-config.ts";
import type { BaseConfig, ModelDef } from "./dsl/model.ts";
import { loadModelFile } from "./model-file.ts";

export const MODELS_DIR = fileURLToPath(new URL("../models", import.meta.url));

export interface BundledModel {
  file: string;
  def: ModelDef;
}

let cached: Promise<BundledModel[]> | undefined;

/** Every model file in models/, in name order. */
export function bundledModels(): Promise<BundledModel[]> {
  cached ??= (async () => {
    const files = fs
      .readdirSync(MODELS_DIR)
      .filter((f) => /\.(ts|mts|js|mjs)$/.test(f) && !f.endsWith(".d.ts"))
      .sort();
    return Promise.all(
      files.map(async (f) => ({
        file: path.join(MODELS_DIR, f),
        def: await loadModelFile(path.join(MODELS_DIR, f)),
      })),
    );
  })();
  return cached;
}

export async function supportedArchitectures(): Promise<string[]> {
  return (await bundledModels()).flatMap((m) => m.def.architectures);
}

/** The bundled model file implementing an architecture. */
export async function bundledModelFor(architecture: string): Promise<BundledModel | undefined> {
  return (await bundledModels()).find((m) => m.def.architectures.includes(architecture));
}

/** Parses a config.json with the bundled model file its `architectures` names. */
export async function parseHfConfig(json: unknown, source: string): Promise<BaseConfig> {
  if (typeof json !== "object" || json === null || Array.isArray(json))
    throw new ConfigError(source, "config is not a JSON object");
  const supported = `(supported: ${(await supportedArchitectures()).join(", ")})`;
  const arch = configArchitecture(json);
  if (arch === undefined) {
    // Present but not a list starting with a name ("LlamaForCausalLM" as a bare string, [], [7]) is not "missing".
    const given = (json as { architectures?: unknown }).architectures;
    throw new ConfigError(
      source,
      given === undefined
        ? `unsupported architecture: missing "architectures" field ${supported}`
        : `"architectures" must be a list of architecture names, got ${JSON.stringify(given)} ${supported}`,
      "architectures",
    );
  }
  const model = await bundledModelFor(arch);
  if (!model)
    throw new ConfigError(source, `unsupported architecture "${arch}" ${supported}`, "architectures");
  return model.def.parseConfig(json, source);
}

/** Reads and parses a config.json (or a checkpoint directory's) with its bundled model file. */
export async function loadHfConfig(file: string): Promise<BaseConfig> {
  const { json, file: source } = readConfigJson(file);
  return parseHfConfig(json, source);
}
