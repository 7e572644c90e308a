// The DSL's tensor handle: a value id plus the graph being built, with chainable ops.
import { addNode } from "../ir/builder.ts";
import type { Attrs, Graph, Shape } from "../ir/types.ts";

export class Tensor {
  constructor(
    readonly graph: Graph,
    readonly id: number,
    /** Name scope for nodes created from this tensor (e.g. "model.layers.3.mlp"). */
    readonly scope?: string,
  ) {}

  get shape(): Shape {
    return this.graph.values.get(this.id)!.shape;
  }
  /** Size of the last dim (always static in our models). */
  get features(): number {
    const d = this.shape[this.shape.length - 1];
    if (typeof d !== "number") throw new Error("feature dim must be static");
    return d;
  }

  add(o: Tensor): Tensor {
    return apply("add", [this, o]);
  }
  mul(o: Tensor): Tensor {
    return apply("mul", [this, o]);
  }
  silu(): Tensor {
    return apply("silu", [this]);
  }
  gelu(approximate: "tanh" | "none" = "tanh"): Tensor {
    return apply("gelu", [this], { approximate });
  }
  split(sizes: number[]): Tensor[] {
    return applyMany("split", [this], { sizes });
  }
}

/** Applies an op to tensors (null for an absent optional input); returns its single output. */
export function apply(op: string, inputs: (Tensor | null)[], attrs: Attrs = {}, scope?: string): Tensor {
  const outs = applyMany(op, inputs, attrs, scope);
  if (outs.length !== 1) throw new Error(`${op} has ${outs.length} outputs; use applyMany`);
  return outs[0];
}

export function applyMany(
  op: string,
  inputs: (Tensor | null)[],
  attrs: Attrs = {},
  scope?: string,
): Tensor[] {
  const first = inputs.find((t): t is Tensor => t !== null);
  if (!first) throw new Error(`${op}: no inputs`);
  const g = first.graph;
  const sc = scope ?? first.scope;
  return addNode(
    g,
    op,
    inputs.map((t) => (t ? t.id : null)),
    attrs,
    { scope: sc },
  ).map((id) => new Tensor(g, id, sc));
}
