// The golden logits files of `tsllm-run --golden` (src/golden.ts; README "Golden files",
// ../shared/fixtures/README.md): readGolden against the fixtures' golden.safetensors, parsed here
// independently (header JSON and raw little-endian bytes) and checked against the greedy continuation
// transformers generated; hand-built files read exactly, malformed ones refused with their one-line
// message; checkGolden driven by scripted executors whose per-prompt max |Δlogit|, prefill / decode split
// and top-1 agreement are worked out by hand, and by a replay of the fixture's own rows; defaultTolerance
// against the bounds the README states.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CheckpointError } from "../src/checkpoint/errors.ts";
import { type TensorToWrite, writeSafetensors } from "../src/checkpoint/safetensors.ts";
import type { Executor, SeqRequest } from "../src/executor/types.ts";
import { checkGolden, defaultTolerance, type Golden, readGolden } from "../src/golden.ts";
import { FIXTURES, goldenTensors, TINY_LLAMA } from "./fixtures.ts";

/** A safetensors file parsed without src/: metadata and each tensor's dtype, shape and raw bytes. */
function parseRaw(file: string) {
  const b = fs.readFileSync(file);
  const n = Number(b.readBigUInt64LE(0));
  const header = JSON.parse(b.subarray(8, 8 + n).toString("utf8")) as Record<string, unknown>;
  const { __metadata__, ...entries } = header as {
    __metadata__: Record<string, string>;
  } & Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
  const tensor = (name: string) => {
    const e = entries[name] as { dtype: string; shape: number[]; data_offsets: [number, number] };
    const bytes = b.subarray(8 + n + e.data_offsets[0], 8 + n + e.data_offsets[1]);
    const values: number[] = [];
    for (let k = 0; k < bytes.length; k += 4)
      values.push(e.dtype === "I32" ? bytes.readInt32LE(k) : bytes.readFloatLE(k));
    return { dtype: e.dtype, shape: e.shape, values };
  };
  return { metadata: __metadata__, names: Object.keys(entries), tensor };
}

const argmaxOf = (row: ArrayLike<number>) => {
  let best = 0;
  for (let k = 1; k < row.length; k++) if (row[k] > row[best]) best = k;
  return best;
};

describe("readGolden on the fixtures' golden.safetensors", () => {
  for (const model of ["tiny-llama", "tiny-gptj", "tiny-qwen2", "tiny-mixtral"]) {
    it(`${model}: three prompts of 5 / 11 / 16 tokens + 12 greedy ones, vocab 512, bytes as stored`, () => {
      const file = path.join(FIXTURES, model, "golden.safetensors");
      const raw = parseRaw(file);
      const g = readGolden(file);
      expect(g.metadata).toEqual(raw.metadata);
      expect(g.metadata.prompt_lens).toBe("5,11,16");
      expect(g.prompts.map((p) => [p.inputIds.length, p.promptLen, p.vocab])).toEqual([
        [17, 5, 512],
        [23, 11, 512],
        [28, 16, 512],
      ]);
      g.prompts.forEach((p, i) => {
        expect(p.inputIds).toEqual(raw.tensor(`p${i}.input_ids`).values);
        expect(Array.from(p.logits)).toEqual(raw.tensor(`p${i}.logits`).values);
      });
    });
  }

  it("tiny-llama: the continuation is the argmax of the logits one position back, by min_top1_margin or more", () => {
    // The fixture's meaning (../shared/fixtures/README.md): ids after prompt_lens[i] are transformers' greedy
    // tokens, so row t (t from promptLen - 1) predicts ids[t + 1]; a promptLen off by one would shift the check.
    const g = readGolden(path.join(TINY_LLAMA, "golden.safetensors"));
    let minMargin = Infinity;
    for (const p of g.prompts) {
      let greedy = 0;
      for (let t = p.promptLen - 1; t < p.inputIds.length - 1; t++) {
        const row = p.logits.subarray(t * p.vocab, (t + 1) * p.vocab);
        const best = argmaxOf(row);
        expect(best).toBe(p.inputIds[t + 1]);
        const second = Math.max(...Array.from(row).filter((_, k) => k !== best));
        minMargin = Math.min(minMargin, row[best] - second);
        greedy++;
      }
      expect(greedy).toBe(Number(g.metadata.new_tokens));
    }
    expect(minMargin).toBeGreaterThanOrEqual(Number(g.metadata.min_top1_margin) - 5e-5);
    expect(minMargin).toBeLessThan(Number(g.metadata.min_top1_margin) + 5e-5);
  });
});

