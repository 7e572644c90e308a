// Llama 2 / 3 / 3.1 and Mistral-style decoders, mirroring transformers' modeling_llama.py.
import {
  type DecoderConfig,
  decoderConfig,
  decoderFields,
  defineModel,
  llamaDecoderLayer,
  llamaStyleLM,
  parseConfigJson,
  z,
} from "tsllm";

/** config.json of LlamaForCausalLM / MistralForCausalLM (transformers' LlamaConfig). */
export const LlamaConfigJson = z.looseObject({
  ...decoderFields,
  rms_norm_eps: z.number().positive(),
  attention_bias: z.boolean().optional(),
  mlp_bias: z.boolean().optional(),
  hidden_act: z.literal("silu").optional(),
  sliding_window: z.number().int().positive().nullable().optional(),
});

export interface LlamaConfig extends DecoderConfig {
  architecture: "LlamaForCausalLM" | "MistralForCausalLM";
  rmsNormEps: number;
  /** Bias on q, k, v and o (transformers' attention_bias). */
  attentionBias: boolean;
  mlpBias: boolean;
  hiddenAct: "silu";
  /** Mistral sliding-window attention span; absent when the config has none (null). */
  slidingWindow?: number;
}

export function parseLlamaConfig(json: unknown, source: string): LlamaConfig {
  const raw = parseConfigJson(LlamaConfigJson, json, source);
  const arch = (json as { architectures?: string[] }).architectures?.[0];
  const { vocabSize, hiddenSize, intermediateSize, numLayers, numHeads, numKvHeads, headDim, ...rest } =
    decoderConfig(raw, source);
  const cfg: LlamaConfig = {
    architecture: arch === "MistralForCausalLM" ? arch : "LlamaForCausalLM",
    vocabSize,
    hiddenSize,
    intermediateSize,
    numLayers,
    numHeads,
    numKvHeads,
    headDim,
    rmsNormEps: raw.rms_norm_eps,
    ...rest,
    attentionBias: raw.attention_bias ?? false,
    mlpBias: raw.mlp_bias ?? false,
    hiddenAct: "silu",
  };
  if (raw.sliding_window != null) cfg.slidingWindow = raw.sliding_window;
  // transformers' MistralConfig defaults an absent sliding_window to 4096 (null is "none"); LlamaConfig has none.
  else if (cfg.architecture === "MistralForCausalLM" && raw.sliding_window === undefined)
    cfg.slidingWindow = 4096;
  return cfg;
}

export default defineModel<LlamaConfig>({
  architectures: ["LlamaForCausalLM", "MistralForCausalLM"],
  parseConfig: parseLlamaConfig,
  defaultConfig: {
    architectures: ["LlamaForCausalLM"],
    vocab_size: 512,
    hidden_size: 128,
    intermediate_size: 352,
    num_hidden_layers: 2,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    head_dim: 32,
    rms_norm_eps: 1e-5,
    max_position_embeddings: 256,
    rope_theta: 10000,
    hidden_act: "silu",
  },
  forward(m, cfg) {
    const bias = cfg.attentionBias;
    llamaStyleLM(m, cfg, (_, p) =>
      llamaDecoderLayer(m, p, cfg, {
        qkvBias: bias,
        oBias: bias,
        mlpBias: cfg.mlpBias,
        activation: cfg.hiddenAct,
      }),
    );
  },
});
