// The CPU reference executor (src/executor/reference.ts), the oracle every GPU result and the batch manager are
// checked against: runtime limits (reached exactly, refused one past with their messages, a refused step changing
// nothing), the logits rows each sequence asks for, chunked and packed steps against one-shot ones and the
// transformers goldens, released sequences starting again at position 0, the fp8 KV cache as docs/engine-format.md
// defines it, activation rounding, malformed engines, and fromGraphs against the engine written from the same graph.
// tiny-llama engines, built once (about 1 s in all); fp32 math is within FP32_GOLDEN_BOUND.llama of the goldens.
import * as fs from "node:fs";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { openCheckpoint } from "../../src/checkpoint/checkpoint.ts";
import { openEngine } from "../../src/engine/reader.ts";
import { writeEngine } from "../../src/engine/writer.ts";
import { ReferenceExecutor } from "../../src/executor/reference.ts";
import { LimitError, type SeqRequest } from "../../src/executor/types.ts";
import { type Golden, readGolden } from "../../src/golden.ts";
import type { KvStore } from "../../src/ops/index.ts";
import { roundToDtype } from "../../src/ops/round.ts";
import { roundE4m3 } from "../../src/quant/fp8.ts";
import {
  buildFixture,
  FP32_GOLDEN_BOUND,
  LLAMA_MODEL,
  TINY_LLAMA,
  tinyLlamaBuild,
  tmpDir,
} from "../fixtures.ts";
import { graphOf } from "../passes/helpers.ts";

const BOUND = FP32_GOLDEN_BOUND.llama;
const LIMITS = { maxSeqLen: 32, maxNumTokens: 64, maxBatchSize: 4 };
let f32: string;
let f16: string;
let kv8: string;
let golden: Golden;
const dirs: string[] = [];

beforeAll(async () => {
  f32 = await buildFixture("llama", LIMITS);
  f16 = await buildFixture("llama", { ...LIMITS, dtype: "fp16" });
  kv8 = await buildFixture("llama", { ...LIMITS, kvCacheDtype: "fp8" });
  dirs.push(f32, f16, kv8);
  golden = readGolden(path.join(TINY_LLAMA, "golden.safetensors"));
});
afterAll(() => {
  for (const d of dirs) fs.rmSync(path.dirname(d), { recursive: true, force: true });
});

/** Prompt i's golden token ids (prompt and greedy continuation, 17 / 23 / 28 tokens). */
const ids = (i: number) => golden.prompts[i].inputIds;
/** Max |Δ| between logits rows and prompt i's golden rows from position `from`. */
function goldenDiff(i: number, rows: Float32Array[], from = 0): number {
  const p = golden.prompts[i];
  let m = 0;
  rows.forEach((row, r) => {
    expect(row.length).toBe(p.vocab);
    const want = p.logits.subarray((from + r) * p.vocab, (from + r + 1) * p.vocab);
    for (let k = 0; k < row.length; k++) m = Math.max(m, Math.abs(row[k] - want[k]));
  });
  return m;
}
const maxDiff = (a: Float32Array[], b: Float32Array[]) => {
  expect(a.length).toBe(b.length);
  let m = 0;
  a.forEach((row, r) => {
    for (let k = 0; k < row.length; k++) m = Math.max(m, Math.abs(row[k] - b[r][k]));
  });
  return m;
};
/** The error `f` throws (undefined if it returns). */
function thrown(f: () => unknown): Error | undefined {
  try {
    f();
  } catch (e) {
    return e as Error;
  }
  return undefined;
}
function expectLimit(f: () => unknown, message: string) {
  const e = thrown(f);
  expect(e).toBeInstanceOf(LimitError);
  expect(e!.message).toBe(message);
}
/** The KV store of a rank (private; only the fp8 cache and release tests look at it). */
const kvOf = (ex: ReferenceExecutor, rank = 0) =>
  (ex as unknown as { ranks: { kv: KvStore }[] }).ranks[rank].kv;
