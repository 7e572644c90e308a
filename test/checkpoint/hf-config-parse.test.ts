// src/checkpoint/hf-config.ts called directly (the pieces model files build on): the one-line ConfigError
// of each refusal with its field, the normalised values, RoPE parameters in both config generations, and
// readConfigJson on files in its own temporary folder.
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { z } from "zod";
import { ConfigError } from "../../src/checkpoint/errors.ts";
import {
  commonConfig,
  configArchitecture,
  configTorchDtype,
  decoderConfig,
  decoderFields,
  parseConfigJson,
  readConfigJson,
  ropeParameters,
} from "../../src/checkpoint/hf-config.ts";
import { tmpDir } from "../fixtures.ts";
import { thrown } from "../thrown.ts";

/** The ConfigError `f` throws: its message (one line) and field. */
function refusal(f: () => unknown): { message: string; field?: string } {
  const e = thrown(f, ConfigError);
  return { message: e.message, field: e.field };
}

const decoder = z.looseObject(decoderFields);
const base = {
  vocab_size: 100,
  hidden_size: 64,
  intermediate_size: 128,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  max_position_embeddings: 512,
};
const parseDecoder = (extra: Record<string, unknown>) =>
  decoderConfig(parseConfigJson(decoder, { ...base, ...extra }, "c.json"), "c.json");

describe("parseConfigJson", () => {
  it("not a JSON object", () => {
    for (const j of [null, [], [base], "x", 5, undefined])
      expect(refusal(() => parseConfigJson(decoder, j, "c.json"))).toEqual({
        message: "c.json: config is not a JSON object",
        field: undefined,
      });
  });

  it("a nested field is named with dots, its value shown (60 characters whole, longer cut to 57 and ...)", () => {
    expect(
      refusal(() => parseConfigJson(decoder, { ...base, rope_scaling: { factor: -2 } }, "c.json")),
    ).toEqual({
      message: 'c.json: invalid field "rope_scaling.factor": Too small: expected number to be >0 (got -2)',
      field: "rope_scaling.factor",
    });
    const s58 = "a".repeat(58); // 60 characters as JSON
    expect(refusal(() => parseConfigJson(decoder, { ...base, torch_dtype: [s58] }, "c.json")).message).toBe(
      `c.json: invalid field "torch_dtype": Invalid input: expected string, received array (got ${JSON.stringify([s58]).slice(0, 57)}...)`,
    );
    expect(refusal(() => parseConfigJson(decoder, { ...base, torch_dtype: 7 }, "c.json")).message).toBe(
      'c.json: invalid field "torch_dtype": Invalid input: expected string, received number (got 7)',
    );
    const schema = z.looseObject({ x: z.number() });
    expect(refusal(() => parseConfigJson(schema, { x: s58 }, "c.json")).message).toBe(
      `c.json: invalid field "x": Invalid input: expected number, received string (got "${s58}")`,
    );
    expect(refusal(() => parseConfigJson(schema, { x: `${s58}b` }, "c.json")).message).toBe(
      `c.json: invalid field "x": Invalid input: expected number, received string (got "${`${s58}b`.slice(0, 56)}...)`,
    );
  });

  it("an unsupported value lists the supported ones", () => {
    const schema = z.looseObject({ act: z.enum(["silu", "gelu"]) });
    expect(refusal(() => parseConfigJson(schema, { act: "relu" }, "c.json"))).toEqual({
      message: 'c.json: unsupported act "relu" (supported: "silu", "gelu")',
      field: "act",
    });
    expect(parseConfigJson(schema, { act: "gelu", other: 1 }, "c.json")).toEqual({ act: "gelu", other: 1 });
  });

  it("a model file's own issue path is followed only through objects", () => {
    const at = (json: Record<string, unknown>, p: string[]) =>
      refusal(() =>
        parseConfigJson(
          z
            .looseObject({})
            .superRefine((_, ctx) => ctx.addIssue({ code: "custom", path: p, message: "bad" })),
          json,
          "c.json",
        ),
      ).message;
    expect(at({ a: null }, ["a", "b"])).toBe('c.json: missing required field "a.b"');
    expect(at({ a: "xyz" }, ["a", "length"])).toBe('c.json: missing required field "a.length"');
    expect(at({ a: { b: [1, 2] } }, ["a", "b", "1"])).toBe('c.json: invalid field "a.b.1": bad (got 2)');
  });
});

