// The layer library: the pieces transformer decoders are made of, built from Module's nn-style layers
// (as llama.cpp's build_ffn / build_attn helpers, gpt-fast's model.py), so a model file is mostly
// composition. Checkpoint names default to Llama's (q_proj, gate_proj, …) and can be renamed; the
// node order each piece emits is what the fusion passes look for (qkv, gate-up, attention, epilogue).
import type { DecoderConfig } from "../checkpoint/hf-config.ts";
import type { RecipePart } from "../weights/recipe.ts";
import type { Module, Parallel, RopeOptions } from "./module.ts";
import type { Tensor } from "./tensor.ts";

export type Layer = (x: Tensor) => Tensor;

/**
 * Activation functions by their Hugging Face names (config hidden_act / activation_function):
 * silu (= swish), gelu (exact erf), gelu_new / gelu_pytorch_tanh / gelu_fast (tanh approximation).
 */
export const ACTIVATIONS = {
  silu: (x: Tensor) => x.silu(),
  swish: (x: Tensor) => x.silu(),
  gelu: (x: Tensor) => x.gelu("none"),
  gelu_new: (x: Tensor) => x.gelu("tanh"),
  gelu_pytorch_tanh: (x: Tensor) => x.gelu("tanh"),
  gelu_fast: (x: Tensor) => x.gelu("tanh"),
} as const;
export type ActivationName = keyof typeof ACTIVATIONS;

/**
 * ACTIVATIONS[name], refusing a name it lacks: a model file in JavaScript is not type-checked, and an
 * unknown (or inherited, e.g. "toString") name would otherwise fail later as a TypeError from in here.
 */
function activation(prefix: string, name: ActivationName): (x: Tensor) => Tensor {
  if (!Object.hasOwn(ACTIVATIONS, name))
    throw new Error(
      `${prefix}: unknown activation "${name}" (known: ${Object.keys(ACTIVATIONS).join(", ")})`,
    );
  return ACTIVATIONS[name];
}

export interface AttentionOptions {
  hiddenSize: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  /** Bias on the q, k and v projections (Qwen2: yes; Llama: attention_bias). */
  qkvBias?: boolean;
  /** Bias on the output projection (Llama: attention_bias; Qwen2: no). */
  oBias?: boolean;
  /** Rotary embedding of q and k; absent: none. rotaryDim defaults to the head dim. */
  rope?: Omit<RopeOptions, "rotaryDim"> & { rotaryDim?: number };
  /** Softmax scale (default 1/√headDim). */
  scale?: number;
  /** Checkpoint names of the projections under the prefix. */
  names?: { q: string; k: string; v: string; o: string };
}

/** Multi-head / grouped-query self-attention with rotary embedding (transformers' LlamaAttention). */
export function selfAttention(m: Module, prefix: string, o: AttentionOptions): Layer {
  const { hiddenSize, numHeads, numKvHeads, headDim } = o;
  const n = o.names ?? { q: "q_proj", k: "k_proj", v: "v_proj", o: "o_proj" };
  const column = { bias: o.qkvBias ?? false, parallel: "column" as Parallel };
  const qProj = m.Linear(`${prefix}.${n.q}`, hiddenSize, numHeads * headDim, column);
  const kProj = m.Linear(`${prefix}.${n.k}`, hiddenSize, numKvHeads * headDim, column);
  const vProj = m.Linear(`${prefix}.${n.v}`, hiddenSize, numKvHeads * headDim, column);
  const oProj = m.Linear(`${prefix}.${n.o}`, numHeads * headDim, hiddenSize, {
    bias: o.oBias,
    parallel: "row",
  });
  const rope = o.rope ? { ...o.rope, rotaryDim: o.rope.rotaryDim ?? headDim } : undefined;
  let scale = o.scale ?? 1 / Math.sqrt(headDim);
  if (rope) {
    // YaRN scales cos and sin, i.e. q and k, by the same factor: the scores by its square.
    const f = m.ropeAttentionFactor(rope);
    if (f !== 1 && rope.rotaryDim !== headDim)
      throw new Error(`${prefix}: a RoPE attention factor with partial rotary dims is not supported`);
    scale *= f * f;
  }
  const attn = { numHeads, numKvHeads, headDim, scale };
  const rotate = (t: Tensor, heads: number) => (rope ? m.rope(t, heads, headDim, rope) : t);
  return (x) => {
    const q = rotate(qProj(x), numHeads);
    const k = rotate(kProj(x), numKvHeads);
    return oProj(m.attention(q, k, vProj(x), attn));
  };
}

export interface MlpOptions {
  hiddenSize: number;
  intermediateSize: number;
  activation: ActivationName;
  bias?: boolean;
}