/** The rows one sequence gets alone on a fresh executor, one step per chunk. */
function alone(dir: string, tokens: number[], chunks: number[] = [tokens.length]): Float32Array[] {
  const ex = ReferenceExecutor.load(dir);
  const rows: Float32Array[] = [];
  let at = 0;
  for (const n of chunks) {
    rows.push(...ex.step([{ seqId: 7, tokens: tokens.slice(at, at + n), logits: "all" }]).get(7)!);
    at += n;
  }
  return rows;
}

describe("runtime limits", () => {
  it("options replace the build's limits one by one; unset or 0 keeps the build's", () => {
    expect(ReferenceExecutor.load(f32).limits).toEqual({
      max_batch_size: 4,
      max_num_tokens: 64,
      max_seq_len: 32,
    });
    expect(ReferenceExecutor.load(f32, { limits: { max_num_tokens: 6 } }).limits).toEqual({
      max_batch_size: 4,
      max_num_tokens: 6,
      max_seq_len: 32,
    });
    expect(ReferenceExecutor.load(f32, { limits: { max_batch_size: 0, max_seq_len: 64 } }).limits).toEqual({
      max_batch_size: 4,
      max_num_tokens: 64,
      max_seq_len: 64,
    });
    expect(ReferenceExecutor.load(f32, { limits: { max_batch_size: 9 } }).limits.max_batch_size).toBe(9);
  });

  it("each limit is reached exactly; one past it is refused with its message", () => {
    const ex = ReferenceExecutor.load(f32, {
      limits: { max_batch_size: 2, max_num_tokens: 6, max_seq_len: 5 },
    });
    const none = (seqId: number, tokens: number[]): SeqRequest => ({ seqId, tokens, logits: "none" });
    // 2 sequences, 6 tokens: both limits exactly
    expect([...ex.step([none(1, [1, 2, 3]), none(2, [4, 5, 6])]).keys()]).toEqual([1, 2]);
    expectLimit(
      () => ex.step([none(3, [1]), none(4, [1]), none(5, [1])]),
      "batch of 3 sequences exceeds max_batch_size 2",
    );
    expectLimit(
      () => ex.step([none(3, [1, 2, 3, 4]), none(4, [1, 2, 3])]),
      "step of 7 tokens exceeds max_num_tokens 6",
    );
    expectLimit(() => ex.step([none(5, [1, 2, 3, 4, 5, 6, 7])]), "step of 7 tokens exceeds max_num_tokens 6");
    // sequence 1 has 3 tokens: 2 more reach max_seq_len 5 exactly, then one more is over
    expectLimit(() => ex.step([none(1, [7, 8, 9])]), "sequence 1 would reach 6 tokens, over max_seq_len 5");
    expect(ex.step([none(1, [7, 8])]).get(1)).toEqual([]);
    expectLimit(() => ex.step([none(1, [9])]), "sequence 1 would reach 6 tokens, over max_seq_len 5");
    expectLimit(
      () => ex.step([none(9, [1, 2, 3, 4, 5, 6])]),
      "sequence 9 would reach 6 tokens, over max_seq_len 5",
    );
    // token ids: 0 and 511 are in tiny-llama's 512-token vocabulary, -1 and 512 are not
    expectLimit(() => ex.step([none(6, [0, -1])]), "token id -1 outside the vocabulary (0..511)");
    expectLimit(() => ex.step([none(6, [512])]), "token id 512 outside the vocabulary (0..511)");
    expect(ex.step([none(6, [0, 511])]).get(6)).toEqual([]);
  });

  // Found here: an empty sequence asking for "last" took the next sequence's row (which got an empty one), and a
  // sequence given twice was written twice at the same positions, counted twice, and failed its next step. The
  // CUDA runtime refuses both (native/src/runtime/step.cc, the same messages).
  it("a sequence with no tokens, or twice in one step, is refused and changes nothing", () => {
    const ex = ReferenceExecutor.load(f32);
    const p = ids(1);
    expectLimit(
      () =>
        ex.step([
          { seqId: 1, tokens: [], logits: "last" },
          { seqId: 2, tokens: p.slice(0, 4), logits: "last" },
        ]),
      "sequence 1: needs at least one token",
    );
    expectLimit(
      () =>
        ex.step([
          { seqId: 2, tokens: p.slice(0, 2), logits: "all" },
          { seqId: 3, tokens: [1], logits: "none" },
          { seqId: 2, tokens: p.slice(2, 4), logits: "all" },
        ]),
      "sequence 2 appears twice in one step",
    );
    const rows = ex.step([{ seqId: 2, tokens: p.slice(0, 4), logits: "all" }]).get(2)!;
    expect(goldenDiff(1, rows)).toBeLessThanOrEqual(BOUND);
    expect(
      goldenDiff(1, ex.step([{ seqId: 2, tokens: [p[4]], logits: "last" }]).get(2)!, 4),
    ).toBeLessThanOrEqual(BOUND);
  });

  it("a refused step changes nothing: the sequences in it go on as if it never came", () => {
    const ex = ReferenceExecutor.load(f32, { limits: { max_seq_len: 17 } });
    const p0 = ids(0);
    ex.step([{ seqId: 1, tokens: p0.slice(0, 5), logits: "none" }]);
    // sequence 1's tokens are fine, sequence 2's second token is not; then sequence 1 one past max_seq_len
    expectLimit(
      () =>
        ex.step([
          { seqId: 1, tokens: p0.slice(5, 9), logits: "all" },
          { seqId: 2, tokens: [3, 600], logits: "all" },
        ]),
      "token id 600 outside the vocabulary (0..511)",
    );
    expectLimit(
      () => ex.step([{ seqId: 1, tokens: [...p0.slice(5), 1], logits: "all" }]),
      "sequence 1 would reach 18 tokens, over max_seq_len 17",
    );
    const rows = ex.step([{ seqId: 1, tokens: p0.slice(5), logits: "all" }]).get(1)!;
    expect(goldenDiff(0, rows, 5)).toBeLessThanOrEqual(BOUND);
    expect(maxDiff(rows, alone(f32, p0, [5, 12]).slice(5))).toBe(0);
    // sequence 2 never started: its first token is at position 0
    expect(
      goldenDiff(1, ex.step([{ seqId: 2, tokens: ids(1).slice(0, 3), logits: "all" }]).get(2)!),
    ).toBeLessThanOrEqual(BOUND);
  });

  it("limits above the build's work: a sequence past the built max_seq_len 32", () => {
    const ex = ReferenceExecutor.load(f32, { limits: { max_seq_len: 40, max_num_tokens: 40 } });
    const p = ids(2);
    const rows = ex.step([{ seqId: 1, tokens: [...p, ...p.slice(0, 12)], logits: "all" }]).get(1)!;
    expect(rows.length).toBe(40);
    expect(goldenDiff(2, rows.slice(0, p.length))).toBeLessThanOrEqual(BOUND);
    expectLimit(
      () => ex.step([{ seqId: 1, tokens: [1], logits: "last" }]),
      "sequence 1 would reach 41 tokens, over max_seq_len 40",
    );
  });
});

