// Lazy weights: a recipe says where a weight's bytes come from and how to transform them. Nothing is
// read while the graph is built or rewritten; the engine writer materialises one weight at a time.

/** Distribution used when an engine is built with --random-weights. */
export interface WeightInit {
  mean: number;
  /** Half-width of the uniform distribution. */
  scale: number;
}

export type Transform =
  /** Keep [start, end) along an axis (tensor-parallel shard). */
  | { op: "slice"; axis: number; start: number; end: number }
  /** Keep index `index` along an axis and drop the axis (one expert of a fused [E, …] checkpoint tensor). */
  | { op: "select"; axis: number; index: number }
  /** Quantise a [N, K] weight (src/quant/weights.ts): emit its stored values, or its scales. Always last. */
  | {
      op: "quantize";
      scheme: "fp8" | "int8-wo" | "int4-wo";
      group_size?: number;
      /** int8-wo / int4-wo in an f16 / bf16 graph: scales rounded up to that dtype (src/quant/weights.ts). */
      scale_dtype?: "f16" | "bf16";
      output: "values" | "scales";
    };

/** One checkpoint tensor and the transforms applied to it alone (e.g. this rank's slice of k_proj). */
export interface RecipePart {
  name: string;
  /** Shape as the model declared it, validated against the checkpoint before anything is written. */
  shape: number[];
  transforms: Transform[];
  /**
   * The same tensor in other checkpoint layouts, for checkpoints without `name` (transformers 5 may
   * store Mixtral's experts fused: experts.{e}.w1 is row block [0, I) of experts.gate_up_proj[e]).
   * Resolved against the checkpoint before any pass runs (src/weights/check.ts).
   */
  or?: RecipePart[];
}

export type WeightRecipe =
  | {
      kind: "checkpoint";
      /** Parts concatenated along axis 0 after their own transforms (QKV / gate-up fusion). */
      parts: RecipePart[];
      /** Transforms of the concatenated tensor. */
      transforms: Transform[];
      init: WeightInit;
    }
  | { kind: "constant"; data: number[] };

/** Uniform distribution with the given standard deviation (HF's initializer_range is a std). */
export function uniformWithStd(std: number, mean = 0): WeightInit {
  return { mean, scale: std * Math.sqrt(3) };
}