/** down(act(gate(x)) · up(x)): SwiGLU / GeGLU (transformers' LlamaMLP). */
export function gatedMlp(
  m: Module,
  prefix: string,
  o: MlpOptions & { names?: { gate: string; up: string; down: string } },
): Layer {
  const n = o.names ?? { gate: "gate_proj", up: "up_proj", down: "down_proj" };
  const act = activation(prefix, o.activation);
  const { hiddenSize: H, intermediateSize: I, bias } = o;
  const gateProj = m.Linear(`${prefix}.${n.gate}`, H, I, { bias, parallel: "column" });
  const upProj = m.Linear(`${prefix}.${n.up}`, H, I, { bias, parallel: "column" });
  const downProj = m.Linear(`${prefix}.${n.down}`, I, H, { bias, parallel: "row" });
  return (x) => downProj(act(gateProj(x)).mul(upProj(x)));
}

export interface SparseMoeOptions {
  hiddenSize: number;
  /** Each expert's intermediate size. */
  intermediateSize: number;
  numExperts: number;
  /** Experts per token (num_experts_per_tok). */
  topK: number;
  /** Renormalise the top-k weights to sum 1 (Mixtral: yes; Qwen-MoE: norm_topk_prob). */
  normalize: boolean;
  /** Checkpoint names under the prefix: the router and each expert's gate / up / down. */
  names?: { router: string; experts: string; gate: string; up: string; down: string };
  /**
   * Block prefixes under which a checkpoint may instead hold the experts fused, as transformers 5's
   * MixtralExperts does: router `{p}.gate.weight`, `{p}.experts.gate_up_proj` [E, 2I, H] (each expert's
   * gate rows, then its up rows) and `{p}.experts.down_proj` [E, H, I]. Used when the per-expert
   * tensors are absent.
   */
  fusedPrefixes?: string[];
}

/**
 * transformers' MixtralSparseMoeBlock: router linear (`gate`), then each token's top-k SwiGLU experts
 * (`experts.{e}.w1` gate, `w3` up, `w2` down) weighted by the routing probabilities. Expert weights
 * are stacked into one tensor each. Their sharding hints (passes/tensor-parallel.ts): "expert_column"
 * (gate / up: an expert's rows hold its I) and "expert_row" (down: its columns hold I; partial sums,
 * so an all_reduce follows), with `experts` E, so ranks can split each expert's I or hold whole experts.
 * The router is replicated ("none"): every rank routes every token.
 */
export function sparseMoe(m: Module, prefix: string, o: SparseMoeOptions): Layer {
  const n = o.names ?? { router: "gate", experts: "experts", gate: "w1", up: "w3", down: "w2" };
  const { hiddenSize: H, intermediateSize: I, numExperts: E } = o;
  const fused = o.fusedPrefixes ?? [];
  const router = m.Linear(`${prefix}.${n.router}`, H, E, {
    parallel: "none",
    or: fused.map((p) => `${p}.gate`),
  });
  // Expert e of a fused tensor: select e, then (gate_up_proj) its gate or up row block.
  const fromFused = (tensor: string, shape: number[], rows?: [number, number]) => (e: number) =>
    fused.map((p) => ({
      name: `${p}.experts.${tensor}`,
      shape,
      transforms: [
        { op: "select" as const, axis: 0, index: e },
        ...(rows ? [{ op: "slice" as const, axis: 0, start: rows[0], end: rows[1] }] : []),
      ],
    }));
  const stacked = (w: string, shape: number[], parallel: string, or: (e: number) => RecipePart[]) =>
    m.stackedParam(
      `${prefix}.${n.experts}.${w}.weight`,
      Array.from({ length: E }, (_, e) => ({ name: `${prefix}.${n.experts}.${e}.${w}.weight`, or: or(e) })),
      shape,
      { parallel, role: "expert", experts: E },
    );
  const w = {
    w1: stacked(n.gate, [I, H], "expert_column", fromFused("gate_up_proj", [E, 2 * I, H], [0, I])),
    w3: stacked(n.up, [I, H], "expert_column", fromFused("gate_up_proj", [E, 2 * I, H], [I, 2 * I])),
    w2: stacked(n.down, [H, I], "expert_row", fromFused("down_proj", [E, H, I])),
  };
  const attrs = { numExperts: E, topK: o.topK, normalize: o.normalize, activation: "silu" as const };
  return (x) => m.moe(x, router(x), w, attrs, prefix);
}