describe("logits rows", () => {
  it("'all', 'last' and 'none' in one step give each sequence the rows it asked for, the rows it gets alone", () => {
    const one = [0, 1, 2].map((i) => alone(f32, ids(i).slice(0, golden.prompts[i].promptLen)));
    for (let i = 0; i < 3; i++) expect(goldenDiff(i, one[i])).toBeLessThanOrEqual(BOUND);
    for (const order of [
      [0, 1, 2],
      [2, 0, 1],
      [1, 2, 0],
    ]) {
      const ex = ReferenceExecutor.load(f32);
      const want = ["none", "last", "all"] as const;
      const out = ex.step(
        order.map((i) => ({
          seqId: 10 + i,
          tokens: ids(i).slice(0, golden.prompts[i].promptLen),
          logits: want[i],
        })),
      );
      expect([...out.keys()]).toEqual(order.map((i) => 10 + i));
      expect(out.get(10)).toEqual([]);
      expect(out.get(11)!.length).toBe(1);
      expect(maxDiff(out.get(11)!, [one[1].at(-1)!])).toBe(0);
      expect(out.get(12)!.length).toBe(16);
      expect(maxDiff(out.get(12)!, one[2])).toBe(0);
    }
  });

  it("'last' of a several-token step is its last token's row", () => {
    const ex = ReferenceExecutor.load(f32);
    const p = ids(1);
    const rows = ex.step([{ seqId: 3, tokens: p.slice(0, 11), logits: "last" }]).get(3)!;
    expect(rows.length).toBe(1);
    expect(goldenDiff(1, rows, 10)).toBeLessThanOrEqual(BOUND);
    const next = ex.step([{ seqId: 3, tokens: p.slice(11, 14), logits: "last" }]).get(3)!;
    expect(goldenDiff(1, next, 13)).toBeLessThanOrEqual(BOUND);
  });
});

