// Lazy weight concatenation (passes/concat-weights.ts), which the QKV and gate-up fusions use: when
// weights may be concatenated (each refusal with its reason, as the fusion notes print it), the fused
// recipe (each part keeping its own transforms; a single-part recipe's transforms move into the part),
// and the fused weight's name.
import { describe, expect, it } from "vitest";
import { concatWeights, fusedName, whyNotConcat } from "../../passes/concat-weights.ts";
import { addInput, addWeight, emptyGraph } from "../../src/ir/builder.ts";
import type { DType, Graph, Shape } from "../../src/ir/types.ts";
import type { RecipePart, Transform } from "../../src/weights/recipe.ts";

const slice = (start: number, end: number): Transform => ({ op: "slice", axis: 0, start, end });
const part = (name: string, shape: number[], transforms: Transform[] = []): RecipePart => ({
  name,
  shape,
  transforms,
});

function graph() {
  const g: Graph = emptyGraph({ numLayers: 1, numKvHeads: 1, headDim: 4 });
  const init = { mean: 0, scale: 0.5 };
  const w = (
    name: string,
    shape: Shape,
    parts: RecipePart[],
    transforms: Transform[] = [],
    dtype: DType = "f16",
  ) =>
    addWeight(g, name, dtype, shape, { kind: "checkpoint", parts, transforms, init }, { split: "column" }).id;
  const ids = {
    q: w("m.q_proj.weight", [8, 4], [part("m.q_proj.weight", [16, 4])], [slice(0, 8)]),
    k: w("m.k_proj.weight", [4, 4], [part("m.k_proj.weight", [4, 4])]),
    // Already a concatenation (of two parts, each with its own slice).
    kv: w("m.kv.weight", [4, 4], [part("a", [4, 4], [slice(0, 2)]), part("b", [4, 4], [slice(2, 4)])]),
    bf: w("m.v_proj.weight", [4, 4], [part("m.v_proj.weight", [4, 4])], [], "bf16"),
    wide: w("m.o_proj.weight", [4, 8], [part("m.o_proj.weight", [4, 8])]),
    rank3: w("m.e.weight", [4, 4, 1], [part("m.e.weight", [4, 4, 1])]),
    // Trailing dims 12, 3 and 1, 23: the same digits, so the comparison must keep the dims apart.
    d12: w("m.f.weight", [2, 12, 3], [part("m.f.weight", [2, 12, 3])]),
    d1: w("m.g.weight", [2, 1, 23], [part("m.g.weight", [2, 1, 23])]),
    i8: w("m.q8.weight", [4, 4], [part("m.q8.weight", [4, 4])], [], "i8"),
    sym: w("m.s.weight", [{ sym: "n", max: 4 } as never, 4], [part("m.s.weight", [4, 4])]),
    bad: w("m.bad.weight", [4, 4], [part("a", [2, 4]), part("b", [2, 4])], [slice(0, 4)]),
    rnd: addWeight(g, "m.r.weight", "f16", [4, 4], { kind: "constant", data: Array(16).fill(0) }).id,
    x: addInput(g, "x", "f16", [2, 4]).id,
  };
  return { g, ids };
}

describe("whyNotConcat", () => {
  it("null when every operand is a float checkpoint weight of the same dtype and trailing shape", () => {
    const { g, ids } = graph();
    expect(whyNotConcat(g, [ids.q, ids.k, ids.kv])).toBeNull();
    expect(whyNotConcat(g, [ids.k])).toBeNull();
  });

  it("names what stands in the way", () => {
    const { g, ids } = graph();
    expect(whyNotConcat(g, [ids.q, ids.x])).toBe("an operand is not a weight");
    expect(whyNotConcat(g, [ids.q, null])).toBe("an operand is not a weight");
    expect(whyNotConcat(g, [ids.q, 999])).toBe("an operand is not a weight");
    expect(whyNotConcat(g, [ids.q, ids.rnd])).toBe("m.r.weight is not a checkpoint weight");
    expect(whyNotConcat(g, [ids.i8, ids.q])).toBe(
      "m.q8.weight is i8 (quantised weights are not concatenated)",
    );
    expect(whyNotConcat(g, [ids.q, ids.bad])).toBe("m.bad.weight has transforms after its own concatenation");
    expect(whyNotConcat(g, [ids.q, ids.sym])).toBe("m.s.weight has a symbolic shape");
    expect(whyNotConcat(g, [ids.q, ids.bf])).toBe("weights differ in dtype");
    expect(whyNotConcat(g, [ids.q, ids.wide])).toBe("weights differ in shape beyond axis 0");
    expect(whyNotConcat(g, [ids.q, ids.rank3])).toBe("weights differ in shape beyond axis 0");
    expect(whyNotConcat(g, [ids.d12, ids.d1])).toBe("weights differ in shape beyond axis 0");
    // A one-part recipe with transforms (a tensor-parallel slice) is fine.
    expect(whyNotConcat(g, [ids.q, ids.q])).toBeNull();
  });
});

describe("concatWeights", () => {
  it("lists each source's parts in order, a single part taking its recipe's transforms; rows add up", () => {
    const { g, ids } = graph();
    const before = g.values.size;
    const v = concatWeights(g, [ids.q, ids.k, ids.kv], "m.qkv_proj.weight");
    expect(g.values.size).toBe(before + 1);
    expect(g.values.get(v.id)).toBe(v);
    expect(v).toMatchObject({ name: "m.qkv_proj.weight", dtype: "f16", shape: [16, 4], kind: "weight" });
    expect(v.recipe).toEqual({
      kind: "checkpoint",
      parts: [
        part("m.q_proj.weight", [16, 4], [slice(0, 8)]),
        part("m.k_proj.weight", [4, 4]),
        part("a", [4, 4], [slice(0, 2)]),
        part("b", [4, 4], [slice(2, 4)]),
      ],
      transforms: [],
      init: { mean: 0, scale: 0.5 },
    });
    // The first weight's hints, copied (not shared).
    expect(v.hints).toEqual({ split: "column" });
    expect(v.hints).not.toBe(g.values.get(ids.q)!.hints);
    // The sources are untouched.
    expect(g.values.get(ids.q)!.recipe).toMatchObject({ transforms: [slice(0, 8)] });
  });

  it("refuses what whyNotConcat refuses", () => {
    const { g, ids } = graph();
    expect(() => concatWeights(g, [ids.q, ids.rnd], "f")).toThrow("m.r.weight is not a checkpoint weight");
    expect(() => concatWeights(g, [ids.bad], "f")).toThrow(
      "m.bad.weight has transforms after its own concatenation",
    );
  });
});

describe("fusedName", () => {
  it("the common prefix of the names (up to the module), the fused module, the parameter suffix", () => {
    const n = (s: string) => `model.layers.0.self_attn.${s}.weight`;
    expect(fusedName([n("q_proj"), n("k_proj"), n("v_proj")], "qkv_proj")).toBe(n("qkv_proj"));
    expect(
      fusedName(["model.layers.1.mlp.gate_proj.bias", "model.layers.1.mlp.up_proj.bias"], "gate_up_proj"),
    ).toBe("model.layers.1.mlp.gate_up_proj.bias");
    // Same module name in both (a tied pair): the last module component is still replaced.
    expect(fusedName(["a.b.weight", "a.b.weight"], "f")).toBe("a.f.weight");
    // Names differing early keep only what they share.
    expect(fusedName(["x.q.weight", "y.k.weight"], "f")).toBe("f.weight");
  });
});
