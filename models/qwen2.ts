// Qwen2 / Qwen2.5 decoders, mirroring transformers' modeling_qwen2.py: Llama's layer with bias on the
// q, k and v projections only (none on o_proj), usually tied embeddings and RoPE theta 1e6.
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

/** config.json of Qwen2ForCausalLM (transformers' Qwen2Config). */
const Qwen2ConfigJson = z.looseObject({
  ...decoderFields,
  rms_norm_eps: z.number().positive(),
  hidden_act: z.literal("silu").optional(),
  use_sliding_window: z.boolean().optional(),
  sliding_window: z.number().int().positive().nullable().optional(),
});

export interface Qwen2Config extends DecoderConfig {
  rmsNormEps: number;
  /** Only with use_sliding_window (transformers ignores sliding_window otherwise). */
  slidingWindow?: number;
}

export function parseQwen2Config(json: unknown, source: string): Qwen2Config {
  const raw = parseConfigJson(Qwen2ConfigJson, json, source);
  const cfg: Qwen2Config = { ...decoderConfig(raw, source), rmsNormEps: raw.rms_norm_eps };
  // Qwen2Config's sliding_window defaults to 4096 when absent (null: none); it counts only with use_sliding_window.
  const window = raw.sliding_window === undefined ? 4096 : raw.sliding_window;
  if (raw.use_sliding_window && window != null) cfg.slidingWindow = window;
  return cfg;
}

export default defineModel<Qwen2Config>({
  architectures: ["Qwen2ForCausalLM"],
  parseConfig: parseQwen2Config,
  defaultConfig: {
    architectures: ["Qwen2ForCausalLM"],
    vocab_size: 512,
    hidden_size: 128,
    intermediate_size: 256,
    num_hidden_layers: 2,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    rms_norm_eps: 1e-6,
    max_position_embeddings: 256,
    rope_theta: 1e6,
    tie_word_embeddings: true,
  },
  forward(m, cfg) {
    llamaStyleLM(m, cfg, (_, p) => llamaDecoderLayer(m, p, cfg, { qkvBias: true, oBias: false }));
  },
});