describe("chunks and packing", () => {
  it("a prompt read in chunks gives the one-shot rows (bit for bit) and the goldens", () => {
    const p = ids(2);
    const once = alone(f32, p);
    expect(goldenDiff(2, once)).toBeLessThanOrEqual(BOUND);
    for (const chunks of [
      [5, 1, 7, 15],
      [1, 1, 26],
      [27, 1],
    ])
      expect(maxDiff(alone(f32, p, chunks), once)).toBe(0);
  });

  it("sequences at different positions in one step (decode beside chunked prefill) get the rows they get alone", () => {
    const ex = ReferenceExecutor.load(f32);
    const got = new Map<number, Float32Array[]>([
      [0, []],
      [1, []],
      [2, []],
    ]);
    const at = [0, 0, 0];
    // per step: how many tokens each prompt feeds (0: not in the step), teacher-forced over the golden ids
    const plan = [
      [5, 0, 0],
      [1, 6, 0],
      [1, 5, 9],
      [3, 1, 7],
      [0, 4, 1],
      [7, 7, 11],
    ];
    for (const step of plan) {
      const seqs = step.flatMap((n, i) =>
        n ? [{ seqId: 100 + i, tokens: ids(i).slice(at[i], at[i] + n), logits: "all" as const }] : [],
      );
      const out = ex.step(seqs);
      step.forEach((n, i) => {
        if (!n) return;
        got.get(i)!.push(...out.get(100 + i)!);
        at[i] += n;
      });
    }
    expect(at).toEqual([17, 23, 28]);
    for (let i = 0; i < 3; i++) {
      expect(goldenDiff(i, got.get(i)!)).toBeLessThanOrEqual(BOUND);
      expect(maxDiff(got.get(i)!, alone(f32, ids(i)))).toBe(0);
    }
  });
});

describe("release", () => {
  it("a released id starts again at position 0 with the whole max_seq_len; the others keep their cache", () => {
    const ex = ReferenceExecutor.load(f32);
    ex.step([
      { seqId: 1, tokens: ids(2), logits: "none" }, // 28 of 32 positions
      { seqId: 2, tokens: ids(1).slice(0, 11), logits: "none" },
    ]);
    ex.release(1);
    ex.release(99); // never seen: nothing to do
    const again = ex.step([{ seqId: 1, tokens: ids(0), logits: "all" }]).get(1)!; // 17 tokens: 45 > 32 unreleased
    expect(goldenDiff(0, again)).toBeLessThanOrEqual(BOUND);
    expect(maxDiff(again, alone(f32, ids(0)))).toBe(0);
    const rest = ex.step([{ seqId: 2, tokens: ids(1).slice(11), logits: "all" }]).get(2)!;
    expect(goldenDiff(1, rest, 11)).toBeLessThanOrEqual(BOUND);
    // released again at 17 tokens: a 32-token sequence fits
    ex.release(1);
    expect(ex.step([{ seqId: 1, tokens: [...ids(2), 1, 2, 3, 4], logits: "last" }]).get(1)!.length).toBe(1);
  });

  it("release drops the sequence's KV cache on every rank (a long-lived server would keep it otherwise)", async () => {
    const tp2 = await buildFixture("llama", { ...LIMITS, tp: 2 });
    dirs.push(tp2);
    const ex = ReferenceExecutor.load(tp2);
    const rows = ex.step([
      { seqId: 5, tokens: ids(0), logits: "all" },
      { seqId: 6, tokens: ids(1), logits: "none" },
    ]);
    expect(goldenDiff(0, rows.get(5)!)).toBeLessThanOrEqual(BOUND);
    const held = (rank: number) => (kvOf(ex, rank) as unknown as { seqs: Map<number, unknown> }).seqs;
    for (const r of [0, 1]) expect([...held(r).keys()].sort()).toEqual([5, 6]);
    ex.release(5);
    for (const r of [0, 1]) expect([...held(r).keys()]).toEqual([6]);
  });
});

