// shardForTp's plan on graphs the fixtures do not cover: weights hinted "none", without hints or
// computed (replicated), attention without rotary embedding, row-parallel biases at tp 4, what the
// pass adds to the graph (collective names and attrs, per-rank attrs), and its refusals — one
// ShardError line naming the dimension or the layer, never a TypeError or a silently wrong graph.
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { gateUpFusion } from "../../passes/gate-up-fusion.ts";
import { PassLog, passContext } from "../../passes/index.ts";
import { ShardError, shardForTp } from "../../passes/tensor-parallel.ts";
import { openCheckpoint } from "../../src/checkpoint/checkpoint.ts";
import { writeSafetensors } from "../../src/checkpoint/safetensors.ts";
import { Module } from "../../src/dsl/module.ts";
import { apply, type Tensor } from "../../src/dsl/tensor.ts";
import type { BuildConfig } from "../../src/engine/format.ts";
import { ReferenceExecutor } from "../../src/executor/reference.ts";
import type { Graph, Value } from "../../src/ir/types.ts";
import { verifyGraph } from "../../src/ir/verify.ts";
import {
  GPTJ_MODEL,
  LLAMA_MODEL,
  MIXTRAL_MODEL,
  TINY_GPTJ,
  TINY_LLAMA,
  TINY_MIXTRAL,
  tmpDir,
  uniform,
} from "../fixtures.ts";
import { graphOf, testBuild, VARIANTS_MODEL } from "../passes/helpers.ts";

/** What a weight of the toy model below is hinted: a parallel hint, no hints at all, or computed (an activation). */
type Hint = "column" | "row" | "vocab" | "none" | "nohints" | "computed" | string;

interface Toy {
  vocab?: number;
  heads?: number;
  kvHeads?: number;
  inter?: number;
  rope?: boolean;
  embed?: Hint;
  lmHead?: Hint;
  gate?: Hint;
  up?: Hint;
  down?: Hint;
  oBias?: boolean;
}

const H = 32;
const D = 8;

/** A one-layer decoder built in the test (not a model file), each weight hinted as `o` says. */
function toy(o: Toy = {}): Graph {
  const V = o.vocab ?? 64;
  const nH = o.heads ?? 4;
  const nKv = o.kvHeads ?? 2;
  const I = o.inter ?? 48;
  const m = new Module("f32", { maxBatchSize: 2, maxSeqLen: 16, maxNumTokens: 16 });
  const init = { mean: 0, scale: 0.1 };
  const weight = (name: string, shape: number[], hint: Hint, role: string): Tensor => {
    if (hint === "computed")
      return m
        .param(`${name}.a`, shape, init, { parallel: "column", role })
        .add(m.param(`${name}.b`, shape, init));
    return m.param(name, shape, init, hint === "nohints" ? undefined : { parallel: hint, role });
  };
  const linear = (name: string, inF: number, outF: number, hint: Hint, bias = false) => {
    const w = weight(`${name}.weight`, [outF, inF], hint, "linear");
    const b = bias ? m.param(`${name}.bias`, [outF], init, { parallel: hint, role: "bias" }) : null;
    return (x: Tensor) => apply("linear", [x, w, b], { activation: "none" }, name);
  };
  const table = weight("embed.weight", [V, H], o.embed ?? "vocab", "embedding");
  let h = apply("embedding", [m.inputIds, table], {}, "embed");
  const norm = m.RMSNorm("ln1", H, 1e-5);
  const x = norm(h);
  const rope = { rotaryDim: D, theta: 10000, style: "neox" as const };
  const rot = (t: Tensor, heads: number) => (o.rope === false ? t : m.rope(t, heads, D, rope));
  const q = rot(linear("q", H, nH * D, "column")(x), nH);
  const k = rot(linear("k", H, nKv * D, "column")(x), nKv);
  const v = linear("v", H, nKv * D, "column")(x);
  h = h.add(
    linear(
      "o",
      nH * D,
      H,
      "row",
      o.oBias,
    )(m.attention(q, k, v, { numHeads: nH, numKvHeads: nKv, headDim: D })),
  );
  const y = m.RMSNorm("ln2", H, 1e-5)(h);
  const gated = linear("gate", H, I, o.gate ?? "column")(y).mul(linear("up", H, I, o.up ?? "column")(y));
  h = h.add(linear("down", I, H, o.down ?? "row", true)(gated));
  m.output(
    "logits",
    linear("lm_head", H, V, o.lmHead ?? "vocab")(m.logitRows(m.RMSNorm("ln_f", H, 1e-5)(h))),
  );
  return m.graph;
}

