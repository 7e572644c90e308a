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
  { op: "slice"; axis: number; start: number; end: number };

export type WeightRecipe =
  | {
      kind: "checkpoint";
      /** Checkpoint tensor names, concatenated along axis 0 (QKV / gate-up fusion). */
      sources: string[];
      /** Shape of each source as the model declared it, to validate against the checkpoint. */
      sourceShapes: number[][];
      transforms: Transform[];
      init: WeightInit;
    }
  | { kind: "constant"; data: number[] };

/** Uniform distribution with the given standard deviation (HF's initializer_range is a std). */
export function uniformWithStd(std: number, mean = 0): WeightInit {
  return { mean, scale: std * Math.sqrt(3) };
}
