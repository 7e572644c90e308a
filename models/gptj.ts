// GPT-J, mirroring transformers' modeling_gptj.py: one LayerNorm feeding attention and MLP in
// parallel, partial interleaved rotary embedding, gelu_new MLP with biases, lm_head with bias.

import type { CommonConfig, Module } from "tsllm";
import {
  ConfigError,
  causalLM,
  commonConfig,
  defineModel,
  hfCommonFields,
  mlp,
  parallelDecoderLayer,
  parseConfigJson,
  selfAttention,
  stack,
  z,
} from "tsllm";

/** config.json of GPTJForCausalLM (transformers' GPTJConfig). */
export const GptjConfigJson = z.looseObject({
  ...hfCommonFields,
  n_embd: z.number().int().positive(),
  n_layer: z.number().int().positive(),
  n_head: z.number().int().positive(),
  n_inner: z.number().int().positive().nullable().optional(),
  rotary_dim: z.number().int().positive().nullable().optional(),
  layer_norm_epsilon: z.number().positive(),
  n_positions: z.number().int().positive(),
  activation_function: z.literal("gelu_new").optional(),
});

export interface GptjConfig extends CommonConfig {
  architecture: "GPTJForCausalLM";
  hiddenSize: number;
  numLayers: number;
  numHeads: number;
  headDim: number;
  /** Leading dims of each head that get (interleaved) rotary embedding. */
  rotaryDim: number;
  intermediateSize: number;
  layerNormEps: number;
  maxPositionEmbeddings: number;
  activation: "gelu_new";
}

/** transformers' GPTJConfig default for an absent rotary_dim (an explicit null means the whole head). */
const GPTJ_DEFAULT_ROTARY_DIM = 64;

export function parseGptjConfig(json: unknown, source: string): GptjConfig {
  const raw = parseConfigJson(GptjConfigJson, json, source);
  if (raw.n_embd % raw.n_head !== 0)
    throw new ConfigError(
      source,
      `"n_embd" (${raw.n_embd}) is not divisible by "n_head" (${raw.n_head})`,
      "n_embd",
    );
  const headDim = raw.n_embd / raw.n_head;
  const rotaryDim = raw.rotary_dim === null ? headDim : (raw.rotary_dim ?? GPTJ_DEFAULT_ROTARY_DIM);
  if (rotaryDim > headDim || rotaryDim % 2 !== 0)
    throw new ConfigError(
      source,
      `"rotary_dim" (${rotaryDim}) must be even and at most the head dim (${headDim})`,
      "rotary_dim",
    );
  const { vocabSize, ...common } = commonConfig(raw);
  return {
    architecture: "GPTJForCausalLM",
    vocabSize,
    hiddenSize: raw.n_embd,
    numLayers: raw.n_layer,
    numHeads: raw.n_head,
    headDim,
    rotaryDim,
    intermediateSize: raw.n_inner ?? 4 * raw.n_embd,
    layerNormEps: raw.layer_norm_epsilon,
    maxPositionEmbeddings: raw.n_positions,
    activation: "gelu_new",
    ...common,
  };
}

function GPTJBlock(m: Module, p: string, cfg: GptjConfig) {
  return parallelDecoderLayer({
    norm: m.LayerNorm(`${p}.ln_1`, cfg.hiddenSize, cfg.layerNormEps),
    attention: selfAttention(m, `${p}.attn`, {
      ...cfg,
      numKvHeads: cfg.numHeads,
      rope: { rotaryDim: cfg.rotaryDim, theta: 10000, style: "gptj" },
      names: { q: "q_proj", k: "k_proj", v: "v_proj", o: "out_proj" },
    }),
    mlp: mlp(m, `${p}.mlp`, { ...cfg, activation: cfg.activation, bias: true }),
  });
}

export default defineModel<GptjConfig>({
  architectures: ["GPTJForCausalLM"],
  parseConfig: parseGptjConfig,
  defaultConfig: {
    architectures: ["GPTJForCausalLM"],
    vocab_size: 512,
    n_embd: 128,
    n_head: 4,
    n_layer: 2,
    n_positions: 256,
    rotary_dim: 16,
    layer_norm_epsilon: 1e-5,
    activation_function: "gelu_new",
  },
  forward(m, cfg) {
    causalLM(m, {
      embed: m.Embedding("transformer.wte", cfg.vocabSize, cfg.hiddenSize),
      layers: stack(cfg.numLayers, (i) => GPTJBlock(m, `transformer.h.${i}`, cfg)),
      norm: m.LayerNorm("transformer.ln_f", cfg.hiddenSize, cfg.layerNormEps),
      // transformers ties lm_head.weight to wte under tie_word_embeddings (the bias stays lm_head's own);
      // a checkpoint's lm_head.weight is then ignored, as here (it was read instead, without a word).
      lmHead: m.Linear("lm_head", cfg.hiddenSize, cfg.vocabSize, {
        bias: true,
        parallel: "vocab",
        weightName: cfg.tieWordEmbeddings ? "transformer.wte.weight" : undefined,
      }),
    });
  },
});
