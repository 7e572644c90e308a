// Structural check of a graph: every node's op is known, its inputs exist and are defined before it
// (topological order, each value defined once), its output types are what the registry infers, and
// every graph output is defined. Passes call it on their result; a failure names the first bad node.
import type { ValueType } from "../ops/registry.ts";
import { inferNode } from "./builder.ts";
import { type Graph, sameDim, shapeStr } from "./types.ts";

export class GraphError extends Error {
  override name = "GraphError";
}

export function verifyGraph(g: Graph): void {
  const defined = new Set<number>(Object.values(g.inputs));
  for (const v of g.values.values()) if (v.kind === "weight") defined.add(v.id);
  g.nodes.forEach((n, i) => {
    const where = `node ${i} (${n.op}${n.scope ? ` in ${n.scope}` : ""})`;
    for (const id of n.inputs)
      if (id !== null && !defined.has(id))
        throw new GraphError(`${where}: input %${id} is not defined before it`);
    let types: ValueType[];
    try {
      types = inferNode(g, n.op, n.inputs, n.attrs);
    } catch (e) {
      throw new GraphError(`${where}: ${(e as Error).message}`);
    }
    if (types.length !== n.outputs.length)
      throw new GraphError(`${where}: ${n.outputs.length} outputs, the op infers ${types.length}`);
    n.outputs.forEach((o, k) => {
      const v = g.values.get(o);
      if (!v) throw new GraphError(`${where}: output %${o} has no value`);
      if (defined.has(o)) throw new GraphError(`${where}: output %${o} is defined twice`);
      const t = types[k];
      if (
        v.dtype !== t.dtype ||
        v.shape.length !== t.shape.length ||
        v.shape.some((d, j) => !sameDim(d, t.shape[j]))
      )
        throw new GraphError(
          `${where}: output %${o} is ${v.dtype}${shapeStr(v.shape)}, the op infers ${t.dtype}${shapeStr(t.shape)}`,
        );
      defined.add(o);
    });
  });
  for (const [k, id] of Object.entries(g.outputs))
    if (!defined.has(id)) throw new GraphError(`graph output "${k}" (%${id}) is never defined`);
}
