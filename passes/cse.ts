// Common-subexpression elimination: two nodes with the same op, attributes and inputs compute the
// same values, so the later one is dropped and its readers read the earlier one. add/mul are
// commutative. Ops with sideEffects (attention, collectives) are never merged. Constant weights with
// identical data (e.g. two rope tables) are merged first, so nodes reading them can merge too.
// Checkpoint weights are left alone: a later pass may want different layouts for two uses of one
// tensor (a tied embedding and lm_head).
import { cloneGraph } from "../src/ir/builder.ts";
import type { AttrValue, Graph } from "../src/ir/types.ts";
import { getOp } from "../src/ops/index.ts";
import type { PassContext } from "./pass.ts";
import { bestEffortPass } from "./pattern.ts";

const COMMUTATIVE = new Set(["add", "mul"]);

function canon(a: AttrValue): AttrValue {
  if (a && typeof a === "object" && !Array.isArray(a))
    return Object.fromEntries(
      Object.keys(a)
        .sort()
        .map((k) => [k, canon((a as Record<string, AttrValue>)[k])]),
    );
  return a;
}

export function eliminateCommonSubexpressions(g0: Graph, ctx: PassContext): Graph {
  const g = cloneGraph(g0);
  const map = new Map<number, number>();
  const constants = new Map<string, number>();
  for (const v of g.values.values()) {
    if (v.kind !== "weight" || v.recipe?.kind !== "constant") continue;
    const key = JSON.stringify([v.dtype, v.shape, v.recipe.data]);
    const first = constants.get(key);
    if (first === undefined) constants.set(key, v.id);
    else {
      map.set(v.id, first);
      ctx.log.match("constant", v.name);
    }
  }
  const seen = new Map<string, number[]>();
  const nodes = [];
  for (const n of g.nodes) {
    n.inputs = n.inputs.map((id) => (id !== null && map.has(id) ? map.get(id)! : id));
    if (getOp(n.op).sideEffects) {
      nodes.push(n);
      continue;
    }
    const ins = COMMUTATIVE.has(n.op) ? [...n.inputs].sort((a, b) => (a ?? -1) - (b ?? -1)) : n.inputs;
    const key = JSON.stringify([n.op, ins, canon(n.attrs)]);
    const prev = seen.get(key);
    if (prev) {
      n.outputs.forEach((o, i) => map.set(o, prev[i]));
      ctx.log.match("duplicate-node", n.scope ?? n.op);
      continue;
    }
    seen.set(key, n.outputs);
    nodes.push(n);
  }
  g.nodes = nodes;
  for (const k of Object.keys(g.outputs)) if (map.has(g.outputs[k])) g.outputs[k] = map.get(g.outputs[k])!;
  return g;
}

export const cse = bestEffortPass("cse", eliminateCommonSubexpressions);
