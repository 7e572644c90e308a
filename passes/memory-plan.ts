// Static memory planning: every activation (node output) gets a byte offset in one arena, sized at the
// build limits (symbolic dims at their maxima: max_num_tokens, …). Two buffers may share bytes only if
// their lifetimes — from the node that writes one to the last node that reads it — do not overlap;
// graph outputs live to the end of the step so nothing overwrites them. Greedy best fit: largest
// buffers first, each into the smallest free gap (256-byte aligned) among the buffers live at the same
// time. The plan goes to graph.meta.arena ({bytes, offsets}) and into the engine header.
//
// Must run last: any pass after it that changes the graph would invalidate the offsets.
import { type ArenaPlan, activationBytes } from "../src/engine/arena.ts";
import { alignUp, WEIGHT_ALIGN } from "../src/engine/format.ts";
import { cloneGraph } from "../src/ir/builder.ts";
import type { Graph } from "../src/ir/types.ts";
import { bestEffortPass } from "./pattern.ts";

export interface Buffer {
  id: number;
  /** Index of the writing node. */
  start: number;
  /** Index of the last reading node (inclusive); nodes.length for graph outputs. */
  end: number;
  bytes: number;
  offset: number;
}

export function lifetimes(g: Graph): Buffer[] {
  const bufs = new Map<number, Buffer>();
  g.nodes.forEach((n, i) => {
    for (const o of n.outputs)
      bufs.set(o, {
        id: o,
        start: i,
        end: i,
        bytes: alignUp(activationBytes(g, o), WEIGHT_ALIGN),
        offset: -1,
      });
    for (const id of n.inputs) {
      const b = id === null ? undefined : bufs.get(id);
      if (b) b.end = i;
    }
  });
  for (const id of Object.values(g.outputs)) {
    const b = bufs.get(id);
    if (b) b.end = g.nodes.length;
  }
  return [...bufs.values()];
}

export function planArena(g: Graph): ArenaPlan {
  const bufs = lifetimes(g).sort((a, b) => b.bytes - a.bytes || a.start - b.start || a.id - b.id);
  const placed: Buffer[] = [];
  let total = 0;
  for (const b of bufs) {
    const live = placed
      .filter((p) => p.start <= b.end && b.start <= p.end)
      .sort((x, y) => x.offset - y.offset);
    let cursor = 0;
    let best = -1;
    let bestGap = Infinity;
    for (const p of live) {
      const gap = p.offset - cursor;
      if (gap >= b.bytes && gap < bestGap) {
        best = cursor;
        bestGap = gap;
      }
      cursor = Math.max(cursor, p.offset + p.bytes);
    }
    b.offset = best >= 0 ? best : cursor;
    total = Math.max(total, b.offset + b.bytes);
    placed.push(b);
  }
  const offsets: Record<string, number> = {};
  for (const b of [...placed].sort((x, y) => x.id - y.id)) offsets[b.id] = b.offset;
  return { bytes: total, offsets };
}

export const memoryPlan = bestEffortPass("memory-plan", (g0, ctx) => {
  const g = cloneGraph(g0);
  const plan = planArena(g);
  g.meta = { ...g.meta, arena: plan };
  ctx.log.match("arena", `${Object.keys(plan.offsets).length} activation buffers`);
  return g;
});