interface HandPrompt {
  ids: number[];
  rows: number[][];
}

function tensorsOf(ps: HandPrompt[]): Record<string, TensorToWrite> {
  return goldenTensors(
    ps.map((p) => ({
      ids: p.ids,
      shape: [p.rows.length, p.rows[0]?.length ?? 0],
      logits: Float32Array.from(p.rows.flat()),
    })),
  );
}

const raw = (dtype: TensorToWrite["dtype"], shape: number[], bytesPer = 4): TensorToWrite => ({
  dtype,
  shape,
  data: new Uint8Array(shape.reduce((a, b) => a * b, 1) * bytesPer),
});

// Two prompts, vocab 3: p0 is 2 prompt tokens + 2 generated, p1 is 1 + 2. Values exact in float32.
const P0: HandPrompt = {
  ids: [5, 6, 7, 8],
  rows: [
    [1, 2, 3],
    [3, 1, 0],
    [0, 0.5, 0.25],
    [2, 2, 1],
  ],
};
const P1: HandPrompt = {
  ids: [9, 10, 11],
  rows: [
    [0, 1, 0],
    [1, 0, 0],
    [0, 0, 1],
  ],
};

describe("readGolden on hand-built files", () => {
  let dir: string;
  let n = 0;
  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "tsllm-golden-"));
  });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
  const write = (t: Record<string, TensorToWrite>, meta?: Record<string, string>) => {
    const file = path.join(dir, `g${n++}.safetensors`);
    writeSafetensors(file, t, meta);
    return file;
  };
  /** The one-line message readGolden refuses `file` with (a CheckpointError naming it). */
  const refusal = (file: string) => {
    try {
      readGolden(file);
    } catch (e) {
      expect(e).toBeInstanceOf(CheckpointError);
      expect((e as CheckpointError).file).toBe(file);
      const m = (e as Error).message;
      expect(m).not.toContain("\n");
      expect(m.startsWith(`${file}: `)).toBe(true);
      return m.slice(file.length + 2);
    }
    throw new Error("readGolden accepted the file");
  };

  it("reads ids, prompt lengths, vocab, logits and metadata exactly", () => {
    const meta = { prompt_lens: "2,1", source: "by hand" };
    const g = readGolden(write(tensorsOf([P0, P1]), meta));
    expect(g.metadata).toEqual(meta);
    expect(g.prompts).toHaveLength(2);
    expect(g.prompts[0].inputIds).toEqual([5, 6, 7, 8]);
    expect(g.prompts[0].promptLen).toBe(2);
    expect(g.prompts[0].vocab).toBe(3);
    expect(g.prompts[0].logits).toEqual(Float32Array.from(P0.rows.flat()));
    expect(g.prompts[1].inputIds).toEqual([9, 10, 11]);
    expect(g.prompts[1].promptLen).toBe(1);
    expect(g.prompts[1].vocab).toBe(3);
    expect(g.prompts[1].logits).toEqual(Float32Array.from(P1.rows.flat()));
  });

  it("token id 0 and a prompt that is the whole sequence are fine; a trailing comma is ignored", () => {
    const g = readGolden(write(tensorsOf([{ ids: [0, 0], rows: [[1], [2]] }, P1]), { prompt_lens: "2,3," }));
    expect(g.prompts.map((p) => [p.inputIds, p.promptLen, p.vocab])).toEqual([
      [[0, 0], 2, 1],
      [[9, 10, 11], 3, 3],
    ]);
  });

  it("without prompt_lens (or with it empty) each prompt is its whole sequence", () => {
    const metas: (Record<string, string> | undefined)[] = [undefined, { prompt_lens: "" }, { other: "x" }];
    for (const meta of metas) {
      const g = readGolden(write(tensorsOf([P0, P1]), meta));
      expect(g.prompts.map((p) => p.promptLen)).toEqual([4, 3]);
      expect(g.metadata).toEqual(meta ?? {});
    }
  });

  it("refuses input_ids that are not I32 [T], empty or negative, naming the prompt", () => {
    const t = () => tensorsOf([P0, P1]);
    expect(refusal(write({ ...t(), "p1.input_ids": raw("F32", [3]) }))).toBe(
      "p1.input_ids must be I32 [T], is F32 [3]",
    );
    expect(refusal(write({ ...t(), "p0.input_ids": raw("I32", [1, 4]) }))).toBe(
      "p0.input_ids must be I32 [T], is I32 [1, 4]",
    );
    expect(refusal(write({ ...t(), "p0.input_ids": raw("I32", []) }))).toBe(
      "p0.input_ids must be I32 [T], is I32 []",
    );
    expect(refusal(write({ ...t(), "p0.input_ids": raw("I32", [0]) }))).toBe("p0.input_ids is empty");
    const neg = tensorsOf([P0, { ids: [9, -1, 11], rows: P1.rows }]);
    expect(refusal(write(neg))).toBe("p1.input_ids holds a negative token id");
  });

  it("refuses logits that are missing or not F32 [T, vocab ≥ 1]", () => {
    const t = () => tensorsOf([P0, P1]);
    const { "p1.logits": _, ...noLogits } = t();
    expect(refusal(write(noLogits))).toBe("p1.logits is missing");
    expect(refusal(write({ ...t(), "p0.logits": raw("F16", [4, 3], 2) }))).toBe(
      "p0.logits must be F32 [4, vocab], is F16 [4, 3]",
    );
    expect(refusal(write({ ...t(), "p0.logits": raw("F32", [12]) }))).toBe(
      "p0.logits must be F32 [4, vocab], is F32 [12]",
    );
    expect(refusal(write({ ...t(), "p1.logits": raw("F32", [1, 3, 3]) }))).toBe(
      "p1.logits must be F32 [3, vocab], is F32 [1, 3, 3]",
    );
    // the rank alone is wrong: [T] and [T, vocab, 1]
    expect(refusal(write({ ...t(), "p0.logits": raw("F32", [4]) }))).toBe(
      "p0.logits must be F32 [4, vocab], is F32 [4]",
    );
    expect(refusal(write({ ...t(), "p1.logits": raw("F32", [3, 3, 1]) }))).toBe(
      "p1.logits must be F32 [3, vocab], is F32 [3, 3, 1]",
    );
    expect(refusal(write({ ...t(), "p1.logits": raw("F32", [4, 3]) }))).toBe(
      "p1.logits must be F32 [3, vocab], is F32 [4, 3]",
    );
    expect(refusal(write({ ...t(), "p1.logits": raw("F32", [2, 3]) }))).toBe(
      "p1.logits must be F32 [3, vocab], is F32 [2, 3]",
    );
    expect(refusal(write({ ...t(), "p1.logits": raw("F32", [3, 0]) }))).toBe(
      "p1.logits must be F32 [3, vocab], is F32 [3, 0]",
    );
  });

  it("refuses a prompt length outside 1..T, or not an integer", () => {
    const file = (lens: string) => write(tensorsOf([P0, P1]), { prompt_lens: lens });
    expect(refusal(file("0,1"))).toBe("prompt_lens[0] = 0 is out of range (1..4)");
    expect(refusal(file("5,1"))).toBe("prompt_lens[0] = 5 is out of range (1..4)");
    expect(refusal(file("2,4"))).toBe("prompt_lens[1] = 4 is out of range (1..3)");
    expect(refusal(file("2,-1"))).toBe("prompt_lens[1] = -1 is out of range (1..3)");
    expect(refusal(file("1.5,1"))).toBe("prompt_lens[0] = 1.5 is out of range (1..4)");
    expect(refusal(file("two,1"))).toBe("prompt_lens[0] = NaN is out of range (1..4)");
  });

  it("refuses a file without prompts", () => {
    expect(refusal(write({ other: raw("F32", [2]) }))).toBe(
      "no prompts (expected p0.input_ids, p0.logits, …)",
    );
    expect(refusal(write({}))).toBe("no prompts (expected p0.input_ids, p0.logits, …)");
    // a name that only ends like a prompt's is no prompt's
    expect(refusal(write({ "x.p1.logits": raw("F32", [2]) }))).toBe(
      "no prompts (expected p0.input_ids, p0.logits, …)",
    );
  });

  // Both were read silently before (session 33): the check then passed having compared fewer prompts, or
  // other prompt lengths, than the file holds.
  it("refuses prompts after a missing one, and logits without their ids: they would go unchecked", () => {
    const { "p0.input_ids": a, "p0.logits": b, "p1.input_ids": c, "p1.logits": d } = tensorsOf([P0, P1]);
    // (logits first in the file: the message names the first stray tensor by name, not by offset)
    expect(refusal(write({ "p0.input_ids": a, "p0.logits": b, "p2.logits": d, "p2.input_ids": c }))).toBe(
      "p1.input_ids is missing (the file holds p2.input_ids)",
    );
    expect(refusal(write({ ...tensorsOf([P0, P1]), "p12.logits": d }))).toBe(
      "p2.input_ids is missing (the file holds p12.logits)",
    );
    expect(refusal(write({ "p0.input_ids": a, "p0.logits": b, "p1.logits": d }))).toBe(
      "p1.input_ids is missing (the file holds p1.logits)",
    );
    expect(refusal(write({ "p1.input_ids": c, "p1.logits": d }))).toBe(
      "p0.input_ids is missing (the file holds p1.input_ids)",
    );
    // Other tensors are no prompt's: they are left alone.
    const g = readGolden(
      write({
        "p0.input_ids": a,
        "p0.logits": b,
        "p1.ids": c,
        "q2.logits": d,
        "xp1.logits": d,
        "p1.logits.old": d,
      }),
    );
    expect(g.prompts.map((p) => p.inputIds)).toEqual([P0.ids]);
  });

  it("refuses prompt_lens with more or fewer entries than prompts", () => {
    const file = (lens: string) => write(tensorsOf([P0, P1]), { prompt_lens: lens });
    expect(refusal(file("2"))).toBe("prompt_lens has 1 entry for 2 prompts");
    expect(refusal(file("2,1,3"))).toBe("prompt_lens has 3 entries for 2 prompts");
  });

  it("leaves no file descriptor open, read or refused", () => {
    const good = write(tensorsOf([P0, P1]), { prompt_lens: "2,1" });
    const bad = write({ ...tensorsOf([P0, P1]), "p1.logits": raw("F32", [4, 3]) });
    const open = () => fs.readdirSync("/proc/self/fd").length;
    const before = open();
    for (let k = 0; k < 8; k++) {
      readGolden(good);
      expect(() => readGolden(bad)).toThrow(CheckpointError);
    }
    expect(open()).toBe(before);
  });
});

