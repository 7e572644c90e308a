// The arena plan is checked two ways: its invariants (buffers live at the same time never share
// bytes, 256-byte alignment, graph outputs never overwritten), and by running the graph with every
// activation stored at its planned offset in one shared buffer — a wrong plan corrupts the logits.
import { describe, expect, it } from "vitest";
import { lifetimes, planArena } from "../../passes/memory-plan.ts";
import { toFloat32 } from "../../src/checkpoint/dtype.ts";
import { type ArenaPlan, naiveArena } from "../../src/engine/arena.ts";
import type { Graph, Node, Value } from "../../src/ir/types.ts";
import { getOp, HostTensor, type KvStore, type RefContext } from "../../src/ops/index.ts";
import { materializeWeight } from "../../src/weights/materialize.ts";
import { around, itKeepsLogits } from "./equivalence.ts";
import { FIXTURES, type Fixture, fixture, goldenLogits, maxAbsDiff } from "./helpers.ts";

/** Runs the golden prompts through g with all activations living in one arena laid out by `plan`. */
function runInArena(f: Fixture, g: Graph, plan: ArenaPlan): Float32Array[] {
  const arena = new Float32Array(plan.bytes / 4);
  const weights = new Map<number, HostTensor>();
  for (const v of g.values.values())
    if (v.kind === "weight")
      weights.set(v.id, new HostTensor(v.shape.map(Number), toFloat32("F32", materializeWeight(v, f.ckpt))));
  const kvs = new Map<string, { k: Float32Array[]; v: Float32Array[] }>();
  const kv: KvStore = {
    get(seq, layer) {
      const key = `${seq}/${layer}`;
      if (!kvs.has(key)) kvs.set(key, { k: [], v: [] });
      return kvs.get(key)!;
    },
  };
  const step = (seqId: number, tokens: number[], start: number, all: boolean): Float32Array[] => {
    const positions = Int32Array.from(tokens, (_, i) => start + i);
    const env = new Map<number, HostTensor>(weights);
    env.set(g.inputs.input_ids, new HostTensor([tokens.length], Int32Array.from(tokens)));
    env.set(g.inputs.positions, new HostTensor([tokens.length], positions));
    const rows = all ? tokens.map((_, i) => i) : [tokens.length - 1];
    env.set(g.inputs.logits_indices, new HostTensor([rows.length], Int32Array.from(rows)));
    const shapes = new Map<number, number[]>();
    const read = (id: number): HostTensor => {
      const off = plan.offsets[id];
      if (off === undefined) return env.get(id)!;
      const shape = shapes.get(id)!;
      const n = shape.reduce((a, b) => a * b, 1);
      return new HostTensor(shape, arena.slice(off / 4, off / 4 + n));
    };
    g.nodes.forEach((node, i) => {
      const ctx: RefContext = {
        step: { seqs: [{ seqId, start: 0, count: tokens.length }], positions },
        kv,
        nodeIndex: i,
        allReduce: (x) => x,
        allGather: (x) => x,
      } as RefContext;
      const outs = getOp(node.op).ref(
        node.inputs.map((id) => (id === null ? null : read(id))),
        node.attrs as Record<string, never>,
        ctx,
      );
      node.outputs.forEach((o, k) => {
        shapes.set(o, outs[k].shape);
        arena.set(outs[k].f32, plan.offsets[o] / 4);
      });
    });
    const logits = read(g.outputs.logits);
    const V = logits.cols;
    return rows.map((_, r) => logits.f32.slice(r * V, (r + 1) * V));
  };
  const out: Float32Array[] = [];
  f.golden.prompts.forEach((p, i) => {
    out.push(...step(i, p.inputIds.slice(0, p.promptLen), 0, true));
    for (let pos = p.promptLen; pos < Math.min(p.inputIds.length, p.promptLen + 4); pos++)
      out.push(...step(i, [p.inputIds[pos]], pos, false));
  });
  return out;
}

describe("memory-plan", () => {
  // The plan changes no node; it is checked by running the graph inside the arena below.
  const meta = { meta: "adds the arena plan", key: "arena" };
  itKeepsLogits("memory-plan", { llama: meta, gptj: meta });

  for (const which of FIXTURES) {
    it(`tiny-${which}: no two buffers live at once share bytes; outputs are never overwritten`, async () => {
      const { after, log } = await around("memory-plan", which);
      const plan = after.meta.arena as ArenaPlan;
      expect(log.matches).toHaveLength(1);
      const bufs = lifetimes(after).map((b) => ({ ...b, offset: plan.offsets[b.id] }));
      expect(bufs.length).toBe(Object.keys(plan.offsets).length);
      for (const b of bufs) {
        expect(b.offset % 256).toBe(0);
        expect(b.offset + b.bytes).toBeLessThanOrEqual(plan.bytes);
      }
      const logits = bufs.find((b) => b.id === after.outputs.logits)!;
      expect(logits.end).toBe(after.nodes.length);
      for (let i = 0; i < bufs.length; i++)
        for (let j = i + 1; j < bufs.length; j++) {
          const [a, b] = [bufs[i], bufs[j]];
          const liveTogether = a.start <= b.end && b.start <= a.end;
          const overlap = a.offset < b.offset + b.bytes && b.offset < a.offset + a.bytes;
          if (liveTogether && overlap) throw new Error(`%${a.id} and %${b.id} are live together and overlap`);
        }
      expect(plan.bytes).toBeLessThan(naiveArena(after).bytes / 2);
    });

    it(`tiny-${which}: running with every activation at its planned offset gives the same logits`, async () => {
      const f = await fixture(which);
      const { after } = await around("memory-plan", which);
      const d = maxAbsDiff(goldenLogits(f, after), runInArena(f, after, after.meta.arena as ArenaPlan));
      expect(d).toBeLessThanOrEqual(1e-5);
      // …and a plan that packs everything at offset 0 does not (the check can fail).
      const bad: ArenaPlan = {
        bytes: (after.meta.arena as ArenaPlan).bytes * 4,
        offsets: Object.fromEntries(Object.keys((after.meta.arena as ArenaPlan).offsets).map((k) => [k, 0])),
      };
      let broken = false;
      try {
        broken = maxAbsDiff(goldenLogits(f, after), runInArena(f, after, bad)) > 1e-3;
      } catch {
        broken = true;
      }
      expect(broken).toBe(true);
    });
  }

  it("the plan is written into the engine header", async () => {
    const { after } = await around("memory-plan", "llama");
    const { buildHeader } = await import("../../src/engine/header.ts");
    const f = await fixture("llama");
    const h = buildHeader({ rank: 0, graph: after }, f.build);
    expect(h.arena).toEqual(after.meta.arena);
  });
});

