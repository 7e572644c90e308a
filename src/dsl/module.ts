// The model-building context a model file receives: graph inputs, nn-style layers that carry
// checkpoint names and parallelism hints, and the few ops that need more than tensors (rope,
// attention). Nothing here mentions kernels, ranks or quantisation: passes decide those later.
import { addInput, addWeight, emptyGraph } from "../ir/builder.ts";
import type { Dim, DType, Graph } from "../ir/types.ts";
import { type RopeScaling, ropeAttentionFactor, ropeInvFreq } from "../ops/rope-freq.ts";
import { roundToTorchDtype } from "../ops/round.ts";
import { type RecipePart, uniformWithStd, type WeightInit } from "../weights/recipe.ts";
import { apply, applyMany, Tensor } from "./tensor.ts";

export type Parallel = "column" | "row" | "vocab" | "none";

export interface BuildLimits {
  maxBatchSize: number;
  maxSeqLen: number;
  maxNumTokens: number;
}

export interface RopeOptions {
  rotaryDim: number;
  theta: number;
  style: "neox" | "gptj";
  scaling?: RopeScaling;
  /**
   * transformers keeps Llama's inv_freq as a buffer that is cast to the checkpoint dtype (bf16/fp16)
   * when the model is loaded in it; mirror that rounding so logits match Hugging Face's.
   */
  invFreqInCheckpointDtype?: boolean;
}

export interface NormOptions {
  /** The norm multiplies by (weight + weightOffset); Gemma: 1. */
  weightOffset?: number;
}

export class Module {
  readonly graph: Graph;
  readonly inputIds: Tensor;
  readonly positions: Tensor;
  readonly logitsIndices: Tensor;
  private layerCount = 0;
  private ropeCache = new Map<string, Tensor>();

  constructor(
    /** Storage dtype of weights and activations. */
    readonly dtype: DType,
    readonly limits: BuildLimits,
    /** Std of random weights (HF initializer_range). */
    readonly initStd = 0.02,
    /** The Hugging Face checkpoint's dtype (config torch_dtype / dtype), e.g. "bfloat16". */
    readonly checkpointDtype = "float32",
  ) {
    const numTokens: Dim = { sym: "num_tokens", max: limits.maxNumTokens };
    const numLogits: Dim = { sym: "num_logits", max: limits.maxNumTokens };
    this.graph = emptyGraph({ numLayers: 0, numKvHeads: 0, headDim: 0 });
    this.inputIds = new Tensor(this.graph, addInput(this.graph, "input_ids", "i32", [numTokens]).id);
    this.positions = new Tensor(this.graph, addInput(this.graph, "positions", "i32", [numTokens]).id);
    this.logitsIndices = new Tensor(
      this.graph,
      addInput(this.graph, "logits_indices", "i32", [numLogits]).id,
    );
  }

  /** A checkpoint weight; `or`: other names it may have (another checkpoint layout, same shape). */
  param(
    name: string,
    shape: number[],
    init: WeightInit,
    hints?: Record<string, string | number>,
    or: string[] = [],
  ): Tensor {
    const alternatives = or.map((n) => ({ name: n, shape, transforms: [] }));
    const recipe = {
      kind: "checkpoint" as const,
      parts: [{ name, shape, transforms: [], ...(or.length ? { or: alternatives } : {}) }],
      transforms: [],
      init,
    };
    return new Tensor(this.graph, addWeight(this.graph, name, this.dtype, shape, recipe, hints).id);
  }

  /** nn.Linear(in, out, bias): weight [out, in] as Hugging Face stores it. */
  Linear(
    name: string,
    inFeatures: number,
    outFeatures: number,
    opts: { bias?: boolean; parallel?: Parallel; weightName?: string; or?: string[] } = {},
  ): (x: Tensor) => Tensor {
    const parallel = opts.parallel ?? "none";
    const w = this.param(
      opts.weightName ?? `${name}.weight`,
      [outFeatures, inFeatures],
      uniformWithStd(this.initStd),
      {
        parallel,
        role: "linear",
      },
      opts.or?.map((n) => `${n}.weight`),
    );
    const b = opts.bias
      ? this.param(`${name}.bias`, [outFeatures], { mean: 0, scale: 0 }, { parallel, role: "bias" })
      : null;
    return (x) => apply("linear", [x, w, b], { activation: "none" }, name);
  }

  /**
   * One weight stacked from per-expert checkpoint tensors along axis 0 (experts.{e}.w1 → [E·out, in]),
   * each part validated against the checkpoint on its own, so a missing expert names its tensor.
   * A part's `or` is where another layout keeps that expert (e.g. a slice of a fused [E, …] tensor).
   */
  stackedParam(
    name: string,
    parts: { name: string; or?: RecipePart[] }[],
    partShape: number[],
    hints: Record<string, string | number>,
  ): Tensor {
    const recipe = {
      kind: "checkpoint" as const,
      parts: parts.map((p) => ({ ...p, shape: partShape, transforms: [] })),
      transforms: [],
      init: uniformWithStd(this.initStd),
    };
    const shape = [partShape[0] * parts.length, ...partShape.slice(1)];
    return new Tensor(this.graph, addWeight(this.graph, name, this.dtype, shape, recipe, hints).id);
  }

