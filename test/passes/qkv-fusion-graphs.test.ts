// QKV fusion (passes/qkv-fusion.ts) on attention blocks built by hand (hand-graphs.ts): the fused
// GEMM, split, weight and bias, their scopes, each refusal with the note the fusion report prints for
// it, and the cases it passes over without a note (already fused, one projection read three times).
import { describe, expect, it } from "vitest";
import { qkvFusion } from "../../passes/qkv-fusion.ts";
import { addInput, addNode } from "../../src/ir/builder.ts";
import type { Graph } from "../../src/ir/types.ts";
import {
  type AttnBlock,
  type AttnOptions,
  attentionBlock,
  ckptWeight,
  HEAD_DIM,
  HEADS,
  HIDDEN,
  KV_HEADS,
  packedBlock,
  TOKENS,
} from "./hand-graphs.ts";
import { expectLeftAlone, ops, runBuilt, runPass, writer } from "./helpers.ts";

const run = (o: AttnOptions = {}, edit?: (b: AttnBlock) => void) =>
  runBuilt(qkvFusion, attentionBlock, o, edit);
const Q = HEADS * HEAD_DIM;
const KV = KV_HEADS * HEAD_DIM;

/** Left unfused with exactly this note (the pass itself did not fail). */
function refused(o: AttnOptions, note: string, edit?: (b: AttnBlock) => void) {
  expectLeftAlone(run(o, edit), note ? [`qkv: layer 0: ${note}; left unfused`] : []);
}

function fusedLinear(g: Graph) {
  const split = g.nodes.find((n) => n.op === "split")!;
  return { split, lin: writer(g, split.inputs[0])! };
}

