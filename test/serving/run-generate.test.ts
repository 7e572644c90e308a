// tsllm-run's prompts and id output, in-process (src/cli/run-generate.ts): readPrompts' --input-ids and JSONL
// prompts with every refusal's whole one-line message; generateIds' lines in prompt order written as the tokens
// come (driven by a fake batch manager whose token order the test sets), and on the tiny-llama engine the
// transformers goldens' greedy continuations.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { generateIds, type Prompt, readPrompts } from "../../src/cli/run-generate.ts";
import { readGolden } from "../../src/golden.ts";
import { DatasetError } from "../../src/serving/dataset.ts";
import { openBatchManager } from "../../src/serving/open.ts";
import type {
  BatchManager,
  GenerationRequest,
  RequestHandle,
  RequestResult,
  TokenEvent,
} from "../../src/serving/types.ts";
import { DEVICE_REFUSAL } from "../../src/text/utf8.ts";
import { buildFixture, TINY_LLAMA } from "../fixtures.ts";
import { thrown } from "../thrown.ts";

let tmp: string;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), "tsllm-run-generate-"));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** A JSONL file in the test's folder holding `text`. */
function jsonl(text: string, name = "p.jsonl"): string {
  const f = path.join(tmp, name);
  fs.writeFileSync(f, text);
  return f;
}