/**
 * An executor that checks it is fed the golden ids in order (teacher forcing) and answers each fed
 * position `pos` of prompt `i` (seqId base + i) with `rows(i, pos)`; it records every call.
 */
function scripted(golden: Golden, rows: (i: number, pos: number) => ArrayLike<number>, base = 1000) {
  const calls: string[] = [];
  const fed = new Map<number, number>();
  const ex: Executor = {
    vocabSize: golden.prompts[0].vocab,
    step(seqs: SeqRequest[]) {
      calls.push(seqs.map((s) => `${s.seqId}:${s.tokens.join(" ")}:${s.logits}`).join(" | "));
      const out = new Map<number, Float32Array[]>();
      for (const s of seqs) {
        const i = s.seqId - base;
        const at = fed.get(s.seqId) ?? 0;
        expect(s.tokens).toEqual(golden.prompts[i].inputIds.slice(at, at + s.tokens.length));
        fed.set(s.seqId, at + s.tokens.length);
        const all = s.tokens.map((_, k) => Float32Array.from(rows(i, at + k)));
        out.set(s.seqId, s.logits === "all" ? all : s.logits === "last" ? all.slice(-1) : []);
      }
      return out;
    },
    release(seqId: number) {
      calls.push(`release ${seqId}`);
      fed.delete(seqId);
    },
    close() {},
  };
  return { ex, calls };
}