describe("fp8 KV cache", () => {
  // docs/engine-format.md: rows stored as e4m3(x/scale) (RNE, saturating), read back as stored·scale; the tokens of
  // the current step attend to their own K/V before rounding. Scales that are not powers of two (the build's are
  // 1.0), so that x/scale and ·scale change which value is stored.
  const SCALES = [
    [0.75, 1.5],
    [1.25, 0.625],
  ];
  function withScales(dir: string): ReferenceExecutor {
    const e = openEngine(dir);
    let n = 0;
    for (const node of e.ranks[0].header.nodes)
      if (node.attrs.kv_cache_dtype === "fp8") {
        const [k, v] = SCALES[node.attrs.layer as number];
        node.attrs.k_scale = k;
        node.attrs.v_scale = v;
        n++;
      }
    expect(n).toBe(2);
    return new ReferenceExecutor(e);
  }
  const e4m3 = (x: number, s: number) => Math.fround(roundE4m3(Math.fround(x / s)) * s);

  it("a step sees its own K/V as computed; the cache then holds e4m3(x/scale)·scale, and later steps read that", () => {
    const ex8 = withScales(kv8);
    const ex32 = ReferenceExecutor.load(f32);
    const prefill = (ex: ReferenceExecutor) =>
      ex.step([
        { seqId: 1, tokens: ids(0).slice(0, 5), logits: "all" },
        { seqId: 2, tokens: ids(1).slice(0, 11), logits: "all" },
      ]);
    const a = prefill(ex8);
    const b = prefill(ex32);
    for (const s of [1, 2]) expect(maxDiff(a.get(s)!, b.get(s)!)).toBe(0);
    // every row of every layer, both sequences: the fp32 engine's row, rounded (and most values changed by it)
    let changed = 0;
    let total = 0;
    for (const [s, len] of [
      [1, 5],
      [2, 11],
    ])
      for (let layer = 0; layer < 2; layer++) {
        const c8 = kvOf(ex8).get(s, layer);
        const c32 = kvOf(ex32).get(s, layer);
        expect([c8.k.length, c8.v.length]).toEqual([len, len]);
        for (let pos = 0; pos < len; pos++)
          for (const [which, scale] of [
            ["k", SCALES[layer][0]],
            ["v", SCALES[layer][1]],
          ] as const) {
            const want = Array.from(c32[which][pos], (x) => e4m3(x, scale));
            const got = Array.from(c8[which][pos]);
            expect(got).toEqual(want);
            changed += got.filter((x, d) => x !== c32[which][pos][d]).length;
            total += got.length;
          }
      }
    expect(changed).toBeGreaterThan(total * 0.8);
    // The fp32 engine given the rounded cache computes the fp8 engine's next step exactly: nothing else differs.
    for (const s of [1, 2])
      for (let layer = 0; layer < 2; layer++) {
        const c8 = kvOf(ex8).get(s, layer);
        const c32 = kvOf(ex32).get(s, layer);
        c32.k = c8.k.map((r) => r.slice());
        c32.v = c8.v.map((r) => r.slice());
      }
    const decode = (ex: ReferenceExecutor) =>
      ex.step([
        { seqId: 2, tokens: ids(1).slice(11, 14), logits: "all" },
        { seqId: 1, tokens: [ids(0)[5]], logits: "last" },
      ]);
    const c = decode(ex8);
    const d = decode(ex32);
    for (const s of [1, 2]) expect(maxDiff(c.get(s)!, d.get(s)!)).toBe(0);
    expect(goldenDiff(0, c.get(1)!, 5)).toBeLessThanOrEqual(0.2); // quant/engines.test.ts's bound for fp8 KV
    // the rows this step wrote are rounded too (layer 0's K/V do not depend on the cache: compare them with the
    // fp32 engine's, which now computed from the same cache)
    for (const [s, from, to] of [
      [2, 11, 14],
      [1, 5, 6],
    ]) {
      const c8 = kvOf(ex8).get(s, 0);
      const c32 = kvOf(ex32).get(s, 0);
      for (let pos = from; pos < to; pos++) {
        expect(Array.from(c8.k[pos])).toEqual(Array.from(c32.k[pos], (x) => e4m3(x, SCALES[0][0])));
        expect(Array.from(c8.v[pos])).toEqual(Array.from(c32.v[pos], (x) => e4m3(x, SCALES[0][1])));
      }
    }
  });

  it("at the build's scales (1.0) the decode steps differ from fp32 KV and stay within 0.2 of the goldens", () => {
    const ex8 = ReferenceExecutor.load(kv8);
    const ex32 = ReferenceExecutor.load(f32);
    const p = golden.prompts[2];
    const run = (ex: ReferenceExecutor) => {
      const rows = ex.step([{ seqId: 1, tokens: p.inputIds.slice(0, p.promptLen), logits: "all" }]).get(1)!;
      for (let pos = p.promptLen; pos < p.inputIds.length; pos++)
        rows.push(...ex.step([{ seqId: 1, tokens: [p.inputIds[pos]], logits: "last" }]).get(1)!);
      return rows;
    };
    const a = run(ex8);
    const b = run(ex32);
    expect(maxDiff(a.slice(0, p.promptLen), b.slice(0, p.promptLen))).toBe(0);
    const d = maxDiff(a.slice(p.promptLen), b.slice(p.promptLen));
    expect(d).toBeGreaterThan(1e-3);
    expect(goldenDiff(2, a)).toBeLessThanOrEqual(0.2);
  });
});