describe("readPrompts", () => {
  it("--input-ids (repeated) then the file's lines, blank lines skipped, each with where it came from", () => {
    const f = jsonl(
      '{"input_ids": [1, 2]}\n\n   \n{"input_ids": [3], "output_tokens": 2}\n{"input_ids": [0], "output_tokens": null}\n',
    );
    expect(readPrompts({ inputIds: ["1,2,3", " 4"], inputFile: f, maxNewTokens: 7 })).toEqual<Prompt[]>([
      { ids: [1, 2, 3], maxNewTokens: 7, where: "--input-ids (prompt 1)", newTokensFrom: "--max-new-tokens" },
      { ids: [4], maxNewTokens: 7, where: "--input-ids (prompt 2)", newTokensFrom: "--max-new-tokens" },
      { ids: [1, 2], maxNewTokens: 7, where: `${f}:1`, newTokensFrom: "--max-new-tokens" },
      { ids: [3], maxNewTokens: 2, where: `${f}:4`, newTokensFrom: "output_tokens" },
      // ("output_tokens": null is no output_tokens)
      { ids: [0], maxNewTokens: 7, where: `${f}:5`, newTokensFrom: "--max-new-tokens" },
    ]);
    // A file alone, with CRLF line ends (JSON whitespace) and no newline at the end.
    const crlf = jsonl('{"input_ids": [5]}\r\n{"input_ids": [6, 7], "output_tokens": 1}', "crlf.jsonl");
    expect(readPrompts({ inputFile: crlf, maxNewTokens: 3 })).toEqual<Prompt[]>([
      { ids: [5], maxNewTokens: 3, where: `${crlf}:1`, newTokensFrom: "--max-new-tokens" },
      { ids: [6, 7], maxNewTokens: 1, where: `${crlf}:2`, newTokensFrom: "output_tokens" },
    ]);
  });

  it("--max-new-tokens 0 gives file lines without output_tokens 0 new tokens, as it does --input-ids", () => {
    // Was refused: `"output_tokens" must be an integer >= 1` for a line that has no output_tokens.
    const f = jsonl('{"input_ids": [1, 2]}\n{"input_ids": [3], "output_tokens": 4}\n');
    expect(readPrompts({ inputIds: ["9"], inputFile: f, maxNewTokens: 0 })).toEqual<Prompt[]>([
      { ids: [9], maxNewTokens: 0, where: "--input-ids", newTokensFrom: "--max-new-tokens" },
      { ids: [1, 2], maxNewTokens: 0, where: `${f}:1`, newTokensFrom: "--max-new-tokens" },
      { ids: [3], maxNewTokens: 4, where: `${f}:2`, newTokensFrom: "output_tokens" },
    ]);
  });

  it("refuses a bad --input-ids entry, naming it", () => {
    for (const [s, bad] of [
      ["1,x,3", "x"],
      ["1,,3", ""],
      ["-1", "-1"],
      ["1.5", "1.5"],
      ["", ""],
    ])
      expect(thrown(() => readPrompts({ inputIds: ["5", s], maxNewTokens: 1 }), Error).message).toBe(
        `--input-ids: "${bad}" is not a token id`,
      );
  });

  it("refuses each bad JSONL line with its file and line number", () => {
    const cases: [string, string][] = [
      ["{", "not valid JSON"],
      ['{"input_ids": [1]} x', "not valid JSON"],
      ["null", '"input_ids" must be a non-empty list of token ids'],
      ["5", '"input_ids" must be a non-empty list of token ids'],
      ["[1, 2]", '"input_ids" must be a non-empty list of token ids'],
      ["{}", '"input_ids" must be a non-empty list of token ids'],
      ['{"input_ids": []}', '"input_ids" must be a non-empty list of token ids'],
      ['{"input_ids": "1,2"}', '"input_ids" must be a non-empty list of token ids'],
      ['{"input_ids": [1, -1]}', '"input_ids" must be a non-empty list of token ids'],
      ['{"input_ids": [1.5]}', '"input_ids" must be a non-empty list of token ids'],
      ['{"input_ids": ["1"]}', '"input_ids" must be a non-empty list of token ids'],
      ['{"input_ids": [1, null]}', '"input_ids" must be a non-empty list of token ids'],
      ['{"input_ids": [1], "output_tokens": 0}', '"output_tokens" must be an integer >= 1, got 0'],
      ['{"input_ids": [1], "output_tokens": -2}', '"output_tokens" must be an integer >= 1, got -2'],
      ['{"input_ids": [1], "output_tokens": 1.5}', '"output_tokens" must be an integer >= 1, got 1.5'],
      ['{"input_ids": [1], "output_tokens": "3"}', '"output_tokens" must be an integer >= 1, got "3"'],
      ['{"input_ids": [1], "output_tokens": [3]}', '"output_tokens" must be an integer >= 1, got [3]'],
    ];
    for (const [line, msg] of cases) {
      // The bad line is the third: a good line and a blank one come first.
      const f = jsonl(`{"input_ids": [1]}\n\n${line}\n{"input_ids": [2]}\n`);
      // The fields' checks are the dataset reader's (serving/dataset.ts), and throw its error.
      const cls = msg === "not valid JSON" ? Error : DatasetError;
      expect(thrown(() => readPrompts({ inputFile: f, maxNewTokens: 4 }), cls).message, line).toBe(
        `${f}:3: ${msg}`,
      );
    }
  });

  it("refuses a file it cannot read, and a file without prompts, naming it", () => {
    const missing = path.join(tmp, "missing.jsonl");
    expect(thrown(() => readPrompts({ inputFile: missing, maxNewTokens: 1 }), Error).message).toBe(
      `--input-file ${missing}: cannot read (ENOENT)`,
    );
    expect(thrown(() => readPrompts({ inputFile: tmp, maxNewTokens: 1 }), Error).message).toBe(
      `--input-file ${tmp}: cannot read (EISDIR)`,
    );
    // Was "give --input-ids 1,2,3 (repeatable), --input-file FILE or --golden FILE", though a file was given.
    for (const text of ["", "\n  \n\n"]) {
      const f = jsonl(text, "empty.jsonl");
      for (const inputIds of [undefined, ["1"]])
        expect(thrown(() => readPrompts({ inputIds, inputFile: f, maxNewTokens: 1 }), Error).message).toBe(
          `--input-file ${f}: no prompts (expected one JSON object per line: {"input_ids": [...]})`,
        );
    }
  });

  it("refuses a device before reading it (a terminal, /dev/zero: the read never ended)", () => {
    // /dev/null stands in for them: a character device whose read ends, on the old code too ("no prompts").
    expect(thrown(() => readPrompts({ inputFile: "/dev/null", maxNewTokens: 1 }), Error).message).toBe(
      `--input-file /dev/null: ${DEVICE_REFUSAL}`,
    );
  });

  it("refuses no prompts at all", () => {
    for (const o of [{}, { inputIds: [] }, { inputFile: "" }])
      expect(thrown(() => readPrompts({ ...o, maxNewTokens: 1 }), Error).message).toBe(
        "give --input-ids 1,2,3 (repeatable), --input-file FILE or --golden FILE",
      );
  });
});

/**
 * A batch manager whose requests produce the tokens `script` gives them (request index → ids), in the
 * order `order` lists request indices (one token each time an index comes up); each request ends after
 * its last token. Records what was submitted.
 */
