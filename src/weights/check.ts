// Before anything is written: every checkpoint weight the graph needs exists with the declared shape,
// each recipe part bound to the layout the checkpoint has (the part itself or one of its `or`
// alternatives, e.g. transformers 5's fused experts), so later passes see one layout only.
import * as path from "node:path";
import { type Checkpoint, INDEX_FILE } from "../checkpoint/checkpoint.ts";
import { FLOAT_DTYPES, isFloatDtype } from "../checkpoint/dtype.ts";
import { CheckpointError } from "../checkpoint/errors.ts";
import type { Graph } from "../ir/types.ts";
import type { RecipePart } from "./recipe.ts";

export function bindCheckpointWeights(g: Graph, ckpt: Checkpoint): void {
  for (const v of g.values.values()) {
    if (v.kind !== "weight" || v.recipe?.kind !== "checkpoint") continue;
    v.recipe = { ...v.recipe, parts: v.recipe.parts.map((p) => bindPart(p, ckpt)) };
  }
}

function bindPart(p: RecipePart, ckpt: Checkpoint): RecipePart {
  const { or = [], ...own } = p;
  const bound = [own, ...or].find((c) => ckpt.has(c.name));
  if (!bound) {
    // A shard holding it though the index's weight_map leaves it out: "missing" alone sends the user to the shards.
    const shard = ckpt.unlisted?.(p.name);
    if (shard)
      throw new CheckpointError(
        path.join(ckpt.dir, INDEX_FILE),
        `not in weight_map, though shard "${shard}" holds it: add it to weight_map`,
        p.name,
      );
    const alt = or.length ? ` (nor ${or.map((a) => `"${a.name}"`).join(" or ")} of another layout)` : "";
    throw new CheckpointError(ckpt.dir, `missing tensor the model needs${alt}`, p.name);
  }
  const info = ckpt.info(bound.name);
  // Refused here, before anything is written, rather than when the writer reaches the tensor (a large build
  // in): integer, BOOL and F64 tensors are not decoded (src/checkpoint/dtype.ts).
  if (!isFloatDtype(info.dtype))
    throw new CheckpointError(
      info.file,
      `dtype ${info.dtype} cannot be a weight (weights are read from ${FLOAT_DTYPES.join(", ")})`,
      bound.name,
    );
  if (info.shape.join(",") !== bound.shape.join(","))
    throw new CheckpointError(
      info.file,
      `shape [${info.shape}] but the model expects [${bound.shape}]`,
      bound.name,
    );
  return bound;
}