describe("checkGolden with scripted executors (figures by hand)", () => {
  const golden: Golden = {
    prompts: [
      { inputIds: P0.ids, promptLen: 2, logits: Float32Array.from(P0.rows.flat()), vocab: 3 },
      { inputIds: P1.ids, promptLen: 1, logits: Float32Array.from(P1.rows.flat()), vocab: 3 },
    ],
    metadata: {},
  };
  // The engine's rows. p0: |Δ| 0.5, 0.25 (prefill), 1, 2 (decode); argmax 2=2, 0=0, 2≠1, 1≠0 → top-1 2/4.
  // p1: |Δ| 0 (prefill), 0.25, 0.125 (decode); argmax 1=1, 0=0, 2=2 → 3/3.
  const ENGINE = [
    [
      [1, 2, 3.5],
      [3, 1.25, 0],
      [0, 0.5, 1.25],
      [2, 4, 1],
    ],
    [
      [0, 1, 0],
      [0.75, 0, 0],
      [0, 0, 1.125],
    ],
  ];
  const WANT = {
    perPrompt: [
      { maxAbs: 2, prefillMaxAbs: 0.5, decodeMaxAbs: 2, top1Agree: 2, positions: 4 },
      { maxAbs: 0.25, prefillMaxAbs: 0, decodeMaxAbs: 0.25, top1Agree: 3, positions: 3 },
    ],
    maxAbs: 2,
  };

  it("one prompt at a time: prefill with every row, then one golden token per step; seqIds from 1000", () => {
    const { ex, calls } = scripted(golden, (i, pos) => ENGINE[i][pos]);
    expect(checkGolden(ex, golden)).toEqual(WANT);
    expect(calls).toEqual([
      "1000:5 6:all",
      "1000:7:last",
      "1000:8:last",
      "release 1000",
      "1001:9:all",
      "1001:10:last",
      "1001:11:last",
      "release 1001",
    ]);
  });

  it("batched: both prompts packed in each step, each decoding from its own prompt length", () => {
    const { ex, calls } = scripted(golden, (i, pos) => ENGINE[i][pos], 7);
    expect(checkGolden(ex, golden, { batched: true, seqBase: 7 })).toEqual(WANT);
    expect(calls).toEqual([
      "7:5 6:all | 8:9:all",
      "8:10:last",
      "7:7:last | 8:11:last",
      "7:8:last",
      "release 7",
      "release 8",
    ]);
  });

  it("the worst prompt sets the overall figure, whichever it is", () => {
    const swapped: Golden = { prompts: [golden.prompts[1], golden.prompts[0]], metadata: {} };
    const { ex } = scripted(swapped, (i, pos) => ENGINE[1 - i][pos]);
    const r = checkGolden(ex, swapped);
    expect(r.perPrompt.map((p) => p.maxAbs)).toEqual([0.25, 2]);
    expect(r.maxAbs).toBe(2);
  });

  it("a row equal to the golden one scores 0 with full top-1 agreement", () => {
    const { ex } = scripted(golden, (i, pos) => golden.prompts[i].logits.subarray(pos * 3, pos * 3 + 3));
    expect(checkGolden(ex, golden)).toEqual({
      perPrompt: [
        { maxAbs: 0, prefillMaxAbs: 0, decodeMaxAbs: 0, top1Agree: 4, positions: 4 },
        { maxAbs: 0, prefillMaxAbs: 0, decodeMaxAbs: 0, top1Agree: 3, positions: 3 },
      ],
      maxAbs: 0,
    });
  });

  it("a NaN logit anywhere in a row makes that prompt's max |Δ| infinite (never hidden by Math.max)", () => {
    for (const k of [0, 1, 2]) {
      const { ex } = scripted(golden, (i, pos) => {
        const r = [...ENGINE[i][pos]];
        if (i === 1 && pos === 1) r[k] = Number.NaN;
        return r;
      });
      const r = checkGolden(ex, golden);
      expect(r.perPrompt[1]).toEqual({
        maxAbs: Infinity,
        prefillMaxAbs: 0,
        decodeMaxAbs: Infinity,
        // row [0.75, 0, 0] against the golden [1, 0, 0]: a NaN in place of 0.75 never wins (argmax 1 ≠ 0)
        top1Agree: k === 0 ? 2 : 3,
        positions: 3,
      });
      expect(r.perPrompt[0]).toEqual(WANT.perPrompt[0]);
      expect(r.maxAbs).toBe(Infinity);
    }
  });

  it("refuses an engine whose vocabulary differs from the golden's", () => {
    const { ex } = scripted(golden, (i, pos) => [...ENGINE[i][pos], 0]);
    expect(() => checkGolden(ex, golden)).toThrow(new Error("engine vocab 4 != golden vocab 3"));
  });
});