function fakeManager(
  script: number[][],
  order: number[],
  maxSeqLen = 64,
  errors: Record<number, string> = {},
) {
  const submitted: GenerationRequest[] = [];
  const queues: { push: (e: TokenEvent | null) => void }[] = [];
  const results: ((r: RequestResult) => void)[] = [];
  const bm = {
    limits: { maxBatchSize: 8, maxNumTokens: 64, maxSeqLen },
    submit(req: GenerationRequest): RequestHandle {
      const i = submitted.length;
      submitted.push(req);
      const buffered: (TokenEvent | null)[] = [];
      let wake: (() => void) | null = null;
      queues.push({
        push(e) {
          buffered.push(e);
          wake?.();
        },
      });
      let resolve!: (r: RequestResult) => void;
      const done = new Promise<RequestResult>((r) => {
        resolve = r;
      });
      results.push(resolve);
      return {
        id: i,
        done,
        cancel() {},
        async *[Symbol.asyncIterator]() {
          for (;;) {
            while (buffered.length === 0) await new Promise<void>((r) => (wake = r));
            const e = buffered.shift();
            if (e === null || e === undefined) return;
            yield e;
          }
        },
      };
    },
  } as unknown as BatchManager;
  /** Plays the script out: one token per tick, in `order`; each request ends after its last one. */
  const play = async (written: string[], snapshots: string[]) => {
    const at = script.map(() => 0);
    // The handles map request index → submitted order (requests with 0 new tokens are not submitted).
    for (const r of order) {
      const ids = script[r];
      const q = submitted.findIndex((s) => s.tag === `p${r}`);
      queues[q].push({ tokenId: ids[at[r]], index: at[r], timeMs: 0 });
      at[r]++;
      if (at[r] === ids.length) {
        queues[q].push(null);
        results[q](
          errors[r] !== undefined
            ? ({
                finishReason: "error",
                error: errors[r] ? new Error(errors[r]) : undefined,
                outputIds: ids,
              } as unknown as RequestResult)
            : ({ finishReason: "length", outputIds: ids } as unknown as RequestResult),
        );
      }
      for (let k = 0; k < 5; k++) await new Promise((r) => setImmediate(r));
      snapshots.push(written.join(""));
    }
  };
  return { bm, submitted, play };
}

const SAMPLING = { temperature: 0, topK: 0, topP: 1, seed: 0 };