describe("fp16 / bf16 KV cache", () => {
  // The engine header's kv_cache.dtype is what the cache holds. It was applied only for fp8: an fp32 engine built
  // with --kv-cache-dtype bf16 computed exactly as one with an fp32 cache, and a fused attention's post-RoPE K
  // stayed fp32 in an fp16 engine's cache (the GPU's fp16 cache rounds it). The rows are rounded as they are
  // stored, before any token attends to them, as on the GPU (decode_fast_kernel attends to the k it packs).
  const prefill = (ex: ReferenceExecutor) =>
    ex.step([{ seqId: 1, tokens: ids(1).slice(0, 11), logits: "all" }]);
  const rounded = (row: Float32Array, dtype: string) => {
    const r = row.slice();
    roundToDtype(r, dtype);
    return Array.from(r);
  };

  it("fp32 activations, bf16 cache: the cache holds the K/V in bf16, and every token attends to those", async () => {
    const kv16 = await buildFixture("llama", { ...LIMITS, kvCacheDtype: "bf16" });
    dirs.push(kv16);
    const exb = ReferenceExecutor.load(kv16);
    const ex32 = ReferenceExecutor.load(f32);
    // the prompt's own tokens see the rounded rows already: its logits move off the fp32 engine's
    const p0 = prefill(exb).get(1)!;
    expect(maxDiff(p0, prefill(ex32).get(1)!)).toBeGreaterThan(1e-5);
    expect(goldenDiff(1, p0)).toBeLessThanOrEqual(0.05);
    // Layer 0's rows are the fp32 engine's rounded to bf16 (layer 1's inputs already differ); every row is bf16.
    let changed = 0;
    for (let layer = 0; layer < 2; layer++)
      for (const which of ["k", "v"] as const)
        for (let pos = 0; pos < 11; pos++) {
          const row = kvOf(exb).get(1, layer)[which][pos];
          const got = Array.from(row);
          expect(got).toEqual(rounded(row, "bf16"));
          if (layer > 0) continue;
          const want32 = kvOf(ex32).get(1, layer)[which][pos];
          expect(got).toEqual(rounded(want32, "bf16"));
          changed += got.filter((x, d) => x !== want32[d]).length;
        }
    expect(changed).toBeGreaterThan(500); // of K, V × 11 positions × 64 values
    // later steps read the bf16 cache: the decode logits move off the fp32 engine's, within half precision's bound
    const next = (ex: ReferenceExecutor) =>
      ex.step([{ seqId: 1, tokens: [ids(1)[11]], logits: "last" }]).get(1)!;
    const a = next(exb);
    expect(maxDiff(a, next(ex32))).toBeGreaterThan(1e-4);
    expect(goldenDiff(1, a, 11)).toBeLessThanOrEqual(0.05);
  });

  it("a prompt in one step or in two chunks (a paused request's recompute) gives the same logits, bit for bit", async () => {
    // Rounded after the step instead, the one-step prompt attended to its own K/V unrounded while the second chunk
    // attended to the first chunk's rounded rows: a resumed request's logits differed (0.02 on bf16 tiny-llama).
    for (const dir of [f16, dirs.at(-1)!]) {
      const whole = ReferenceExecutor.load(dir);
      const chunked = ReferenceExecutor.load(dir);
      const a = whole.step([{ seqId: 1, tokens: ids(1).slice(0, 11), logits: "last" }]).get(1)!;
      chunked.step([{ seqId: 1, tokens: ids(1).slice(0, 6), logits: "last" }]);
      const b = chunked.step([{ seqId: 1, tokens: ids(1).slice(6, 11), logits: "last" }]).get(1)!;
      expect(maxDiff(a, b), dir).toBe(0);
    }
  });

  it("fp16 engine: the cached K (RoPE applied inside fused_attention) and V are fp16 values", () => {
    const ex = ReferenceExecutor.load(f16);
    expect(openEngine(f16).ranks[0].header.nodes.some((n) => n.op === "fused_attention")).toBe(true);
    prefill(ex);
    for (let layer = 0; layer < 2; layer++)
      for (const which of ["k", "v"] as const)
        for (let pos = 0; pos < 11; pos++) {
          const row = kvOf(ex).get(1, layer)[which][pos];
          expect(Array.from(row)).toEqual(rounded(row, "f16"));
        }
  });
});

