// printGraph (src/ir/printer.ts): the text form of a hand-made graph, line by line.
import { describe, expect, it } from "vitest";
import { printGraph } from "../../src/ir/printer.ts";
import type { Graph, Value } from "../../src/ir/types.ts";

function graph(values: Value[], g: Pick<Graph, "nodes" | "inputs" | "outputs">): Graph {
  return {
    ...g,
    values: new Map(values.map((v) => [v.id, v])),
    meta: { numLayers: 1, numKvHeads: 1, headDim: 4 },
    nextId: 100,
  };
}

describe("printGraph", () => {
  it("inputs, one line per node (weights by name, absent inputs as _, attributes), outputs", () => {
    const T = { sym: "num_tokens", max: 8 };
    const g = graph(
      [
        { id: 1, name: "input_ids", dtype: "i32", shape: [T], kind: "input" },
        { id: 2, name: "positions", dtype: "i32", shape: [T], kind: "input" },
        { id: 3, name: "embed.weight", dtype: "f16", shape: [16, 4], kind: "weight" },
        { id: 4, name: "h", dtype: "f16", shape: [T, 4], kind: "activation" },
        { id: 5, name: "a", dtype: "f32", shape: [T, 2], kind: "activation" },
        { id: 6, name: "b", dtype: "f32", shape: [T, 2], kind: "activation" },
        { id: 12, name: "logits", dtype: "f32", shape: [T, 16], kind: "activation" },
      ],
      {
        inputs: { input_ids: 1, positions: 2 },
        nodes: [
          { op: "embedding", inputs: [1, 3], outputs: [4], attrs: {} },
          {
            op: "split",
            inputs: [4, null, 2],
            outputs: [5, 6],
            attrs: { axis: -1, sizes: [2, 2], mode: "even", exact: true, none: null, o: { k: "v" } },
          },
          { op: "linear", inputs: [5, 3], outputs: [12], attrs: { activation: "none" } },
        ],
        outputs: { logits: 12, hidden: 4 },
      },
    );
    expect(printGraph(g)).toBe(
      [
        "input %1:i32[num_tokens] input_ids",
        "input %2:i32[num_tokens] positions",
        "%4:f16[num_tokens,4] = embedding(%1, @embed.weight)",
        '%5:f32[num_tokens,2], %6:f32[num_tokens,2] = split(%4, _, %2) {axis=-1, sizes=[2,2], mode=even, exact=true, none=null, o={"k":"v"}}',
        "%12:f32[num_tokens,16] = linear(%5, @embed.weight) {activation=none}",
        "output logits = %12",
        "output hidden = %4",
      ].join("\n"),
    );
  });

  it("an empty graph is the empty string; a node without inputs prints ()", () => {
    expect(printGraph(graph([], { inputs: {}, nodes: [], outputs: {} }))).toBe("");
    const g = graph([{ id: 0, name: "c", dtype: "bf16", shape: [], kind: "activation" }], {
      inputs: {},
      nodes: [{ op: "const", inputs: [], outputs: [0], attrs: { value: 0 } }],
      outputs: {},
    });
    expect(printGraph(g)).toBe("%0:bf16[] = const() {value=0}");
  });
});