const build = (tp: number, ep = 1): BuildConfig =>
  testBuild({ tp, moe_ep_size: ep, max_batch_size: 2, max_seq_len: 16, max_num_tokens: 16 });

/** Logits of the toy graph (tp 1) and of its `tp` ranks over a checkpoint of random F32 tensors. */
function toyLogits(g: Graph, tp: number): { want: Float32Array[]; got: Float32Array[] } {
  const dir = tmpDir("tsllm-tp-plan-");
  try {
    const tensors: Parameters<typeof writeSafetensors>[1] = {};
    let seed = 1;
    for (const v of g.values.values()) {
      if (v.recipe?.kind !== "checkpoint") continue;
      for (const p of v.recipe.parts) {
        const n = p.shape.reduce((a, d) => a * d, 1);
        const data = uniform(n, seed++ * 7919, 0.3);
        if (p.name.startsWith("ln")) for (let i = 0; i < n; i++) data[i] += 1;
        tensors[p.name] = { dtype: "F32", shape: p.shape, data: new Uint8Array(data.buffer) };
      }
    }
    writeSafetensors(path.join(dir, "model.safetensors"), tensors);
    const ckpt = openCheckpoint(dir);
    const run = (graphs: Graph[], b: BuildConfig) => {
      const ex = ReferenceExecutor.fromGraphs(graphs, b, ckpt);
      const out = [...ex.step([{ seqId: 1, tokens: [1, 60, 7, 33, 12], logits: "all" }]).get(1)!];
      out.push(...ex.step([{ seqId: 1, tokens: [41], logits: "last" }]).get(1)!);
      return out;
    };
    return { want: run([g], build(1)), got: run(shardForTp(g, build(tp)), build(tp)) };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

function expectSameLogits(r: { want: Float32Array[]; got: Float32Array[] }): void {
  expect(r.got.map((x) => x.length)).toEqual(r.want.map((x) => x.length));
  let d = 0;
  let big = 0;
  r.want.forEach((row, i) => {
    row.forEach((x, k) => {
      d = Math.max(d, Math.abs(x - r.got[i][k]));
      big = Math.max(big, Math.abs(x));
    });
  });
  expect(big).toBeGreaterThan(0.1);
  expect(d).toBeLessThan(1e-5);
}

const byName = (g: Graph, name: string): Value => [...g.values.values()].find((v) => v.name === name)!;
/** The slice transforms of a weight's (single-part) recipe. */
const slices = (v: Value) =>
  v.recipe?.kind === "checkpoint" ? v.recipe.parts.flatMap((p) => p.transforms) : [];
const nodeOf = (g: Graph, op: string) => g.nodes.filter((n) => n.op === op);

function shardError(f: () => unknown): ShardError {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(ShardError);
    expect((e as Error).name).toBe("ShardError");
    return e as ShardError;
  }
  throw new Error("no error");
}

describe("shardForTp replicates what is not hinted parallel", () => {
  it.each([["none"], ["nohints"], ["computed"]])(
    "an embedding table and an lm_head weight %s stay whole on every rank: no all_reduce, no all_gather, no vocab_start",
    (hint) => {
      const g = toy({ embed: hint, lmHead: hint });
      const ranks = shardForTp(g, build(2));
      for (const r of ranks) {
        verifyGraph(r);
        expect(nodeOf(r, "all_gather")).toEqual([]);
        // only after o and down
        expect(nodeOf(r, "all_reduce").map((n) => r.values.get(n.inputs[0]!)!.name)).toEqual([
          g.values.get(nodeOf(g, "linear")[3].outputs[0])!.name,
          g.values.get(nodeOf(g, "linear")[6].outputs[0])!.name,
        ]);
        expect(nodeOf(r, "embedding")[0].attrs).toEqual({});
        for (const v of r.values.values())
          if (/^(embed|lm_head)\./.test(v.name)) expect(slices(v)).toEqual([]);
        expect(r.values.get(r.outputs.logits)!.shape).toEqual(g.values.get(g.outputs.logits)!.shape);
      }
      expectSameLogits(toyLogits(g, 2));
    },
  );

  it("a vocab-parallel embedding with a replicated lm_head, and the other way round, compute the tp 1 logits", () => {
    for (const o of [{ lmHead: "none" }, { embed: "none" }]) {
      const g = toy(o);
      const r = shardForTp(g, build(4));
      expect(nodeOf(r[0], "all_gather").length).toBe(o.lmHead ? 0 : 1);
      expect(r.map((x) => nodeOf(x, "embedding")[0].attrs.vocab_start)).toEqual(
        o.embed ? [undefined, undefined, undefined, undefined] : [0, 16, 32, 48],
      );
      expectSameLogits(toyLogits(g, 4));
    }
  });
});

describe("what shardForTp adds to the graph", () => {
  it("attention without rotary embedding: head counts on the attention only, linears keep their attrs", () => {
    const g = toy({ rope: false });
    expect(nodeOf(g, "rope")).toEqual([]);
    const ranks = shardForTp(g, build(4));
    for (const r of ranks) {
      const linears = nodeOf(r, "linear");
      expect(linears.map((n) => n.attrs)).toEqual(nodeOf(g, "linear").map((n) => n.attrs));
      expect(nodeOf(r, "attention")[0].attrs).toEqual({
        ...nodeOf(g, "attention")[0].attrs,
        num_heads: 1,
        num_kv_heads: 1,
      });
    }
    expectSameLogits(toyLogits(g, 4));
  });

  it("collectives: `<input>.all_reduce` with no attrs, `<logits>.all_gather` with {tp}; every other node's attrs as in the model graph but head counts and vocab_start", async () => {
    const g = await graphOf(LLAMA_MODEL, TINY_LLAMA);
    const ranks = shardForTp(g, build(2));
    for (const [rank, r] of ranks.entries()) {
      const added = r.nodes.filter((n) => n.op === "all_reduce" || n.op === "all_gather");
      for (const n of added) {
        const src = r.values.get(n.inputs[0]!)!;
        expect(r.values.get(n.outputs[0])!.name).toBe(`${src.name}.${n.op}`);
        expect(r.values.get(n.outputs[0])!.kind).toBe("activation");
        expect(n.attrs).toEqual(n.op === "all_gather" ? { tp: 2 } : {});
      }
      const rest = r.nodes.filter((n) => !added.includes(n));
      expect(rest.length).toBe(g.nodes.length);
      rest.forEach((n, i) => {
        const want = { ...g.nodes[i].attrs };
        if (n.op === "attention") Object.assign(want, { num_heads: 2, num_kv_heads: 1 });
        if (n.op === "rope") want.num_heads = (g.nodes[i].attrs.num_heads as number) / 2;
        if (n.op === "embedding") want.vocab_start = rank * 256;
        expect({ op: n.op, attrs: n.attrs }).toEqual({ op: g.nodes[i].op, attrs: want });
      });
    }
  });

  it("moe at --moe-ep-size 1 keeps its attrs (no local_experts / expert_start); at 2 each rank gets its group's", async () => {
    const g = await graphOf(MIXTRAL_MODEL, TINY_MIXTRAL);
    const moe = nodeOf(g, "moe")[0].attrs;
    expect(shardForTp(g, build(2, 1)).map((r) => nodeOf(r, "moe")[0].attrs)).toEqual([moe, moe]);
    expect(shardForTp(g, build(4, 2)).map((r) => nodeOf(r, "moe")[0].attrs)).toEqual(
      [0, 2, 0, 2].map((s) => ({ ...moe, local_experts: 2, expert_start: s })),
    );
  });

  it("a row-parallel bias is added by rank 0 only (GPT-J fc_out at tp 4; tp 1 logits kept)", async () => {
    const g = await graphOf(GPTJ_MODEL, TINY_GPTJ);
    const ranks = shardForTp(g, build(4));
    const fcOut = (r: Graph) =>
      r.nodes.find(
        (n) => n.op === "linear" && r.values.get(n.inputs[1]!)!.name.endsWith("0.mlp.fc_out.weight"),
      )!;
    expect(
      ranks.map((r) => (fcOut(r).inputs[2] == null ? null : r.values.get(fcOut(r).inputs[2]!)!.name)),
    ).toEqual(["transformer.h.0.mlp.fc_out.bias", null, null, null]);
    // the toy's o_proj and down_proj biases, at tp 4
    expectSameLogits(toyLogits(toy({ oBias: true }), 4));
  });
});

describe("shardForTp refuses, in one ShardError line", () => {
  it("a linear hinted with a parallelism it does not know", () => {
    expect(shardError(() => shardForTp(toy({ gate: "diagonal" }), build(2))).message).toBe(
      'gate.weight: unknown parallel hint "diagonal"',
    );
  });

  it("a row-parallel linear whose in features do not divide (its input replicated)", () => {
    expect(shardError(() => shardForTp(toy({ gate: "none", up: "none", inter: 50 }), build(4))).message).toBe(
      "--tp 4: in features 50 of down.weight is not divisible by 4",
    );
  });

  it("a vocab that does not divide, named by the embedding or by the lm_head alone", () => {
    expect(shardError(() => shardForTp(toy({ vocab: 63, lmHead: "none" }), build(2))).message).toBe(
      "--tp 2: vocab_size 63 is not divisible by 2",
    );
    expect(shardError(() => shardForTp(toy({ vocab: 63, embed: "none" }), build(2))).message).toBe(
      "--tp 2: vocab_size 63 is not divisible by 2",
    );
  });

  it("queries, keys or values that no linear projects (through rope at most)", () => {
    const g = toy();
    const attn = nodeOf(g, "attention")[0];
    const normOut = nodeOf(g, "rms_norm")[0].outputs[0];
    const ropeK = nodeOf(g, "rope")[1];
    const cases: [string, () => void][] = [
      ["queries", () => (attn.inputs[0] = g.inputs.positions)], // a graph input: no node makes it
      ["queries", () => (attn.inputs[0] = normOut)],
      ["keys", () => (ropeK.inputs[0] = normOut)], // rope of a norm
      ["values", () => (attn.inputs[2] = normOut)],
    ];
    for (const [what, edit] of cases) {
      const saved = { attn: [...attn.inputs], rope: [...ropeK.inputs] };
      edit();
      expect(shardError(() => shardForTp(g, build(2))).message).toBe(
        `tensor-parallel: cannot find the linear projection feeding the ${what} of attention layer 0`,
      );
      attn.inputs = saved.attn;
      ropeK.inputs = saved.rope;
    }
    expect(shardForTp(g, build(2)).length).toBe(2);
  });

  it("an attention projection whose weight is computed (not a weight)", () => {
    const g = toy();
    const q = nodeOf(g, "linear")[0];
    q.inputs[1] = nodeOf(g, "rms_norm")[0].outputs[0];
    expect(shardError(() => shardForTp(g, build(2))).message).toBe(
      "tensor-parallel: linear without a weight",
    );
  });

  it("a graph whose weights are already fused (gate/up) or transformed whole: sharding runs before fusion", async () => {
    const b = testBuild();
    const fused = gateUpFusion.run(await graphOf(LLAMA_MODEL, TINY_LLAMA, b), passContext(b, new PassLog()));
    expect(shardError(() => shardForTp(fused, build(2))).message).toBe(
      "tensor-parallel: model.layers.0.mlp.gate_up_proj.weight is already fused; sharding runs before fusion",
    );
    // one part, but a transform of the whole tensor (as quantisation adds)
    const g = toy();
    const w = byName(g, "gate.weight");
    if (w.recipe?.kind !== "checkpoint") throw new Error("gate.weight: no checkpoint recipe");
    w.recipe.transforms = [{ op: "slice", axis: 0, start: 0, end: 48 }];
    expect(shardError(() => shardForTp(g, build(2))).message).toBe(
      "tensor-parallel: gate.weight is already fused; sharding runs before fusion",
    );
  });

  it("--tp 2 --moe-ep-size 1 with an expert intermediate size that does not divide names no ep size", async () => {
    const g = await graphOf(MIXTRAL_MODEL, TINY_MIXTRAL, testBuild(), { intermediate_size: 191 });
    expect(shardError(() => shardForTp(g, build(2, 1))).message).toBe(
      "--tp 2: expert intermediate_size 191 of model.layers.0.block_sparse_moe.experts.w1.weight is not divisible by 2",
    );
  });

  it("a model file without sharding hints: the projection that no longer fits, its weight and the hint it needs", async () => {
    // test/passes/models/variants.ts declares its linears without parallel hints: the attention's heads are
    // split all the same, so o_proj (replicated) reads 64 of its 128 input features on a rank.
    const g = await graphOf(VARIANTS_MODEL, TINY_LLAMA, testBuild(), { variant: "geglu" });
    expect(shardError(() => shardForTp(g, build(2))).message).toBe(
      "--tp 2: model.layers.0.self_attn.o_proj.weight (linear) does not fit its input on a rank: " +
        "linear: input features is 64, expected 128. A linear reading a split activation needs " +
        'parallel: "row" on its weight (one writing split heads or an MLP\'s hidden width, "column")',
    );
  });
});
