// Graph construction with shape inference through the op registry.
import { getOp, outputCount, type ValueType } from "../ops/index.ts";
import type { WeightRecipe } from "../weights/recipe.ts";
import type { Attrs, DType, Graph, GraphMeta, Node, Shape, Value } from "./types.ts";

export function emptyGraph(meta: GraphMeta): Graph {
  return { values: new Map(), nodes: [], inputs: {}, outputs: {}, meta, nextId: 0 };
}

export function addValue(g: Graph, v: Omit<Value, "id">): Value {
  const value: Value = { ...v, id: g.nextId++ };
  g.values.set(value.id, value);
  return value;
}

export function addInput(g: Graph, name: string, dtype: DType, shape: Shape): Value {
  const v = addValue(g, { name, dtype, shape, kind: "input" });
  g.inputs[name] = v.id;
  return v;
}

export function addWeight(
  g: Graph,
  name: string,
  dtype: DType,
  shape: Shape,
  recipe: WeightRecipe,
  hints?: Value["hints"],
): Value {
  return addValue(g, { name, dtype, shape, kind: "weight", recipe, hints });
}

/** Infers output types of `op` applied to `inputs` (value ids, null for absent optionals). */
export function inferNode(g: Graph, op: string, inputs: (number | null)[], attrs: Attrs): ValueType[] {
  const def = getOp(op);
  if (inputs.length > def.inputs.length)
    throw new Error(`${op}: ${inputs.length} inputs given, takes ${def.inputs.length}`);
  def.inputs.forEach((name, i) => {
    if (!name.endsWith("?") && (inputs[i] === null || inputs[i] === undefined))
      throw new Error(`${op}: required input "${name}" missing`);
  });
  const types = def.inputs.map((_, i) => {
    const id = inputs[i];
    if (id === null || id === undefined) return null;
    const v = g.values.get(id);
    if (!v) throw new Error(`${op}: input value ${id} does not exist`);
    return { dtype: v.dtype, shape: v.shape };
  });
  const out = def.infer(types, attrs);
  if (out.length !== outputCount(def, attrs)) throw new Error(`${op}: inferred ${out.length} outputs`);
  return out;
}

/** Appends a node, creating its output values. Returns the output value ids. */
export function addNode(
  g: Graph,
  op: string,
  inputs: (number | null)[],
  attrs: Attrs = {},
  opts: { scope?: string; names?: string[] } = {},
): number[] {
  const types = inferNode(g, op, inputs, attrs);
  const padded = [...inputs];
  const outputs = types.map(
    (t, i) =>
      addValue(g, {
        name: opts.names?.[i] ?? `${opts.scope ?? op}.${op}${types.length > 1 ? `.${i}` : ""}`,
        dtype: t.dtype,
        shape: t.shape,
        kind: "activation",
      }).id,
  );
  const node: Node = { op, inputs: padded, outputs, attrs, scope: opts.scope };
  g.nodes.push(node);
  return outputs;
}

export function cloneGraph(g: Graph): Graph {
  return {
    values: new Map([...g.values].map(([k, v]) => [k, { ...v }])),
    nodes: g.nodes.map((n) => ({
      ...n,
      inputs: [...n.inputs],
      outputs: [...n.outputs],
      attrs: { ...n.attrs },
    })),
    inputs: { ...g.inputs },
    outputs: { ...g.outputs },
    meta: { ...g.meta },
    nextId: g.nextId,
  };
}