describe("commonConfig", () => {
  it("only the fields given, normalised", () => {
    expect(commonConfig({ vocab_size: 5 })).toStrictEqual({ vocabSize: 5, tieWordEmbeddings: false });
    expect(
      commonConfig({ vocab_size: 5, torch_dtype: null, dtype: null, eos_token_id: null, bos_token_id: null }),
    ).toStrictEqual({ vocabSize: 5, tieWordEmbeddings: false });
    expect(
      commonConfig({
        vocab_size: 5,
        tie_word_embeddings: true,
        dtype: "bfloat16",
        eos_token_id: 2,
        bos_token_id: 0,
      }),
    ).toStrictEqual({
      vocabSize: 5,
      tieWordEmbeddings: true,
      torchDtype: "bfloat16",
      eosTokenId: [2],
      bosTokenId: 0,
    });
    const eos = [3, 4];
    const c = commonConfig({ vocab_size: 5, torch_dtype: "float16", dtype: "float32", eos_token_id: eos });
    expect(c).toStrictEqual({
      vocabSize: 5,
      tieWordEmbeddings: false,
      torchDtype: "float16",
      eosTokenId: [3, 4],
    });
    expect(c.eosTokenId).not.toBe(eos);
  });
});

describe("decoderConfig", () => {
  it("the geometry, with kv heads and head dim defaulted", () => {
    expect(parseDecoder({})).toStrictEqual({
      hiddenSize: 64,
      intermediateSize: 128,
      numLayers: 2,
      numHeads: 4,
      numKvHeads: 4,
      headDim: 16,
      ropeTheta: 10000,
      ropeScaling: null,
      maxPositionEmbeddings: 512,
      vocabSize: 100,
      tieWordEmbeddings: false,
    });
    expect(parseDecoder({ num_key_value_heads: 2, head_dim: 10, hidden_size: 30 })).toMatchObject({
      numKvHeads: 2,
      headDim: 10,
    });
  });

  it("refusals name the field", () => {
    expect(refusal(() => parseDecoder({ hidden_size: 30 }))).toEqual({
      message:
        'c.json: "hidden_size" (30) is not divisible by "num_attention_heads" (4) and no "head_dim" is given',
      field: "hidden_size",
    });
    expect(refusal(() => parseDecoder({ num_key_value_heads: 3 }))).toEqual({
      message: 'c.json: "num_attention_heads" (4) is not divisible by "num_key_value_heads" (3)',
      field: "num_key_value_heads",
    });
    expect(refusal(() => parseDecoder({ head_dim: 7 }))).toEqual({
      message: "c.json: head dim 7 must be even for RoPE",
      field: "head_dim",
    });
    expect(refusal(() => parseDecoder({ hidden_size: 12 }))).toEqual({
      message: "c.json: head dim 3 must be even for RoPE",
      field: "head_dim",
    });
  });
});

