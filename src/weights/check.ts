// Before anything is written: every checkpoint weight the graph needs exists with the declared shape.
import type { Checkpoint } from "../checkpoint/checkpoint.ts";
import { CheckpointError } from "../checkpoint/errors.ts";
import type { Graph } from "../ir/types.ts";

export function checkCheckpointWeights(g: Graph, ckpt: Checkpoint): void {
  for (const v of g.values.values()) {
    if (v.kind !== "weight" || v.recipe?.kind !== "checkpoint") continue;
    for (const { name, shape } of v.recipe.parts) {
      if (!ckpt.has(name)) throw new CheckpointError(ckpt.dir, "missing tensor the model needs", name);
      const info = ckpt.info(name);
      if (info.shape.join(",") !== shape.join(","))
        throw new CheckpointError(info.file, `shape [${info.shape}] but the model expects [${shape}]`, name);
    }
  }
}