describe("generateIds", () => {
  it("writes one line per prompt in prompt order as tokens come: the earliest unfinished prompt streams", async () => {
    // Prompt 0: 1,2; prompt 1: 10 new tokens 0 (an empty line, not submitted); prompt 2: 30,31,32; prompt 3: 40.
    const script = [[1, 2], [], [30, 31, 32], [40]];
    const prompts: Prompt[] = script.map((s, i) => ({
      ids: [i + 1, 7],
      maxNewTokens: s.length,
      where: `p${i}`,
      newTokensFrom: "--max-new-tokens",
    }));
    const { bm, submitted, play } = fakeManager(script, [2, 3, 0, 2, 0, 2]);
    const written: string[] = [];
    const snapshots: string[] = [];
    const out = { write: (s: string) => written.push(s) };
    const run = generateIds(bm, prompts, { sampling: SAMPLING, ignoreEos: true, stopTokenIds: [5, 6], out });
    await play(written, snapshots);
    expect(await run).toEqual([[1, 2], [], [30, 31, 32], [40]]);
    // Tokens of prompts 2 and 3 wait for prompt 0's line; prompt 0's first token flushes nothing else; when it
    // ends, the empty line of prompt 1 and prompt 2's first two tokens follow; prompt 3 (finished) after prompt 2.
    expect(snapshots).toEqual(["", "", "1", "1", "1,2\n\n30,31", "1,2\n\n30,31,32\n40\n"]);
    expect(written.join("")).toBe("1,2\n\n30,31,32\n40\n");
    const req = (tag: string, promptIds: number[], maxNewTokens: number) => ({
      promptIds,
      maxNewTokens,
      sampling: SAMPLING,
      ignoreEos: true,
      stopTokenIds: [5, 6],
      tag,
    });
    expect(submitted).toEqual([req("p0", [1, 7], 2), req("p2", [3, 7], 3), req("p3", [4, 7], 1)]);
  });

  it("a first prompt of 0 new tokens and a last one: empty lines where they are", async () => {
    const script = [[], [8], []];
    const prompts: Prompt[] = script.map((s, i) => ({
      ids: [1],
      maxNewTokens: s.length,
      where: `p${i}`,
      newTokensFrom: "--max-new-tokens",
    }));
    const { bm, play } = fakeManager(script, [1]);
    const written: string[] = [];
    const run = generateIds(bm, prompts, {
      sampling: SAMPLING,
      ignoreEos: false,
      stopTokenIds: [],
      out: { write: (s: string) => written.push(s) },
    });
    await play(written, []);
    expect(await run).toEqual([[], [8], []]);
    expect(written.join("")).toBe("\n8\n\n");
  });

  it("refuses a prompt + max_new_tokens over the manager's max_seq_len before submitting any", async () => {
    const { bm, submitted } = fakeManager([[1], [1]], [], 10);
    const ok: Prompt = { ids: [1, 2], maxNewTokens: 8, where: "first" }; // 10 = max_seq_len: fits
    const over: Prompt = { ids: [1, 2, 3], maxNewTokens: 8, where: "f.jsonl:2" };
    const out = { write: () => {} };
    const o = { sampling: SAMPLING, ignoreEos: false, stopTokenIds: [], out };
    await expect(generateIds(bm, [ok, over], o)).rejects.toThrow(
      /^f\.jsonl:2: prompt of 3 tokens \+ max_new_tokens 8 = 11 exceeds max_seq_len 10$/,
    );
    expect(submitted).toEqual([]);
  });

  it("a request that finishes with an error is an error naming its prompt", async () => {
    const script = [[1], [2, 3]];
    const prompts: Prompt[] = script.map((s, i) => ({
      ids: [1],
      maxNewTokens: s.length,
      where: `p${i}`,
      newTokensFrom: "--max-new-tokens",
    }));
    const { bm, play } = fakeManager(script, [0, 1, 1], 64, { 1: "step failed: out of memory" });
    const run = generateIds(bm, prompts, {
      sampling: SAMPLING,
      ignoreEos: false,
      stopTokenIds: [],
      out: { write: () => {} },
    });
    const caught = run.catch((e: Error) => e);
    await play([], []);
    const e = await caught;
    expect(e).toBeInstanceOf(Error);
    expect((e as Error).message).toBe("p1: step failed: out of memory");
  });

  it('an error result without an error says the generation failed (was "p0: undefined")', async () => {
    const { bm, play } = fakeManager([[1]], [0], 64, { 0: "" });
    const run = generateIds(bm, [{ ids: [1], maxNewTokens: 1, where: "p0" }], {
      sampling: SAMPLING,
      ignoreEos: false,
      stopTokenIds: [],
      out: { write: () => {} },
    });
    const caught = run.catch((e: Error) => e);
    await play([], []);
    expect(((await caught) as Error).message).toBe("p0: generation failed");
  });
});

describe("generateIds on tiny-llama (CPU reference executor)", () => {
  let dir: string;
  beforeAll(async () => {
    dir = await buildFixture("llama", {
      maxSeqLen: 64,
      maxNumTokens: 64,
      maxBatchSize: 4,
      tokensPerBlock: 8,
    });
  });
  afterAll(() => {
    if (dir) fs.rmSync(path.dirname(dir), { recursive: true, force: true });
  });

  it("greedy: each prompt's line is the transformers golden continuation", async () => {
    const golden = readGolden(path.join(TINY_LLAMA, "golden.safetensors"));
    const bm = await openBatchManager(dir, { device: "cpu" });
    try {
      const prompts: Prompt[] = golden.prompts.map((p, i) => ({
        ids: p.inputIds.slice(0, p.promptLen),
        maxNewTokens: p.inputIds.length - p.promptLen,
        where: `golden ${i}`,
      }));
      const written: string[] = [];
      const got = await generateIds(bm, prompts, {
        sampling: SAMPLING,
        ignoreEos: true,
        stopTokenIds: [],
        out: { write: (s: string) => written.push(s) },
      });
      const want = golden.prompts.map((p) => p.inputIds.slice(p.promptLen));
      expect(got).toEqual(want);
      expect(written.join("")).toBe(want.map((w) => `${w.join(",")}\n`).join(""));
    } finally {
      await bm.shutdown();
    }
  });
});
