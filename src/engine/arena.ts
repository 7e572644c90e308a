// The activation arena plan stored in the engine. The memory-planning pass computes a liveness-based
// plan into graph.meta.arena; without it, every activation gets its own slot (the naive sum).
import { type ArenaPlan, DTYPE_BYTES, type Graph, numel } from "../ir/types.ts";
import { alignUp, WEIGHT_ALIGN } from "./format.ts";

export type { ArenaPlan };

export function activationBytes(g: Graph, id: number): number {
  const v = g.values.get(id)!;
  return numel(v.shape) * DTYPE_BYTES[v.dtype];
}

export function naiveArena(g: Graph): ArenaPlan {
  const offsets: Record<string, number> = {};
  let off = 0;
  for (const n of g.nodes)
    for (const o of n.outputs) {
      offsets[o] = off;
      off = alignUp(off + activationBytes(g, o), WEIGHT_ALIGN);
    }
  return { bytes: off, offsets };
}

export function arenaOf(g: Graph): ArenaPlan {
  return g.meta.arena ?? naiveArena(g);
}
