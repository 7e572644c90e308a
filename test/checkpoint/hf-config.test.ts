import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, describe, expect, it } from "vitest";
import { ConfigError } from "../../src/checkpoint/errors.ts";
import { loadHfConfig, parseHfConfig, supportedArchitectures } from "../../src/models.ts";

const SHARED = fileURLToPath(new URL("../../../shared", import.meta.url));
const readJson = (p: string) => JSON.parse(fs.readFileSync(path.join(SHARED, p), "utf8"));

/** Parse and expect a one-line ConfigError naming the source and matching `re`. */
async function expectConfigError(json: unknown, re: RegExp): Promise<void> {
  let err: unknown;
  try {
    await parseHfConfig(json, "config.json");
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(ConfigError);
  const msg = (err as Error).message;
  expect(msg.startsWith("config.json: ")).toBe(true);
  expect(msg).not.toContain("\n");
  expect(msg).toMatch(re);
}

describe("real configs", () => {
  it("tiny-llama (transformers 5, rope_parameters)", async () => {
    expect(await loadHfConfig(path.join(SHARED, "fixtures/tiny-llama/config.json"))).toEqual({
      architecture: "LlamaForCausalLM",
      vocabSize: 512,
      hiddenSize: 128,
      intermediateSize: 352,
      numLayers: 2,
      numHeads: 4,
      numKvHeads: 2,
      headDim: 32,
      rmsNormEps: 1e-5,
      ropeTheta: 10000,
      ropeScaling: null,
      maxPositionEmbeddings: 256,
      attentionBias: false,
      mlpBias: false,
      tieWordEmbeddings: false,
      hiddenAct: "silu",
      torchDtype: "bfloat16",
      eosTokenId: [2],
      bosTokenId: 1,
    });
  });

  it("tiny-gptj (transformers 5), loaded by directory", async () => {
    expect(await loadHfConfig(path.join(SHARED, "fixtures/tiny-gptj"))).toEqual({
      architecture: "GPTJForCausalLM",
      vocabSize: 512,
      hiddenSize: 128,
      numLayers: 2,
      numHeads: 4,
      headDim: 32,
      rotaryDim: 16,
      intermediateSize: 512,
      layerNormEps: 1e-5,
      maxPositionEmbeddings: 256,
      activation: "gelu_new",
      tieWordEmbeddings: false,
      torchDtype: "float16",
      eosTokenId: [50256],
      bosTokenId: 50256,
    });
  });

  it("Llama 2 7B (transformers 4, no rope_theta → 10000)", async () => {
    const c = await parseHfConfig(readJson("configs/llama-2-7b.json"), "llama-2-7b.json");
    expect(c).toMatchObject({
      numLayers: 32,
      numHeads: 32,
      numKvHeads: 32,
      headDim: 128,
      ropeTheta: 10000,
      ropeScaling: null,
    });
    expect(c).toMatchObject({ torchDtype: "float16", vocabSize: 32000 });
  });

  it("Llama 3 8B (transformers 4, GQA, theta 5e5)", async () => {
    const c = await parseHfConfig(readJson("configs/llama-3-8b.json"), "llama-3-8b.json");
    expect(c).toMatchObject({ numKvHeads: 8, ropeTheta: 500000, ropeScaling: null, intermediateSize: 14336 });
  });

  it("Llama 3.1 8B (transformers 4, llama3 rope scaling, several eos ids)", async () => {
    const c = await parseHfConfig(readJson("configs/llama-3.1-8b.json"), "llama-3.1-8b.json");
    expect(c).toMatchObject({
      ropeTheta: 500000,
      ropeScaling: {
        type: "llama3",
        factor: 8,
        lowFreqFactor: 1,
        highFreqFactor: 4,
        originalMaxPositionEmbeddings: 8192,
      },
      maxPositionEmbeddings: 131072,
      eosTokenId: [128001, 128008, 128009],
    });
  });

  it("GPT-J 6B (transformers 4)", async () => {
    const c = await parseHfConfig(readJson("configs/gpt-j-6b.json"), "gpt-j-6b.json");
    expect(c).toMatchObject({
      architecture: "GPTJForCausalLM",
      headDim: 256,
      rotaryDim: 64,
      intermediateSize: 16384,
    });
    expect(c).toMatchObject({
      numLayers: 28,
      vocabSize: 50400,
      maxPositionEmbeddings: 2048,
      torchDtype: "float32",
    });
  });
});

describe("config variants", () => {
  const llama = () => readJson("configs/llama-3-8b.json");

  it("transformers-5 llama3 scaling inside rope_parameters", async () => {
    const j = llama();
    delete j.rope_theta;
    delete j.rope_scaling;
    j.rope_parameters = {
      rope_type: "llama3",
      rope_theta: 500000,
      factor: 8,
      low_freq_factor: 1,
      high_freq_factor: 4,
      original_max_position_embeddings: 8192,
    };
    expect(await parseHfConfig(j, "c")).toMatchObject({
      ropeTheta: 500000,
      ropeScaling: { type: "llama3", factor: 8 },
    });
  });

  it("legacy 'type' key and linear scaling", async () => {
    const j = { ...llama(), rope_scaling: { type: "linear", factor: 2 } };
    expect(await parseHfConfig(j, "c")).toMatchObject({ ropeScaling: { type: "linear", factor: 2 } });
  });

  it("Mistral uses the Llama schema", async () => {
    const j = { ...llama(), architectures: ["MistralForCausalLM"], sliding_window: 4096 };
    expect(await parseHfConfig(j, "c")).toMatchObject({
      architecture: "MistralForCausalLM",
      slidingWindow: 4096,
    });
    expect(await parseHfConfig({ ...j, sliding_window: null }, "c")).not.toHaveProperty("slidingWindow");
  });

  it("defaults: kv heads, head dim, biases, tying", async () => {
    const j = llama();
    for (const k of [
      "num_key_value_heads",
      "attention_bias",
      "mlp_bias",
      "tie_word_embeddings",
      "rope_theta",
    ])
      delete j[k];
    expect(await parseHfConfig(j, "c")).toMatchObject({
      numKvHeads: 32,
      headDim: 128,
      attentionBias: false,
      mlpBias: false,
      tieWordEmbeddings: false,
      ropeTheta: 10000,
    });
  });

  it("GPT-J rotary_dim null means the whole head; n_inner given", async () => {
    const j = { ...readJson("configs/gpt-j-6b.json"), rotary_dim: null, n_inner: 1000 };
    expect(await parseHfConfig(j, "c")).toMatchObject({ rotaryDim: 256, intermediateSize: 1000 });
  });

  it("exports the supported architectures", async () => {
    // Read from the model files in models/ (each declares its architectures).
    expect(await supportedArchitectures()).toEqual(
      expect.arrayContaining(["LlamaForCausalLM", "MistralForCausalLM", "GPTJForCausalLM"]),
    );
  });
});

describe("config errors", () => {
  const llama = () => readJson("configs/llama-3-8b.json");

  it("missing required field", async () => {
    const j = llama();
    delete j.num_hidden_layers;
    await expectConfigError(j, /^config\.json: missing required field "num_hidden_layers"$/);
    const g = readJson("configs/gpt-j-6b.json");
    delete g.n_embd;
    await expectConfigError(g, /missing required field "n_embd"/);
  });

  it("unsupported or missing architecture", async () => {
    await expectConfigError(
      { ...llama(), architectures: ["FooForCausalLM"] },
      /^config\.json: unsupported architecture "FooForCausalLM" \(supported: .*GPTJForCausalLM.*\)$/,
    );
    const j = llama();
    delete j.architectures;
    await expectConfigError(
      j,
      /unsupported architecture: missing "architectures".*\(supported: .*LlamaForCausalLM/,
    );
  });

  it("unsupported rope_type", async () => {
    await expectConfigError(
      { ...llama(), rope_scaling: { rope_type: "longrope", factor: 4 } },
      /unsupported rope_type "longrope" in "rope_scaling" \(supported: default, linear, llama3, yarn, dynamic\)/,
    );
    await expectConfigError(
      { ...llama(), rope_parameters: { rope_type: "dynamic", rope_theta: 1 } },
      /missing required field "rope_parameters.factor" \(rope_type "dynamic"\)/,
    );
    await expectConfigError(
      { ...llama(), rope_scaling: { rope_type: "llama3", factor: 8 } },
      /missing required field "rope_scaling.low_freq_factor"/,
    );
  });

  it("bad values name the field", async () => {
    await expectConfigError({ ...llama(), hidden_size: -4 }, /invalid field "hidden_size".*got -4/);
    await expectConfigError({ ...llama(), num_attention_heads: 2.5 }, /invalid field "num_attention_heads"/);
    await expectConfigError(
      { ...llama(), hidden_act: "gelu" },
      /unsupported hidden_act "gelu" \(supported: "silu"\)/,
    );
    await expectConfigError(
      { ...readJson("configs/gpt-j-6b.json"), activation_function: "relu" },
      /activation_function "relu"/,
    );
  });

  it("head divisibility", async () => {
    await expectConfigError(
      { ...llama(), num_key_value_heads: 5 },
      /"num_attention_heads" \(32\) is not divisible by "num_key_value_heads" \(5\)/,
    );
    await expectConfigError(
      { ...llama(), hidden_size: 4100 },
      /"hidden_size" \(4100\) is not divisible by "num_attention_heads"/,
    );
    // An explicit head_dim lifts the divisibility requirement.
    expect(await parseHfConfig({ ...llama(), hidden_size: 4100, head_dim: 128 }, "c")).toMatchObject({
      headDim: 128,
    });
    await expectConfigError(
      { ...readJson("configs/gpt-j-6b.json"), rotary_dim: 512 },
      /"rotary_dim" \(512\)/,
    );
  });

  describe("loadHfConfig names the file", () => {
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "tsllm-cfg-"));
    afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

    it("missing field in a file on disk", async () => {
      const p = path.join(tmp, "config.json");
      const j = llama();
      delete j.vocab_size;
      fs.writeFileSync(p, JSON.stringify(j));
      await expect(loadHfConfig(p)).rejects.toThrow(`${p}: missing required field "vocab_size"`);
    });

    it("bad JSON and missing file", async () => {
      const p = path.join(tmp, "bad.json");
      fs.writeFileSync(p, "{ not json");
      await expect(loadHfConfig(p)).rejects.toThrow(new RegExp(`${p}: not valid JSON`));
      await expect(loadHfConfig(path.join(tmp, "nope.json"))).rejects.toThrow(
        /nope\.json: cannot read config/,
      );
    });
  });
});
