// src/dsl/model.ts: defineModel hands back the definition it is given, and modelFacts takes the engine's facts
// from a parsed config: every BaseConfig field, the KV heads defaulting to the heads and no eos ids to [], and a
// refusal naming the first field that is missing or not a number (model files may be JavaScript, so a
// parseConfig() that forgets one is caught here, not as NaN in the build). Facts of the bundled models'
// tiny fixtures are read off their config.json by hand.
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { type BaseConfig, defineModel, type ModelDef, modelFacts } from "../../src/dsl/model.ts";
import { loadModelFile } from "../../src/model-file.ts";
import { GPTJ_MODEL, LLAMA_MODEL, TINY_GPTJ, TINY_LLAMA } from "../fixtures.ts";

const BASE: BaseConfig = {
  vocabSize: 100,
  numLayers: 3,
  numHeads: 6,
  headDim: 16,
  hiddenSize: 96,
  maxPositionEmbeddings: 512,
};

const refusal = (k: string) =>
  new Error(
    `the model's parseConfig() returned no numeric "${k}" (every model config has the BaseConfig fields)`,
  );

describe("defineModel", () => {
  it("returns the very definition it is given", () => {
    const def: ModelDef = {
      architectures: ["X"],
      parseConfig: () => BASE,
      defaultConfig: { a: 1 },
      forward: () => {},
    };
    expect(defineModel(def)).toBe(def);
  });
});

describe("modelFacts", () => {
  it("copies the BaseConfig fields; KV heads default to the heads, eos ids to none; nothing else is taken", () => {
    expect(modelFacts({ ...BASE, extra: 7 } as BaseConfig)).toEqual({
      vocabSize: 100,
      numLayers: 3,
      numHeads: 6,
      numKvHeads: 6,
      headDim: 16,
      hiddenSize: 96,
      maxPositionEmbeddings: 512,
      eosTokenIds: [],
    });
  });

  it("keeps given KV heads (1 included) and eos ids; a sliding window is not a fact", () => {
    expect(modelFacts({ ...BASE, numKvHeads: 2, eosTokenId: [5, 9], slidingWindow: 64 })).toEqual({
      vocabSize: 100,
      numLayers: 3,
      numHeads: 6,
      numKvHeads: 2,
      headDim: 16,
      hiddenSize: 96,
      maxPositionEmbeddings: 512,
      eosTokenIds: [5, 9],
    });
    expect(modelFacts({ ...BASE, numKvHeads: 1, eosTokenId: [] })).toMatchObject({
      numKvHeads: 1,
      eosTokenIds: [],
    });
  });

  it("refuses each BaseConfig field missing, or not a number, by its name", () => {
    const keys = [
      "vocabSize",
      "numLayers",
      "numHeads",
      "headDim",
      "hiddenSize",
      "maxPositionEmbeddings",
    ] as const;
    for (const k of keys) {
      const missing: Record<string, unknown> = { ...BASE };
      delete missing[k];
      expect(() => modelFacts(missing as unknown as BaseConfig), k).toThrow(refusal(k));
      for (const bad of ["8", null, [8]])
        expect(() => modelFacts({ ...BASE, [k]: bad } as unknown as BaseConfig), `${k} ${bad}`).toThrow(
          refusal(k),
        );
    }
    // Several missing: the first in BaseConfig's order is named.
    const { numLayers: _l, headDim: _d, ...two } = BASE;
    expect(() => modelFacts(two as BaseConfig)).toThrow(refusal("numLayers"));
    expect(() => modelFacts({} as BaseConfig)).toThrow(refusal("vocabSize"));
  });

  it("refuses a field that is NaN, infinite, a fraction, zero or negative (a JavaScript model file's parseConfig)", () => {
    for (const k of [
      "vocabSize",
      "numLayers",
      "numHeads",
      "headDim",
      "hiddenSize",
      "maxPositionEmbeddings",
      "numKvHeads",
    ])
      for (const bad of [Number.NaN, Number.POSITIVE_INFINITY, 2.5, 0, -4])
        expect(() => modelFacts({ ...BASE, [k]: bad }), `${k} ${bad}`).toThrow(
          `the model's parseConfig() returned "${k}" = ${bad}: not a positive integer`,
        );
    expect(modelFacts({ ...BASE, numKvHeads: 1 }).numKvHeads).toBe(1);
  });

  it("the optional fields may be absent: numKvHeads and eosTokenId", () => {
    expect(() => modelFacts(BASE)).not.toThrow();
  });

  it("of the bundled models' tiny fixtures: tiny-llama (GQA, eos 2) and tiny-gptj (no KV heads: MHA, eos 50256)", async () => {
    const facts = async (model: string, dir: string) => {
      const def = await loadModelFile(model);
      const json = JSON.parse(fs.readFileSync(path.join(dir, "config.json"), "utf8"));
      return modelFacts(def.parseConfig(json, "config.json"));
    };
    // tiny-llama's config.json: vocab 512, hidden 128, 2 layers, 4 heads, 2 KV heads, head_dim 32.
    expect(await facts(LLAMA_MODEL, TINY_LLAMA)).toEqual({
      vocabSize: 512,
      numLayers: 2,
      numHeads: 4,
      numKvHeads: 2,
      headDim: 32,
      hiddenSize: 128,
      maxPositionEmbeddings: 256,
      eosTokenIds: [2],
    });
    // tiny-gptj's: n_embd 128, n_layer 2, n_head 4, n_positions 256; head dim 128 / 4 = 32; GPT-J has no KV-head field.
    expect(await facts(GPTJ_MODEL, TINY_GPTJ)).toEqual({
      vocabSize: 512,
      numLayers: 2,
      numHeads: 4,
      numKvHeads: 4,
      headDim: 32,
      hiddenSize: 128,
      maxPositionEmbeddings: 256,
      eosTokenIds: [50256],
    });
  });
});