describe("checkGolden replaying the tiny-llama fixture's own rows", () => {
  const file = path.join(TINY_LLAMA, "golden.safetensors");
  const raw = parseRaw(file);
  const rowOf = (i: number, pos: number) =>
    raw.tensor(`p${i}.logits`).values.slice(pos * 512, (pos + 1) * 512);
  const cache = new Map<string, number[]>();
  const row = (i: number, pos: number) => {
    const key = `${i}/${pos}`;
    if (!cache.has(key)) cache.set(key, rowOf(i, pos));
    return cache.get(key) as number[];
  };

  it("exact rows: 0 everywhere, every position compared and agreeing; 13 steps a prompt, or 24 packed", () => {
    const g = readGolden(file);
    const one = scripted(g, row);
    const packed = scripted(g, row);
    const want = {
      perPrompt: [17, 23, 28].map((n) => ({
        maxAbs: 0,
        prefillMaxAbs: 0,
        decodeMaxAbs: 0,
        top1Agree: n,
        positions: n,
      })),
      maxAbs: 0,
    };
    expect(checkGolden(one.ex, g)).toEqual(want);
    expect(checkGolden(packed.ex, g, { batched: true })).toEqual(want);
    // one at a time: a prefill and 12 decode steps per prompt (plus its release)
    expect(one.calls.filter((c) => !c.startsWith("release"))).toHaveLength(3 * 13);
    // packed: one prefill, then positions 5..27 (23 steps), the longest prompt's last
    expect(packed.calls.filter((c) => !c.startsWith("release"))).toHaveLength(1 + 23);
  });

  it("one logit of prompt 2 at decode position 20 moved to the top: Δ and one top-1 miss, there only", () => {
    const g = readGolden(file);
    const r20 = row(2, 20);
    const best = argmaxOf(r20);
    const k = best === 7 ? 8 : 7;
    const moved = Math.fround(r20[best] + 0.5);
    const { ex } = scripted(g, (i, pos) => {
      if (i !== 2 || pos !== 20) return row(i, pos);
      const r = [...r20];
      r[k] = moved;
      return r;
    });
    const rep = checkGolden(ex, g);
    const d = moved - r20[k];
    expect(rep.perPrompt[2]).toEqual({
      maxAbs: d,
      prefillMaxAbs: 0,
      decodeMaxAbs: d,
      top1Agree: 27,
      positions: 28,
    });
    expect(rep.perPrompt.slice(0, 2).map((p) => [p.maxAbs, p.top1Agree])).toEqual([
      [0, 17],
      [0, 23],
    ]);
    expect(rep.maxAbs).toBe(d);
  });
});

