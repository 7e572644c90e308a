// The arena plan is checked two ways: its invariants (buffers live at the same time never share
// bytes, 256-byte alignment, graph outputs never overwritten), and by running the graph with every
// activation stored at its planned offset in one shared buffer — a wrong plan corrupts the logits.
import { describe, expect, it } from "vitest";
import { lifetimes } from "../../passes/memory-plan.ts";
import { toFloat32 } from "../../src/checkpoint/dtype.ts";
import { type ArenaPlan, naiveArena } from "../../src/engine/arena.ts";
import type { Graph } from "../../src/ir/types.ts";
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