describe("ropeParameters", () => {
  it("no scaling: theta from rope_parameters, then rope_theta, then 10000", () => {
    expect(ropeParameters({}, "c")).toEqual({ theta: 10000, scaling: null });
    expect(ropeParameters({ rope_theta: 5 }, "c")).toEqual({ theta: 5, scaling: null });
    expect(ropeParameters({ rope_theta: 5, rope_parameters: { rope_theta: 7 } }, "c")).toEqual({
      theta: 7,
      scaling: null,
    });
    expect(ropeParameters({ rope_theta: 5, rope_parameters: { rope_type: "default" } }, "c")).toEqual({
      theta: 5,
      scaling: null,
    });
    expect(ropeParameters({ rope_theta: 5, rope_scaling: null, rope_parameters: null }, "c")).toEqual({
      theta: 5,
      scaling: null,
    });
  });

  it("rope_scaling needs a rope_type (or type); a missing factor names its field", () => {
    expect(refusal(() => ropeParameters({ rope_scaling: { factor: 2 } }, "c"))).toEqual({
      message: 'c: missing required field "rope_scaling.rope_type"',
      field: "rope_scaling.rope_type",
    });
    expect(ropeParameters({ rope_scaling: { type: "linear", factor: 2 } }, "c").scaling).toEqual({
      type: "linear",
      factor: 2,
    });
    expect(refusal(() => ropeParameters({ rope_scaling: { rope_type: "linear" } }, "c"))).toEqual({
      message: 'c: missing required field "rope_scaling.factor" (rope_type "linear")',
      field: "rope_scaling.factor",
    });
    expect(refusal(() => ropeParameters({ rope_parameters: { rope_type: "linear" } }, "c"))).toEqual({
      message: 'c: missing required field "rope_parameters.factor" (rope_type "linear")',
      field: "rope_parameters.factor",
    });
    expect(refusal(() => ropeParameters({ rope_parameters: { rope_type: "longrope" } }, "c"))).toEqual({
      message:
        'c: unsupported rope_type "longrope" in "rope_parameters" (supported: default, linear, llama3, yarn, dynamic)',
      field: "rope_parameters.rope_type",
    });
  });

  it("yarn: defaults from max_position_embeddings, which it needs when the original is not given", () => {
    expect(ropeParameters({ rope_scaling: { rope_type: "yarn" } }, "c", 32768).scaling).toMatchObject({
      factor: 1,
      originalMaxPositionEmbeddings: 32768,
    });
    expect(
      ropeParameters(
        { rope_scaling: { rope_type: "yarn", original_max_position_embeddings: 4096 } },
        "c",
        32768,
      ),
    ).toEqual({
      theta: 10000,
      scaling: {
        type: "yarn",
        factor: 8,
        originalMaxPositionEmbeddings: 4096,
        betaFast: 32,
        betaSlow: 1,
        attentionFactor: null,
        mscale: null,
        mscaleAllDim: null,
        truncate: true,
      },
    });
    expect(
      ropeParameters(
        { rope_scaling: { rope_type: "yarn", factor: 4, original_max_position_embeddings: 4096 } },
        "c",
        32768,
      ).scaling,
    ).toMatchObject({ factor: 4 });
    expect(refusal(() => ropeParameters({ rope_scaling: { rope_type: "yarn", factor: 4 } }, "c"))).toEqual({
      message: 'c: rope_type "yarn" needs "max_position_embeddings"',
      field: "max_position_embeddings",
    });
    expect(
      refusal(() => ropeParameters({ rope_parameters: { rope_type: "dynamic", factor: 2 } }, "c")),
    ).toEqual({
      message: 'c: rope_type "dynamic" needs "max_position_embeddings"',
      field: "max_position_embeddings",
    });
    expect(
      ropeParameters({ rope_parameters: { rope_type: "dynamic", factor: 2 } }, "c", 100).scaling,
    ).toEqual({
      type: "dynamic",
      factor: 2,
      originalMaxPositionEmbeddings: 100,
    });
  });
});

describe("configTorchDtype and configArchitecture", () => {
  it("read what is there, or undefined", () => {
    expect(configTorchDtype({ torch_dtype: "float16", dtype: "float32" })).toBe("float16");
    expect(configTorchDtype({ dtype: "bfloat16" })).toBe("bfloat16");
    expect(configTorchDtype({ torch_dtype: null, dtype: "bfloat16" })).toBe("bfloat16");
    expect(configTorchDtype({ torch_dtype: 16 })).toBeUndefined();
    expect(configTorchDtype({})).toBeUndefined();
    expect(configTorchDtype(null)).toBeUndefined();
    expect(configArchitecture({ architectures: ["LlamaForCausalLM", "X"] })).toBe("LlamaForCausalLM");
    expect(configArchitecture({ architectures: "LlamaForCausalLM" })).toBeUndefined();
    expect(configArchitecture({ architectures: [] })).toBeUndefined();
    expect(configArchitecture({ architectures: [5] })).toBeUndefined();
    expect(configArchitecture(null)).toBeUndefined();
  });
});

describe("readConfigJson", () => {
  it("a file or a folder's config.json; a missing file and bad JSON are one line naming the file", () => {
    const dir = tmpDir();
    const file = path.join(dir, "config.json");
    fs.writeFileSync(file, '{"vocab_size": 3}');
    expect(readConfigJson(file)).toEqual({ json: { vocab_size: 3 }, file });
    expect(readConfigJson(dir)).toEqual({ json: { vocab_size: 3 }, file });
    const other = path.join(dir, "other.json");
    fs.writeFileSync(other, '{"a": x\n\n  y}');
    expect(refusal(() => readConfigJson(other))).toEqual({
      message: `${other}: not valid JSON: Unexpected token 'x', "{"a": x y}" is not valid JSON`,
      field: undefined,
    });
    const none = path.join(dir, "none.json");
    expect(refusal(() => readConfigJson(none)).message).toBe(
      `${none}: cannot read config: ENOENT: no such file or directory, open '${none}'`,
    );
    const empty = tmpDir();
    expect(refusal(() => readConfigJson(empty)).message).toBe(
      `${path.join(empty, "config.json")}: cannot read config: ENOENT: no such file or directory, open '${path.join(empty, "config.json")}'`,
    );
  });
});
