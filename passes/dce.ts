// Dead-code elimination: nodes none of whose outputs reach a graph output are removed, except ops
// the registry marks with sideEffects (attention writes the KV cache, collectives synchronise ranks),
// which always stay. Values nothing refers to any more (weights replaced by fused ones, outputs of
// erased nodes) are dropped from the value table.
import { cloneGraph } from "../src/ir/builder.ts";
import type { Graph } from "../src/ir/types.ts";
import { getOp } from "../src/ops/index.ts";
import type { PassContext } from "./pass.ts";
import { bestEffortPass } from "./pattern.ts";

export function eliminateDeadCode(g0: Graph, ctx: PassContext): Graph {
  const g = cloneGraph(g0);
  const live = new Set<number>(Object.values(g.outputs));
  const keep = new Array<boolean>(g.nodes.length).fill(false);
  for (let i = g.nodes.length - 1; i >= 0; i--) {
    const n = g.nodes[i];
    if (getOp(n.op).sideEffects || n.outputs.some((o) => live.has(o))) {
      keep[i] = true;
      for (const id of n.inputs) if (id !== null) live.add(id);
    }
  }
  g.nodes.forEach((n, i) => {
    if (!keep[i]) ctx.log.match("dead-node", n.scope ?? n.op);
  });
  g.nodes = g.nodes.filter((_, i) => keep[i]);
  const referenced = new Set<number>([...Object.values(g.inputs), ...Object.values(g.outputs)]);
  for (const n of g.nodes) for (const id of [...n.inputs, ...n.outputs]) if (id !== null) referenced.add(id);
  let pruned = 0;
  for (const id of [...g.values.keys()])
    if (!referenced.has(id)) {
      g.values.delete(id);
      pruned++;
    }
  if (pruned) ctx.log.note(`dropped ${pruned} unreferenced values`);
  return g;
}

export const dce = bestEffortPass("dce", eliminateDeadCode);
