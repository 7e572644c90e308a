// Llama-shaped test models over the tiny-llama checkpoint's weights, for passes on graphs other than
// the two real architectures (config field "variant"):
//   geglu:    the MLP gate uses gelu (tanh) instead of silu (GeGLU, as Gemma does);
//   unusual:  layer 0 projects k/v from the un-normalised input and ropes only q, and its MLP's up
//             projection reads a different input than the gate; layer 1 has no rotary embedding and an
//             exact-erf gelu gate. Fusion passes must leave what they cannot fuse correct.
import { defineModel, type Module, type Tensor } from "tsllm";
import { type LlamaConfig, parseLlamaConfig } from "../../../models/llama.ts";

type Cfg = LlamaConfig & { variant: "geglu" | "unusual" };

function layer(m: Module, i: number, cfg: Cfg) {
  const p = `model.layers.${i}`;
  const { hiddenSize: H, numHeads, numKvHeads, headDim, intermediateSize: I } = cfg;
  const ln1 = m.RMSNorm(`${p}.input_layernorm`, H, cfg.rmsNormEps);
  const ln2 = m.RMSNorm(`${p}.post_attention_layernorm`, H, cfg.rmsNormEps);
  const q = m.Linear(`${p}.self_attn.q_proj`, H, numHeads * headDim);
  const k = m.Linear(`${p}.self_attn.k_proj`, H, numKvHeads * headDim);
  const v = m.Linear(`${p}.self_attn.v_proj`, H, numKvHeads * headDim);
  const o = m.Linear(`${p}.self_attn.o_proj`, numHeads * headDim, H);
  const gate = m.Linear(`${p}.mlp.gate_proj`, H, I);
  const up = m.Linear(`${p}.mlp.up_proj`, H, I);
  const down = m.Linear(`${p}.mlp.down_proj`, I, H);
  const rope = { rotaryDim: headDim, theta: cfg.ropeTheta, style: "neox" as const };
  const attn = { numHeads, numKvHeads, headDim };
  const unusual = cfg.variant === "unusual";
  return (hidden: Tensor) => {
    const x = ln1(hidden);
    let a: Tensor;
    if (unusual && i === 0)
      a = m.attention(m.rope(q(x), numHeads, headDim, rope), k(hidden), v(hidden), attn);
    else if (unusual) a = m.attention(q(x), k(x), v(x), attn);
    else
      a = m.attention(
        m.rope(q(x), numHeads, headDim, rope),
        m.rope(k(x), numKvHeads, headDim, rope),
        v(x),
        attn,
      );
    const h = hidden.add(o(a));
    const y = ln2(h);
    let mlp: Tensor;
    if (unusual && i === 0) mlp = gate(y).silu().mul(up(h));
    else if (unusual) mlp = gate(y).gelu("none").mul(up(y));
    else mlp = gate(y).gelu("tanh").mul(up(y));
    return h.add(down(mlp));
  };
}

export default defineModel<Cfg>({
  architectures: ["LlamaForCausalLM"],
  parseConfig(json, source) {
    const cfg = parseLlamaConfig(json, source);
    const variant = (json as { variant?: string }).variant;
    if (variant !== "geglu" && variant !== "unusual")
      throw new Error(`${source}: variant must be geglu or unusual`);
    return { ...cfg, variant };
  },
  defaultConfig: {},
  forward(m, cfg) {
    const embed = m.Embedding("model.embed_tokens", cfg.vocabSize, cfg.hiddenSize);
    const layers = Array.from({ length: cfg.numLayers }, (_, i) => layer(m, i, cfg));
    const norm = m.RMSNorm("model.norm", cfg.hiddenSize, cfg.rmsNormEps);
    const lmHead = m.Linear("lm_head", cfg.hiddenSize, cfg.vocabSize);
    let h = embed(m.inputIds);
    for (const l of layers) h = l(h);
    m.output("logits", lmHead(m.logitRows(norm(h))));
  },
});
