// The bundled model registry (src/models.ts): the model files of models/ in name order with the architectures
// each declares, the lookup of an architecture's file, and parseHfConfig / loadHfConfig: a config.json parsed by
// the bundled file its "architectures" names, with one-line ConfigErrors (file, field) for what is not a JSON
// object, has no architecture, or names one no bundled file implements. The expected lists are read off
// models/*.ts by hand. (The registry memoises its list per module: the first test here is the one that builds
// it, so it checks the list whole.)
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { ConfigError } from "../src/checkpoint/errors.ts";
import { loadModelFile } from "../src/model-file.ts";
import {
  bundledModelFor,
  bundledModels,
  loadHfConfig,
  MODELS_DIR,
  parseHfConfig,
  supportedArchitectures,
} from "../src/models.ts";
import { REPO, TINY_LLAMA, TINY_QWEN2, tmpDir } from "./fixtures.ts";

const SUPPORTED =
  "(supported: GPTJForCausalLM, LlamaForCausalLM, MistralForCausalLM, MixtralForCausalLM, Qwen2ForCausalLM)";
const file = (name: string) => path.join(REPO, "models", name);

async function configError(p: Promise<unknown>): Promise<ConfigError> {
  let err: unknown;
  try {
    await p;
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(ConfigError);
  return err as ConfigError;
}

describe("bundled models", () => {
  it("every model file of models/, in name order, with the definition it default-exports; read once", async () => {
    const ms = await bundledModels();
    expect(ms.map((m) => m.file)).toEqual(["gptj.ts", "llama.ts", "mixtral.ts", "qwen2.ts"].map(file));
    expect(ms.map((m) => m.def.architectures)).toEqual([
      ["GPTJForCausalLM"],
      ["LlamaForCausalLM", "MistralForCausalLM"],
      ["MixtralForCausalLM"],
      ["Qwen2ForCausalLM"],
    ]);
    for (const m of ms) expect(m.def).toBe(await loadModelFile(m.file));
    expect(await bundledModels()).toBe(ms);
    expect(MODELS_DIR).toBe(path.join(REPO, "models"));
  });

  it("supportedArchitectures: each file's architectures in file order", async () => {
    expect(await supportedArchitectures()).toEqual([
      "GPTJForCausalLM",
      "LlamaForCausalLM",
      "MistralForCausalLM",
      "MixtralForCausalLM",
      "Qwen2ForCausalLM",
    ]);
  });

  it("bundledModelFor: the file that declares the architecture (any of its entries), none for others", async () => {
    expect((await bundledModelFor("LlamaForCausalLM"))?.file).toBe(file("llama.ts"));
    expect((await bundledModelFor("MistralForCausalLM"))?.file).toBe(file("llama.ts"));
    expect((await bundledModelFor("GPTJForCausalLM"))?.file).toBe(file("gptj.ts"));
    expect((await bundledModelFor("Qwen2ForCausalLM"))?.file).toBe(file("qwen2.ts"));
    expect((await bundledModelFor("MixtralForCausalLM"))?.file).toBe(file("mixtral.ts"));
    expect((await bundledModelFor("BertModel"))?.file).toBeUndefined();
    expect(await bundledModelFor("")).toBeUndefined();
    expect(await bundledModelFor("llamaforcausallm")).toBeUndefined();
  });
});

describe("parseHfConfig", () => {
  it("parses with the file of the named architecture, handing it the source", async () => {
    const json = JSON.parse(fs.readFileSync(path.join(TINY_QWEN2, "config.json"), "utf8"));
    const qwen2 = await loadModelFile(file("qwen2.ts"));
    expect(await parseHfConfig(json, "q.json")).toEqual(qwen2.parseConfig(json, "q.json"));
    // A Mistral config goes to llama.ts (its second architecture); a field it needs names the source.
    const llama = JSON.parse(fs.readFileSync(path.join(TINY_LLAMA, "config.json"), "utf8"));
    const mistral = { ...llama, architectures: ["MistralForCausalLM"] };
    expect(await parseHfConfig(mistral, "m.json")).toMatchObject({
      architecture: "MistralForCausalLM",
      vocabSize: 512,
      numKvHeads: 2,
    });
    const { vocab_size: _, ...noVocab } = mistral;
    const e = await configError(parseHfConfig(noVocab, "m.json"));
    expect(e.message).toBe('m.json: missing required field "vocab_size"');
  });

  it("refuses what is not a JSON object, with no field", async () => {
    for (const json of [
      5,
      "LlamaForCausalLM",
      null,
      undefined,
      true,
      [],
      [{ architectures: ["LlamaForCausalLM"] }],
    ]) {
      const e = await configError(parseHfConfig(json, "c.json"));
      expect(e.message, JSON.stringify(json)).toBe("c.json: config is not a JSON object");
      expect(e.file).toBe("c.json");
      expect(e.field).toBeUndefined();
    }
  });

  it("refuses a config without an architecture name, listing the supported ones (field architectures)", async () => {
    const missing = await configError(parseHfConfig({}, "c.json"));
    expect(missing.message).toBe(
      `c.json: unsupported architecture: missing "architectures" field ${SUPPORTED}`,
    );
    expect(missing.field).toBe("architectures");
    // Present but not a list of names: said so (it was called missing).
    for (const [architectures, shown] of [
      [[], "[]"],
      ["LlamaForCausalLM", '"LlamaForCausalLM"'],
      [[7], "[7]"],
      [null, "null"],
    ] as const) {
      const e = await configError(parseHfConfig({ architectures }, "c.json"));
      expect(e.message, shown).toBe(
        `c.json: "architectures" must be a list of architecture names, got ${shown} ${SUPPORTED}`,
      );
      expect(e.field).toBe("architectures");
    }
  });

  it("refuses an architecture no bundled file implements, naming it (the first entry is the one read)", async () => {
    for (const architectures of [["BertModel"], ["BertModel", "LlamaForCausalLM"]]) {
      const e = await configError(parseHfConfig({ architectures, vocab_size: 5 }, "c.json"));
      expect(e.message).toBe(`c.json: unsupported architecture "BertModel" ${SUPPORTED}`);
      expect(e.field).toBe("architectures");
      expect(e.message).not.toContain("\n");
    }
  });
});

describe("loadHfConfig", () => {
  it("reads a config.json or a checkpoint directory's, and errors name the file read", async () => {
    const want = await parseHfConfig(
      JSON.parse(fs.readFileSync(path.join(TINY_LLAMA, "config.json"), "utf8")),
      "x",
    );
    expect(await loadHfConfig(TINY_LLAMA)).toEqual(want);
    expect(await loadHfConfig(path.join(TINY_LLAMA, "config.json"))).toEqual(want);
    const dir = tmpDir();
    fs.writeFileSync(path.join(dir, "config.json"), JSON.stringify({ architectures: ["GPT2LMHeadModel"] }));
    const e = await configError(loadHfConfig(dir));
    expect(e.message).toBe(
      `${path.join(dir, "config.json")}: unsupported architecture "GPT2LMHeadModel" ${SUPPORTED}`,
    );
    fs.writeFileSync(path.join(dir, "bad.json"), "[1, 2]");
    const bad = await configError(loadHfConfig(path.join(dir, "bad.json")));
    expect(bad.message).toBe(`${path.join(dir, "bad.json")}: config is not a JSON object`);
  });
});