describe("defaultTolerance: the README's bounds", () => {
  const t = (dtype: string, quant: string, kv: string, cpu: boolean) =>
    defaultTolerance({ dtype, quant, kv_cache_dtype: kv }, cpu);
  it("fp32 on the CPU 1e-3; half precision or the GPU 0.05", () => {
    expect(t("fp32", "none", "fp32", true)).toBe(1e-3);
    expect(t("fp32", "none", "fp32", false)).toBe(0.05);
    expect(t("fp16", "none", "fp16", true)).toBe(0.05);
    expect(t("bf16", "none", "bf16", false)).toBe(0.05);
  });
  it("quantised engines by their tests' bounds, whatever the dtype and device", () => {
    for (const [dtype, cpu] of [
      ["fp32", true],
      ["fp16", false],
    ] as const) {
      expect(t(dtype, "int8-wo", dtype, cpu)).toBe(0.1);
      expect(t(dtype, "fp8", dtype, cpu)).toBe(0.5);
      expect(t(dtype, "int4-wo", dtype, cpu)).toBe(1.25);
    }
  });
  it("an fp32 engine with an fp16 / bf16 KV cache gets the half-precision bound (measured 6.6e-3 on tiny-llama bf16)", () => {
    expect(t("fp32", "none", "bf16", true)).toBe(0.05);
    expect(t("fp32", "none", "fp16", true)).toBe(0.05);
    expect(t("fp32", "int8-wo", "bf16", true)).toBe(0.1);
  });
  it("an fp8 KV cache adds 0.2", () => {
    expect(t("fp32", "none", "fp8", true)).toBeCloseTo(0.201, 12);
    expect(t("fp16", "none", "fp8", false)).toBeCloseTo(0.25, 12);
    expect(t("fp16", "fp8", "fp8", false)).toBeCloseTo(0.7, 12);
    expect(t("fp16", "int4-wo", "fp8", false)).toBeCloseTo(1.45, 12);
    // exactly the decimal value tsllm-run prints (0.1 + 0.2 printed as 0.30000000000000004)
    expect(String(t("fp16", "int8-wo", "fp8", false))).toBe("0.3");
    expect(String(t("fp32", "none", "fp8", true))).toBe("0.201");
  });
});