describe("activation rounding", () => {
  const prefill = (ex: ReferenceExecutor) => ex.step([{ seqId: 1, tokens: ids(2), logits: "all" }]).get(1)!;

  it("by default each op output is stored in the engine's dtype (fp16); roundActivations false keeps fp32", () => {
    const def = prefill(ReferenceExecutor.load(f16));
    const on = prefill(ReferenceExecutor.load(f16, { roundActivations: true }));
    const off = prefill(ReferenceExecutor.load(f16, { roundActivations: false }));
    expect(maxDiff(def, on)).toBe(0);
    const d = maxDiff(def, off);
    // docs/engine-format.md: 0.0029 on tiny-llama fp16 (golden prompts, decode included)
    expect(d).toBeGreaterThan(1e-4);
    expect(d).toBeLessThan(0.02);
    for (const rows of [def, off]) expect(goldenDiff(2, rows)).toBeLessThanOrEqual(0.05);
    // the logits value is an fp16 output: rounded, every logit is an fp16 number; not rounded, most are not
    const h = openEngine(f16).ranks[0].header;
    expect(h.values.find((v) => v.id === h.outputs.logits)!.dtype).toBe("f16");
    const isF16 = (x: number) => {
      const a = new Float32Array([x]);
      roundToDtype(a, "f16");
      return a[0] === x;
    };
    expect(def.every((row) => row.every(isF16))).toBe(true);
    expect(off.flatMap((row) => Array.from(row)).filter((x) => !isF16(x)).length).toBeGreaterThan(
      off.length * 256,
    );
  });

  it("an fp32 engine is the same with or without rounding", () => {
    expect(
      maxDiff(
        prefill(ReferenceExecutor.load(f32)),
        prefill(ReferenceExecutor.load(f32, { roundActivations: false })),
      ),
    ).toBe(0);
  });
});