describe("planArena on a graph laid out by hand", () => {
  // Values (f32): 1 L1, 2 H2, 3 L2, 4 L3 of 256 B, 5 H1 of 512 B, all written by node 0; H1 and H2 are
  // last read by node 1; N (6, 256 B) is written by node 2; node 3 reads L1, L2, L3, N and writes the
  // graph output 7 (40 B, aligned to 256). Lifetimes [start, end]: L* [0, 3], H* [0, 1], N [2, 3], 7 [3, 4].
  // Largest first, ties by start then id: H1 → 0; L1 → 512 (after H1); H2 → 768; L2 → 1024; L3 → 1280.
  // N lives with L1, L2, L3 only, so it sees two gaps: [0, 512) and [768, 1024): best fit takes the
  // exact 256-byte one at 768 (first fit would take 0). 7 lives with L1, N, L2, L3: the gap at 0.
  const f32 = (id: number, n: number): Value => ({
    id,
    name: `v${id}`,
    dtype: "f32",
    shape: [n],
    kind: "activation",
  });
  const node = (inputs: (number | null)[], outputs: number[]): Node => ({
    op: "x",
    inputs,
    outputs,
    attrs: {},
  });
  const g = (): Graph => ({
    values: new Map(
      [f32(1, 64), f32(2, 64), f32(3, 64), f32(4, 64), f32(5, 128), f32(6, 64), f32(7, 10)].map((v) => [
        v.id,
        v,
      ]),
    ),
    nodes: [node([], [1, 2, 3, 4, 5]), node([2, null, 5], []), node([], [6]), node([1, 3, 4, 6], [7])],
    inputs: {},
    outputs: { logits: 7 },
    meta: { numLayers: 0, numKvHeads: 0, headDim: 0 },
    nextId: 8,
  });

  it("lifetimes: from the writer to the last reader; graph outputs to the end; sizes aligned to 256", () => {
    const byId = Object.fromEntries(lifetimes(g()).map((b) => [b.id, [b.start, b.end, b.bytes, b.offset]]));
    expect(byId).toEqual({
      1: [0, 3, 256, -1],
      2: [0, 1, 256, -1],
      3: [0, 3, 256, -1],
      4: [0, 3, 256, -1],
      5: [0, 1, 512, -1],
      6: [2, 3, 256, -1],
      7: [3, 4, 256, -1],
    });
  });

  it("largest first, each into the smallest gap it fits among the buffers live with it", () => {
    expect(planArena(g())).toEqual({
      bytes: 1536,
      offsets: { 1: 512, 2: 768, 3: 1024, 4: 1280, 5: 0, 6: 768, 7: 0 },
    });
  });

  it("buffers written after one ends are not live with it; of equal gaps the first is taken", () => {
    // 256-byte buffers A, C, E live [0, 6], B, D [0, 1], X [5, 6]; Z (1 KiB, the graph output) [7, 8].
    // Z goes first, to 0; A too (Z is written after A's last read); B, C, D, E follow at 256..1024.
    // X lives with A, C, E only: two 256-byte gaps (B's and D's slots), the first one taken: 256.
    const [A, B, C, D, E, X, Z] = [1, 2, 3, 4, 5, 6, 7];
    const h: Graph = {
      values: new Map(
        [f32(A, 64), f32(B, 64), f32(C, 64), f32(D, 64), f32(E, 64), f32(X, 64), f32(Z, 256)].map((v) => [
          v.id,
          v,
        ]),
      ),
      nodes: [
        node([], [A, B, C, D, E]),
        node([B, D], []),
        node([], []),
        node([], []),
        node([], []),
        node([], [X]),
        node([A, C, E, X], []),
        node([], [Z]),
      ],
      inputs: {},
      outputs: { logits: Z },
      meta: { numLayers: 0, numKvHeads: 0, headDim: 0 },
      nextId: 8,
    };
    expect(planArena(h)).toEqual({
      bytes: 1280,
      offsets: { 1: 0, 2: 256, 3: 512, 4: 768, 5: 1024, 6: 256, 7: 0 },
    });
  });

  it("the pass (on tiny-llama) writes the plan into meta, logs one match, and leaves its input alone", async () => {
    const { before, after, log } = await around("memory-plan", "llama");
    expect(after.meta.arena).toEqual(planArena(after));
    expect(before.meta.arena).toBeUndefined();
    const n = lifetimes(after).length;
    expect(n).toBeGreaterThan(10);
    expect(log.matches).toEqual([{ pattern: "arena", where: `${n} activation buffers` }]);
  });
});
