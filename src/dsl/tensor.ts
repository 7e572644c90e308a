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

  // Elementwise (same shapes, fp32 math): see src/ops/elementwise.ts.
  add(o: Tensor): Tensor {
    return apply("add", [this, o]);
  }
  sub(o: Tensor): Tensor {
    return apply("sub", [this, o]);
  }
  mul(o: Tensor): Tensor {
    return apply("mul", [this, o]);
  }
  div(o: Tensor): Tensor {
    return apply("div", [this, o]);
  }
  /** this · factor, a constant (e.g. Gemma's embeddings · √hidden_size). */
  scale(factor: number): Tensor {
    return apply("scale", [this], { factor });
  }
  silu(): Tensor {
    return apply("silu", [this]);
  }
  /** "tanh": the tanh approximation (gelu_new, gelu_pytorch_tanh); "none": exact erf. */
  gelu(approximate: "tanh" | "none" = "tanh"): Tensor {
    return apply("gelu", [this], { approximate });
  }
  tanh(): Tensor {
    return apply("tanh", [this]);
  }
  sigmoid(): Tensor {
    return apply("sigmoid", [this]);
  }
  exp(): Tensor {
    return apply("exp", [this]);
  }
  /** cap · tanh(this / cap): Gemma 2's soft-capping of attention scores and final logits. */
  softcap(cap: number): Tensor {
    return apply("softcap", [this], { cap });
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
