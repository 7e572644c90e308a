// Llama 2 / 3 / 3.1 and Mistral-style decoders, mirroring transformers' modeling_llama.py.
import { defineModel, type LlamaConfig, type Module, parseHfConfig, type Tensor } from "../src/dsl/index.ts";

function LlamaAttention(m: Module, p: string, cfg: LlamaConfig) {
  const { hiddenSize, numHeads, numKvHeads, headDim } = cfg;
  const bias = cfg.attentionBias;
  const qProj = m.Linear(`${p}.q_proj`, hiddenSize, numHeads * headDim, { bias, parallel: "column" });
  const kProj = m.Linear(`${p}.k_proj`, hiddenSize, numKvHeads * headDim, { bias, parallel: "column" });
  const vProj = m.Linear(`${p}.v_proj`, hiddenSize, numKvHeads * headDim, { bias, parallel: "column" });
  const oProj = m.Linear(`${p}.o_proj`, numHeads * headDim, hiddenSize, { bias, parallel: "row" });
  const rope = {
    rotaryDim: headDim,
    theta: cfg.ropeTheta,
    style: "neox" as const,
    scaling: cfg.ropeScaling,
    invFreqInCheckpointDtype: true,
  };

  return (x: Tensor) => {
    const q = m.rope(qProj(x), numHeads, headDim, rope);
    const k = m.rope(kProj(x), numKvHeads, headDim, rope);
    const v = vProj(x);
    return oProj(m.attention(q, k, v, { numHeads, numKvHeads, headDim }));
  };
}

function LlamaMLP(m: Module, p: string, cfg: LlamaConfig) {
  const bias = cfg.mlpBias;
  const gateProj = m.Linear(`${p}.gate_proj`, cfg.hiddenSize, cfg.intermediateSize, {
    bias,
    parallel: "column",
  });
  const upProj = m.Linear(`${p}.up_proj`, cfg.hiddenSize, cfg.intermediateSize, { bias, parallel: "column" });
  const downProj = m.Linear(`${p}.down_proj`, cfg.intermediateSize, cfg.hiddenSize, {
    bias,
    parallel: "row",
  });
  return (x: Tensor) => downProj(gateProj(x).silu().mul(upProj(x)));
}

function LlamaDecoderLayer(m: Module, p: string, cfg: LlamaConfig) {
  const inputLayernorm = m.RMSNorm(`${p}.input_layernorm`, cfg.hiddenSize, cfg.rmsNormEps);
  const selfAttn = LlamaAttention(m, `${p}.self_attn`, cfg);
  const postAttentionLayernorm = m.RMSNorm(`${p}.post_attention_layernorm`, cfg.hiddenSize, cfg.rmsNormEps);
  const mlp = LlamaMLP(m, `${p}.mlp`, cfg);
  return (hidden: Tensor) => {
    let residual = hidden;
    hidden = residual.add(selfAttn(inputLayernorm(hidden)));
    residual = hidden;
    return residual.add(mlp(postAttentionLayernorm(hidden)));
  };
}

export default defineModel<LlamaConfig>({
  architectures: ["LlamaForCausalLM", "MistralForCausalLM"],
  parseConfig(json, source) {
    const cfg = parseHfConfig(json, source);
    if (cfg.architecture === "GPTJForCausalLM")
      throw new Error(`${source}: GPTJForCausalLM is not a Llama model (use models/gptj.ts)`);
    return cfg;
  },
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
    const embedTokens = m.Embedding("model.embed_tokens", cfg.vocabSize, cfg.hiddenSize);
    const layers = Array.from({ length: cfg.numLayers }, (_, i) =>
      LlamaDecoderLayer(m, `model.layers.${i}`, cfg),
    );
    const norm = m.RMSNorm("model.norm", cfg.hiddenSize, cfg.rmsNormEps);
    const lmHead = m.Linear("lm_head", cfg.hiddenSize, cfg.vocabSize, {
      parallel: "vocab",
      weightName: cfg.tieWordEmbeddings ? "model.embed_tokens.weight" : undefined,
    });

    let hidden = embedTokens(m.inputIds);
    for (const layer of layers) hidden = layer(hidden);
    m.output("logits", lmHead(m.logitRows(norm(hidden))));
  },
});