  /**
   * Sparse mixture of experts over router logits (src/ops/moe.ts); w1/w3 [E·I, H], w2 [E·H, I].
   */
  moe(
    x: Tensor,
    routerLogits: Tensor,
    w: { w1: Tensor; w3: Tensor; w2: Tensor },
    o: { numExperts: number; topK: number; normalize: boolean; activation: "silu" },
    scope?: string,
  ): Tensor {
    return apply(
      "moe",
      [x, routerLogits, w.w1, w.w3, w.w2],
      { num_experts: o.numExperts, top_k: o.topK, normalize: o.normalize ? 1 : 0, activation: o.activation },
      scope,
    );
  }

  Embedding(name: string, vocab: number, dim: number): (ids: Tensor) => Tensor {
    const table = this.param(`${name}.weight`, [vocab, dim], uniformWithStd(this.initStd), {
      parallel: "vocab",
      role: "embedding",
    });
    return (ids) => apply("embedding", [ids, table], {}, name);
  }

  /**
   * RMSNorm. weightOffset: the norm scales by (weight + offset) — Gemma stores w and uses (1 + w);
   * random weights then start at 1 − offset so the effective scale is 1 as in a plain norm.
   */
  RMSNorm(name: string, dim: number, eps: number, o: NormOptions = {}): (x: Tensor) => Tensor {
    const off = o.weightOffset ?? 0;
    const w = this.param(`${name}.weight`, [dim], { mean: 1 - off, scale: 0 }, { role: "norm" });
    return (x) => apply("rms_norm", [x, w], off ? { eps, weight_offset: off } : { eps }, name);
  }

  LayerNorm(name: string, dim: number, eps: number, o: NormOptions = {}): (x: Tensor) => Tensor {
    const off = o.weightOffset ?? 0;
    const w = this.param(`${name}.weight`, [dim], { mean: 1 - off, scale: 0 }, { role: "norm" });
    const b = this.param(`${name}.bias`, [dim], { mean: 0, scale: 0 }, { role: "norm" });
    return (x) => apply("layer_norm", [x, w, b], off ? { eps, weight_offset: off } : { eps }, name);
  }

  /** Rotary embedding of x [T, heads*headDim] at the step's positions. */
  rope(x: Tensor, heads: number, headDim: number, o: RopeOptions): Tensor {
    return apply("rope", [x, this.positions, this.invFreq(o)], {
      num_heads: heads,
      head_dim: headDim,
      rotary_dim: o.rotaryDim,
      style: o.style,
    });
  }

  /** What the RoPE scaling multiplies cos and sin by (YaRN's attention factor; 1 for the others). */
  ropeAttentionFactor(o: Pick<RopeOptions, "scaling">): number {
    return ropeAttentionFactor(o.scaling ?? null);
  }

  /**
   * Causal self-attention over the sequence's cached past and the current tokens. Each call is one
   * layer of the KV cache, in call order.
   */
  attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o: { numHeads: number; numKvHeads: number; headDim: number; scale?: number },
  ): Tensor {
    const layer = this.layerCount++;
    this.graph.meta.numLayers = this.layerCount;
    this.graph.meta.numKvHeads = o.numKvHeads;
    this.graph.meta.headDim = o.headDim;
    return apply("attention", [q, k, v], {
      layer,
      num_heads: o.numHeads,
      num_kv_heads: o.numKvHeads,
      head_dim: o.headDim,
      scale: o.scale ?? 1 / Math.sqrt(o.headDim),
    });
  }

  /** The rows that need logits (Hugging Face's logits_to_keep): last tokens, or all for golden checks. */
  logitRows(h: Tensor): Tensor {
    return apply("gather_rows", [h, this.logitsIndices]);
  }

  output(name: string, t: Tensor): void {
    this.graph.outputs[name] = t.id;
  }

  private invFreq(o: RopeOptions): Tensor {
    const key = JSON.stringify([o.rotaryDim, o.theta, o.scaling ?? null, !!o.invFreqInCheckpointDtype]);
    let t = this.ropeCache.get(key);
    if (!t) {
      const inv = ropeInvFreq(o.rotaryDim, o.theta, o.scaling ?? null, { seqLen: this.limits.maxSeqLen });
      if (o.invFreqInCheckpointDtype) roundToTorchDtype(inv, this.checkpointDtype);
      const data = Array.from(inv);
      const v = addWeight(this.graph, `rope.inv_freq.${this.ropeCache.size}`, "f32", [data.length], {
        kind: "constant",
        data,
      });
      t = new Tensor(this.graph, v.id);
      this.ropeCache.set(key, t);
    }
    return t;
  }
}

export { applyMany, Tensor };