describe("qkv-fusion on a hand-built attention block", () => {
  it("one linear over [q; k; v] and a split into the ropes and attention, scoped under the block", () => {
    const { out, log, x, rq, rk, attn } = run();
    expect(log.matches).toEqual([{ pattern: "qkv", where: "m.l0.attn" }]);
    expect(log.notes).toEqual([]);
    expect(ops(out)).toEqual(["linear", "split", "rope", "rope", "attention"]);
    const { split, lin } = fusedLinear(out);
    expect(lin.inputs).toEqual([x, lin.inputs[1], null, null]);
    expect(lin.attrs).toEqual({ activation: "none" });
    expect([lin.scope, split.scope]).toEqual(["m.l0.attn.qkv_proj", "m.l0.attn.qkv_proj"]);
    expect(split.attrs).toEqual({ sizes: [Q, KV, KV] });
    const w = out.values.get(lin.inputs[1]!)!;
    expect([w.name, w.shape]).toEqual(["m.l0.attn.qkv_proj.weight", [Q + 2 * KV, HIDDEN]]);
    expect(w.recipe?.kind === "checkpoint" && w.recipe.parts.map((p) => p.name)).toEqual([
      "m.l0.attn.q_proj.weight",
      "m.l0.attn.k_proj.weight",
      "m.l0.attn.v_proj.weight",
    ]);
    const byOp = (op: string, i = 0) => out.nodes.filter((n) => n.op === op)[i];
    expect(byOp("rope", 0).inputs[0]).toBe(split.outputs[0]);
    expect(byOp("rope", 1).inputs[0]).toBe(split.outputs[1]);
    expect(byOp("attention").inputs).toEqual([rq!.outputs[0], rk!.outputs[0], split.outputs[2]]);
    expect(byOp("attention").attrs).toEqual(attn.attrs);
  });

  it("linears without an activation attribute are plain GEMMs too", () => {
    const { log } = run({}, (b) => {
      for (const l of b.lin) l.attrs = {};
    });
    expect(log.matches).toHaveLength(1);
  });

  it("without scopes the fused nodes are scoped qkv_proj", () => {
    const { out, log } = run({}, (b) => {
      for (const n of b.g.nodes) n.scope = undefined;
    });
    expect(log.matches).toHaveLength(1);
    const { split, lin } = fusedLinear(out);
    expect([lin.scope, split.scope]).toEqual(["qkv_proj", "qkv_proj"]);
  });

  it("biases on all three are concatenated like the weights", () => {
    const { out, log } = run({ bias: [true, true, true] });
    expect(log.matches).toHaveLength(1);
    const b = out.values.get(fusedLinear(out).lin.inputs[2]!)!;
    expect([b.name, b.shape]).toEqual(["m.l0.attn.qkv_proj.bias", [Q + 2 * KV]]);
    expect(b.recipe?.kind === "checkpoint" && b.recipe.parts.map((p) => p.name)).toEqual([
      "m.l0.attn.q_proj.bias",
      "m.l0.attn.k_proj.bias",
      "m.l0.attn.v_proj.bias",
    ]);
  });

  it("refuses biases on some projections only, and biases that cannot be concatenated", () => {
    for (const bias of [
      [true, false, false],
      [false, true, true],
      [true, true, false],
    ] as [boolean, boolean, boolean][])
      refused({ bias }, "only some projections have a bias");
    refused({ bias: [true, true, true] }, "weights differ in dtype", (b) => {
      b.lin[2].inputs[2] = ckptWeight(b.g, "m.l0.attn.v_proj.bias16", [KV], "bf16");
    });
  });

  it("refuses weights that cannot be concatenated", () => {
    refused({}, "m.l0.attn.k_proj.q is i8 (quantised weights are not concatenated)", (b) => {
      b.lin[1].inputs[1] = ckptWeight(b.g, "m.l0.attn.k_proj.q", [KV, HIDDEN], "i8");
    });
  });

  it("refuses projections of different inputs", () => {
    for (const i of [1, 2])
      refused({}, "q/k/v project different inputs", (b) => {
        b.lin[i].inputs[0] = addInput(b.g, "x2", "f32", [TOKENS, HIDDEN]).id;
      });
  });

  it("refuses a projection with an activation, a residual or other readers", () => {
    const epilogue = "a projection has an epilogue or other users";
    refused({}, epilogue, (b) => {
      b.lin[1].attrs = { activation: "relu" };
    });
    refused({}, epilogue, (b) => {
      b.lin[2].inputs[3] = addInput(b.g, "r", "f32", [TOKENS, KV]).id;
    });
    refused({}, epilogue, (b) => {
      b.g.outputs.v = b.lin[2].outputs[0];
    });
  });

  it("notes q/k/v that are not all projections, but not the split an earlier fusion left", () => {
    refused({}, "q/k/v are not all linear projections", (b) => {
      b.attn.inputs[2] = addInput(b.g, "v", "f32", [TOKENS, KV]).id;
    });
    // Fused already: run again, no match and no note.
    const again = runPass(qkvFusion, run().out);
    expect([again.log.matches, again.log.notes, again.log.failed]).toEqual([[], [], undefined]);
    // q and k (through rope) from a split, v from a graph input: still a fused block, not noted.
    const p = packedBlock();
    p.attn.inputs[2] = addInput(p.g, "v", "f32", [TOKENS, KV]).id;
    const partly = runPass(qkvFusion, p.g);
    expect([partly.log.matches, partly.log.notes, partly.log.failed]).toEqual([[], [], undefined]);
  });

  it("one projection read as q, k and v (one head each) is not three projections: left alone, silently", () => {
    const { g, x } = attentionBlock();
    const w = ckptWeight(g, "m.l0.attn.qkv.weight", [HEAD_DIM, HIDDEN]);
    const [y] = addNode(g, "linear", [x, w, null], { activation: "none" }, { scope: "m.l0.attn.qkv" });
    addNode(g, "attention", [y, y, y], {
      layer: 0,
      num_heads: 1,
      num_kv_heads: 1,
      head_dim: HEAD_DIM,
      scale: 1,
    });
    g.nodes.splice(0, g.nodes.length - 2);
    g.outputs = { y: g.nodes[1].outputs[0] };
    const { out, log } = runPass(qkvFusion, g);
    expect([log.matches, log.notes, log.failed]).toEqual([[], [], undefined]);
    expect(ops(out)).toEqual(["linear", "attention"]);
  });
});