describe("malformed engines and close", () => {
  it("an op input no node computed is named with its node", () => {
    const e = openEngine(f32);
    const nodes = e.ranks[0].header.nodes;
    const i = nodes.findIndex((n) => n.op === "fused_attention");
    expect(i).toBeGreaterThan(0);
    nodes[i].inputs[0] = 99999;
    const ex = new ReferenceExecutor(e);
    const err = thrown(() => ex.step([{ seqId: 1, tokens: [1, 2], logits: "last" }]));
    expect(err?.message).toBe(`node ${i} (fused_attention): input value 99999 not computed`);
  });

  it("a weight of a dtype it cannot read is refused with the dtype and the weight's name", () => {
    const e = openEngine(f32);
    const h = e.ranks[0].header;
    const v = h.values.find((x) => x.name === "model.norm.weight")!;
    expect(h.weights.some((w) => w.value === v.id)).toBe(true);
    v.dtype = "i64" as never;
    expect(thrown(() => new ReferenceExecutor(e))?.message).toBe(
      "reference executor cannot read weights of dtype i64 (model.norm.weight)",
    );
  });

  it("close drops the weights: a step afterwards throws instead of computing", () => {
    const ex = ReferenceExecutor.load(f32);
    ex.step([{ seqId: 1, tokens: [1, 2], logits: "last" }]);
    ex.close();
    expect(thrown(() => ex.step([{ seqId: 1, tokens: [3], logits: "last" }]))).toBeInstanceOf(Error);
  });
});

describe("fromGraphs", () => {
  it("runs a graph with the weights the engine writer stores: the same logits as the written engine, and the goldens", async () => {
    // (built as the pass tests build theirs, with the checkpoint's torch_dtype: tinyLlamaGraph() leaves it out)
    const graph = await graphOf(LLAMA_MODEL, TINY_LLAMA, tinyLlamaBuild());
    for (const [build, ckpt] of [
      [tinyLlamaBuild(), openCheckpoint(TINY_LLAMA)],
      [tinyLlamaBuild({ random_weights: true, seed: 5 }), null],
    ] as const) {
      const ex = ReferenceExecutor.fromGraphs([graph], build, ckpt);
      expect(ex.vocabSize).toBe(512);
      expect(ex.limits).toEqual({ max_batch_size: 1, max_num_tokens: 8, max_seq_len: 8 });
      const out = path.join(tmpDir(), "engine");
      dirs.push(out);
      await writeEngine({
        outDir: out,
        ranks: [{ rank: 0, graph }],
        build,
        model: {},
        facts: {
          vocabSize: 512,
          numLayers: 2,
          numHeads: 4,
          numKvHeads: 2,
          headDim: 16,
          hiddenSize: 64,
          maxPositionEmbeddings: 8,
          eosTokenIds: [],
        },
        checkpoint: ckpt,
      });
      const written = ReferenceExecutor.load(out);
      const run = (x: ReferenceExecutor) => {
        const rows = x.step([{ seqId: 1, tokens: ids(0).slice(0, 5), logits: "all" }]).get(1)!;
        for (let pos = 5; pos < 8; pos++)
          rows.push(...x.step([{ seqId: 1, tokens: [ids(0)[pos]], logits: "last" }]).get(1)!);
        return rows;
      };
      const rows = run(ex);
      expect(maxDiff(rows, run(written))).toBe(0);
      const d = goldenDiff(0, rows);
      if (ckpt) expect(d).toBeLessThanOrEqual(BOUND);
      else expect(d).toBeGreaterThan(0.1); // random weights: not the checkpoint's model
      expect(rows.every((r) => r.some((x) => x !== 0))).toBe(true);
    }
  });
});