/** fc_out(act(fc_in(x))): the two-layer MLP of GPT-2 / GPT-J. */
export function mlp(
  m: Module,
  prefix: string,
  o: MlpOptions & { names?: { in: string; out: string } },
): Layer {
  const n = o.names ?? { in: "fc_in", out: "fc_out" };
  const act = activation(prefix, o.activation);
  const fcIn = m.Linear(`${prefix}.${n.in}`, o.hiddenSize, o.intermediateSize, {
    bias: o.bias,
    parallel: "column",
  });
  const fcOut = m.Linear(`${prefix}.${n.out}`, o.intermediateSize, o.hiddenSize, {
    bias: o.bias,
    parallel: "row",
  });
  return (x) => fcOut(act(fcIn(x)));
}

/** h + attn(norm1(h)), then + mlp(norm2(·)): the pre-norm decoder layer of Llama, Mistral, Qwen2… */
export function preNormDecoderLayer(o: {
  inputNorm: Layer;
  attention: Layer;
  postAttentionNorm: Layer;
  mlp: Layer;
}): Layer {
  return (hidden) => {
    const h = hidden.add(o.attention(o.inputNorm(hidden)));
    return h.add(o.mlp(o.postAttentionNorm(h)));
  };
}

/** attn(norm(h)) + mlp(norm(h)) + h: one norm feeding attention and MLP in parallel (GPT-J, GPT-NeoX). */
export function parallelDecoderLayer(o: { norm: Layer; attention: Layer; mlp: Layer }): Layer {
  return (hidden) => {
    const h = o.norm(hidden);
    return o.attention(h).add(o.mlp(h)).add(hidden);
  };
}

/** The Llama-family config fields the Llama-style pieces below read. */
export interface LlamaStyleConfig extends DecoderConfig {
  rmsNormEps: number;
}

/**
 * The Llama-family decoder layer with transformers' checkpoint names (Llama, Mistral, Qwen2, and with
 * its own `mlp` Mixtral): input_layernorm → self_attn → post_attention_layernorm → mlp, pre-norm
 * residuals, RoPE from the config (inv_freq rounded to the checkpoint dtype, as transformers does).
 */
export function llamaDecoderLayer(
  m: Module,
  prefix: string,
  cfg: LlamaStyleConfig,
  o: { qkvBias: boolean; oBias: boolean; mlp?: Layer; mlpBias?: boolean; activation?: ActivationName },
): Layer {
  const norm = (name: string) => m.RMSNorm(`${prefix}.${name}`, cfg.hiddenSize, cfg.rmsNormEps);
  return preNormDecoderLayer({
    inputNorm: norm("input_layernorm"),
    attention: selfAttention(m, `${prefix}.self_attn`, {
      ...cfg,
      qkvBias: o.qkvBias,
      oBias: o.oBias,
      rope: { theta: cfg.ropeTheta, style: "neox", scaling: cfg.ropeScaling, invFreqInCheckpointDtype: true },
    }),
    postAttentionNorm: norm("post_attention_layernorm"),
    mlp:
      o.mlp ?? gatedMlp(m, `${prefix}.mlp`, { ...cfg, activation: o.activation ?? "silu", bias: o.mlpBias }),
  });
}

/**
 * model.embed_tokens → `layer(i)` for each layer → model.norm → lm_head (tied to the embedding when
 * the config says so): the Llama family's causal LM with transformers' checkpoint names.
 */
export function llamaStyleLM(
  m: Module,
  cfg: LlamaStyleConfig,
  layer: (i: number, prefix: string) => Layer,
): void {
  causalLM(m, {
    embed: m.Embedding("model.embed_tokens", cfg.vocabSize, cfg.hiddenSize),
    layers: stack(cfg.numLayers, (i) => layer(i, `model.layers.${i}`)),
    norm: m.RMSNorm("model.norm", cfg.hiddenSize, cfg.rmsNormEps),
    lmHead: m.Linear("lm_head", cfg.hiddenSize, cfg.vocabSize, {
      parallel: "vocab",
      weightName: cfg.tieWordEmbeddings ? "model.embed_tokens.weight" : undefined,
    }),
  });
}

/** embed → layers → final norm → lm_head over the rows that need logits; sets the "logits" output. */
export function causalLM(m: Module, o: { embed: Layer; layers: Layer[]; norm: Layer; lmHead: Layer }): void {
  let hidden = o.embed(m.inputIds);
  for (const layer of o.layers) hidden = layer(hidden);
  m.output("logits", o.lmHead(m.logitRows(o.norm(hidden))));
}

/** `count` layers built by `make(i)`, in order (each creates its weights when called). */
export function stack(count: number, make: (i: number) => Layer): Layer[] {
  return Array.from({ length: count }, (_, i) => make(i));
}
