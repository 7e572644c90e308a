import { describe, expect, it } from "vitest";
import { addNode, cloneGraph } from "../../src/ir/builder.ts";
import type { Graph } from "../../src/ir/types.ts";
import { around, itKeepsLogits } from "./equivalence.ts";
import { fixture, goldenLogits, maxAbsDiff, opCounts, runPasses } from "./helpers.ts";

/** The fixture graph with a copy of its first rms_norm (read by the q projection) and of attention 0. */
async function withDuplicates(): Promise<Graph> {
  const f = await fixture("llama");
  const g = cloneGraph(f.graph);
  const norm = g.nodes.findIndex((n) => n.op === "rms_norm");
  const n0 = g.nodes[norm];
  const dup = addNode(g, "rms_norm", [...n0.inputs], { ...n0.attrs }, { scope: n0.scope })[0];
  g.nodes.splice(norm + 1, 0, g.nodes.pop()!);
  const q = g.nodes.find((n) => n.op === "linear" && n.inputs[0] === n0.outputs[0])!;
  q.inputs[0] = dup;
  // A second, identical attention (writes the same KV rows) whose output nobody reads.
  const ai = g.nodes.findIndex((n) => n.op === "attention");
  const a = g.nodes[ai];
  addNode(g, "attention", [...a.inputs], { ...a.attrs }, { scope: a.scope });
  g.nodes.splice(ai + 1, 0, g.nodes.pop()!);
  // A dead pure node.
  addNode(g, "mul", [n0.outputs[0], n0.outputs[0]], {}, { scope: "dead" });
  g.nodes.splice(norm + 2, 0, g.nodes.pop()!);
  return g;
}

describe("cse", () => {
  // A duplicate built into the graph is merged in the next test.
  const none = { none: "the fused fixture graphs have no duplicate pure node" };
  itKeepsLogits("cse", { llama: none, gptj: none });

  it("merges a duplicated pure node; never merges attention (it writes the KV cache)", async () => {
    const f = await fixture("llama");
    const g = await withDuplicates();
    const { graph, logs } = runPasses(g, ["cse"]);
    expect(logs.cse.matches.map((m) => m.pattern)).toEqual(["duplicate-node"]);
    expect(opCounts(graph).rms_norm).toBe(opCounts(g).rms_norm - 1);
    expect(opCounts(graph).attention).toBe(opCounts(g).attention);
    expect(maxAbsDiff(goldenLogits(f, g), goldenLogits(f, graph))).toBeLessThanOrEqual(1e-5);
  });

  it("the fixtures have no duplicates after fusion", async () => {
    for (const which of ["llama", "gptj"] as const) {
      const { before, after, log } = await around("cse", which);
      expect(log.matches).toHaveLength(0);
      expect(after.nodes.map((n) => n.op)).toEqual(before.nodes.map((n) => n.op));
    }
  });
});

describe("dce", () => {
  // No dead node after fusion (a dead node built into the graph is removed in the next test).
  const values = { values: "drops the weights and activations the fusions replaced" };
  itKeepsLogits("dce", { llama: values, gptj: values });

  it("removes dead pure nodes, keeps side-effecting ones whose output is unused", async () => {
    const f = await fixture("llama");
    const g = await withDuplicates();
    const { graph, logs } = runPasses(g, ["dce"]);
    expect(logs.dce.matches.map((m) => m.where)).toEqual(["dead"]);
    expect(opCounts(graph).mul).toBe(opCounts(g).mul - 1);
    expect(opCounts(graph).attention).toBe(opCounts(g).attention); // the unread duplicate stays
    expect(maxAbsDiff(goldenLogits(f, g), goldenLogits(f, graph))).toBeLessThanOrEqual(1e-5);
  });

  it("after fusion: no dead nodes, the replaced weights and activations leave the value table", async () => {
    const { before, after, log } = await around("dce", "llama");
    expect(log.matches).toHaveLength(0);
    expect(after.nodes.length).toBe(before.nodes.length);
    expect(after.values.size).toBeLessThan(before.values.size);
    const names = [...after.values.values()].map((v) => v.name);
    expect(names).not.toContain("model.layers.0.self_attn.q_proj.weight");
    expect(names).toContain("model.layers.0.self_attn.qkv_proj.weight");
  });
});
