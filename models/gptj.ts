// GPT-J, mirroring transformers' modeling_gptj.py: one LayerNorm feeding attention and MLP in
// parallel, partial interleaved rotary embedding, gelu_new MLP with biases, lm_head with bias.
import { defineModel, type GptjConfig, type Module, parseHfConfig, type Tensor } from "../src/dsl/index.ts";

function GPTJAttention(m: Module, p: string, cfg: GptjConfig) {
  const { hiddenSize, numHeads, headDim } = cfg;
  const qProj = m.Linear(`${p}.q_proj`, hiddenSize, hiddenSize, { parallel: "column" });
  const kProj = m.Linear(`${p}.k_proj`, hiddenSize, hiddenSize, { parallel: "column" });
  const vProj = m.Linear(`${p}.v_proj`, hiddenSize, hiddenSize, { parallel: "column" });
  const outProj = m.Linear(`${p}.out_proj`, hiddenSize, hiddenSize, { parallel: "row" });
  const rope = { rotaryDim: cfg.rotaryDim, theta: 10000, style: "gptj" as const };

  return (x: Tensor) => {
    const q = m.rope(qProj(x), numHeads, headDim, rope);
    const k = m.rope(kProj(x), numHeads, headDim, rope);
    return outProj(m.attention(q, k, vProj(x), { numHeads, numKvHeads: numHeads, headDim }));
  };
}

function GPTJMLP(m: Module, p: string, cfg: GptjConfig) {
  const fcIn = m.Linear(`${p}.fc_in`, cfg.hiddenSize, cfg.intermediateSize, {
    bias: true,
    parallel: "column",
  });
  const fcOut = m.Linear(`${p}.fc_out`, cfg.intermediateSize, cfg.hiddenSize, {
    bias: true,
    parallel: "row",
  });
  return (x: Tensor) => fcOut(fcIn(x).gelu("tanh"));
}

function GPTJBlock(m: Module, p: string, cfg: GptjConfig) {
  const ln1 = m.LayerNorm(`${p}.ln_1`, cfg.hiddenSize, cfg.layerNormEps);
  const attn = GPTJAttention(m, `${p}.attn`, cfg);
  const mlp = GPTJMLP(m, `${p}.mlp`, cfg);
  return (hidden: Tensor) => {
    const residual = hidden;
    const h = ln1(hidden);
    return attn(h).add(mlp(h)).add(residual);
  };
}

export default defineModel<GptjConfig>({
  architectures: ["GPTJForCausalLM"],
  parseConfig(json, source) {
    const cfg = parseHfConfig(json, source);
    if (cfg.architecture !== "GPTJForCausalLM")
      throw new Error(`${source}: ${cfg.architecture} is not GPT-J (use models/llama.ts)`);
    return cfg;
  },
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
    const wte = m.Embedding("transformer.wte", cfg.vocabSize, cfg.hiddenSize);
    const blocks = Array.from({ length: cfg.numLayers }, (_, i) => GPTJBlock(m, `transformer.h.${i}`, cfg));
    const lnF = m.LayerNorm("transformer.ln_f", cfg.hiddenSize, cfg.layerNormEps);
    const lmHead = m.Linear("lm_head", cfg.hiddenSize, cfg.vocabSize, { bias: true, parallel: "vocab" });

    let hidden = wte(m.inputIds);
    for (const block of blocks) hidden = block(hidden);
    m.output("logits", lmHead(m.logitRows(lnF(hidden))));
  },
});
