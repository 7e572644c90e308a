// Mixtral (sparse mixture of experts), mirroring transformers' modeling_mixtral.py: Mistral's decoder
// layer whose MLP is a MixtralSparseMoeBlock (router `block_sparse_moe.gate`, experts
// `block_sparse_moe.experts.{e}.w1/w3/w2`, or transformers 5's fused `mlp.experts.gate_up_proj` /
// `down_proj`): softmax → top-k → renormalised → weighted SwiGLU experts.
import {
  ConfigError,
  type DecoderConfig,
  decoderConfig,
  decoderFields,
  defineModel,
  llamaDecoderLayer,
  llamaStyleLM,
  parseConfigJson,
  sparseMoe,
  z,
} from "tsllm";

/** config.json of MixtralForCausalLM (transformers' MixtralConfig). */
const MixtralConfigJson = z.looseObject({
  ...decoderFields,
  rms_norm_eps: z.number().positive(),
  hidden_act: z.literal("silu").optional(),
  num_local_experts: z.number().int().positive(),
  num_experts_per_tok: z.number().int().positive(),
  sliding_window: z.number().int().positive().nullable().optional(),
});

export interface MixtralConfig extends DecoderConfig {
  rmsNormEps: number;
  numExperts: number;
  /** Experts each token is routed to. */
  topK: number;
}

export function parseMixtralConfig(json: unknown, source: string): MixtralConfig {
  const raw = parseConfigJson(MixtralConfigJson, json, source);
  if (raw.num_experts_per_tok > raw.num_local_experts)
    throw new ConfigError(
      source,
      `num_experts_per_tok ${raw.num_experts_per_tok} is greater than num_local_experts ${raw.num_local_experts}`,
      "num_experts_per_tok",
    );
  if (raw.sliding_window != null)
    throw new ConfigError(
      source,
      "sliding_window attention is not supported for Mixtral yet",
      "sliding_window",
    );
  return {
    // transformers' MixtralConfig defaults rope_theta to 1e6 (not Llama's 1e4) when the config names none.
    ...decoderConfig(raw, source, 1e6),
    rmsNormEps: raw.rms_norm_eps,
    numExperts: raw.num_local_experts,
    topK: raw.num_experts_per_tok,
  };
}

export default defineModel<MixtralConfig>({
  architectures: ["MixtralForCausalLM"],
  parseConfig: parseMixtralConfig,
  defaultConfig: {
    architectures: ["MixtralForCausalLM"],
    vocab_size: 512,
    hidden_size: 128,
    intermediate_size: 192,
    num_hidden_layers: 2,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    num_local_experts: 4,
    num_experts_per_tok: 2,
    rms_norm_eps: 1e-5,
    max_position_embeddings: 256,
    rope_theta: 1e6,
  },
  forward(m, cfg) {
    llamaStyleLM(m, cfg, (_, p) =>
      llamaDecoderLayer(m, p, cfg, {
        qkvBias: false,
        oBias: false,
        mlp: sparseMoe(m, `${p}.block_sparse_moe`, {
          hiddenSize: cfg.hiddenSize,
          intermediateSize: cfg.intermediateSize,
          numExperts: cfg.numExperts,
          topK: cfg.topK,
          normalize: true,
          // transformers 5 (conversion_mapping.py "mixtral") loads the block as `mlp` with fused experts.
          fusedPrefixes: [`${p}.mlp`, `${p}.block_sparse_moe`],
        }),
      }),
    );
  },
});
