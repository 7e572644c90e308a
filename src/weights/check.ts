// Before anything is written: every checkpoint weight the graph needs exists with the declared shape.
import type { Checkpoint } from "../checkpoint/checkpoint.ts";
import { CheckpointError } from "../checkpoint/errors.ts";
import type { Graph } from "../ir/types.ts";

export function checkCheckpointWeights(g: Graph, ckpt: Checkpoint): void {
  for (const v of g.values.values()) {
    if (v.kind !== "weight" || v.recipe?.kind !== "checkpoint") continue;
    v.recipe.sources.forEach((name, i) => {
      if (!ckpt.has(name)) throw new CheckpointError(ckpt.dir, "missing tensor the model needs", name);
      const info = ckpt.info(name);
      const want = v.recipe!.kind === "checkpoint" ? v.recipe!.sourceShapes[i] : [];
      if (info.shape.join(",") !== want.join(","))
        throw new CheckpointError(info.file, `shape [${info.shape}] but the model expects [${want}]`, name);
    });
  }
}
