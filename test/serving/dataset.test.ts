// The trtllm-bench dataset format (src/serving/dataset.ts) without an engine: TensorRT-LLM
// prepare_dataset.py's lines and the "prompt" form through a toy encoder, every malformed line refused with
// one line naming it, and token-norm-dist's lengths, ids and seed.
import { execFileSync, spawn } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import {
  DatasetError,
  datasetText,
  type Encode,
  formatDatasetLine,
  inputIdsOf,
  isDatasetText,
  parseDatasetLine,
  readDataset,
  type TokenNormDist,
  tokenNormDist,
} from "../../src/serving/dataset.ts";
import { DEVICE_REFUSAL } from "../../src/text/utf8.ts";
import { lowbias32 } from "../../src/weights/random.ts";
import { tmpDir } from "../fixtures.ts";

/** A toy tokenizer: one id per character (its code point). */
const chars: Encode = (t) => [...t].map((c) => c.codePointAt(0)!);

/** parseDatasetLine's error for `line`, checked to be a DatasetError. */
function refusal(line: string, encode?: Encode): string {
  try {
    parseDatasetLine(line, "d.jsonl:7", encode);
  } catch (e) {
    expect(e).toBeInstanceOf(DatasetError);
    expect((e as Error).name).toBe("DatasetError");
    return (e as Error).message;
  }
  throw new Error(`accepted: ${line}`);
}

describe("parseDatasetLine", () => {
  it("takes prepare_dataset.py's line as it is, extra fields ignored", () => {
    const line = '{"task_id": 0, "input_ids": [128000, 2028, 374], "output_tokens": 128}';
    expect(parseDatasetLine(line, "x")).toEqual({
      taskId: 0,
      inputIds: [128000, 2028, 374],
      outputTokens: 128,
    });
    const lora = '{"task_id": 3, "input_ids": [0], "output_tokens": 1, "lora_request": {"lora_int_id": 1}}';
    expect(parseDatasetLine(lora, "x")).toEqual({ taskId: 3, inputIds: [0], outputTokens: 1 });
  });

  it("a string task_id is kept; a missing or other one becomes the line's place", () => {
    expect(parseDatasetLine('{"task_id": "a-1", "input_ids": [1], "output_tokens": 2}', "x").taskId).toBe(
      "a-1",
    );
    expect(parseDatasetLine('{"input_ids": [1], "output_tokens": 2}', "d:4").taskId).toBe("d:4");
    expect(parseDatasetLine('{"task_id": null, "input_ids": [1], "output_tokens": 2}', "d:5").taskId).toBe(
      "d:5",
    );
    expect(parseDatasetLine('{"task_id": [1], "input_ids": [1], "output_tokens": 2}', "d:6").taskId).toBe(
      "d:6",
    );
  });

  it("a prompt goes through the encoder; input_ids win when both are given", () => {
    expect(parseDatasetLine('{"task_id": 1, "prompt": "Hi!", "output_tokens": 4}', "x", chars)).toEqual({
      taskId: 1,
      inputIds: [72, 105, 33],
      outputTokens: 4,
    });
    const both = '{"task_id": 2, "prompt": "Hi", "input_ids": [9], "output_tokens": 1}';
    const never: Encode = () => {
      throw new Error("encoder called");
    };
    expect(parseDatasetLine(both, "x", never).inputIds).toEqual([9]);
  });

  // trtllm-bench reads data.get("input_ids", data.get("logits")): the older prepare_dataset.py lines, refused here.
  it('reads "logits" as the ids where "input_ids" is absent, as trtllm-bench does; input_ids win', () => {
    expect(parseDatasetLine('{"task_id": 4, "logits": [7, 0, 3], "output_tokens": 2}', "x")).toEqual({
      taskId: 4,
      inputIds: [7, 0, 3],
      outputTokens: 2,
    });
    const never: Encode = () => {
      throw new Error("encoder called");
    };
    const both = '{"prompt": "Hi", "logits": [5], "output_tokens": 1}';
    expect(parseDatasetLine(both, "x", never).inputIds).toEqual([5]);
    expect(parseDatasetLine('{"input_ids": [9], "logits": [5], "output_tokens": 1}', "x").inputIds).toEqual([
      9,
    ]);
    expect(refusal('{"logits": [1.5], "output_tokens": 1}')).toBe(
      'd.jsonl:7: "logits" must be a non-empty list of token ids',
    );
  });

  it("refuses a line that is not a JSON object", () => {
    expect(refusal("{task_id: 0}")).toMatch(/^d\.jsonl:7: not valid JSON \(.+\)$/);
    // (its message named an invisible character)
    expect(refusal('\ufeff{"task_id": 0, "input_ids": [1], "output_tokens": 1}')).toBe(
      "d.jsonl:7: starts with a UTF-8 byte order mark, which JSON does not allow: save it without one",
    );
    for (const line of ["[1, 2]", "null", '"text"', "3"])
      expect(refusal(line), line).toBe("d.jsonl:7: not a JSON object");
  });

  it("refuses output_tokens that is not an integer >= 1, quoting it", () => {
    const msg = (got: string) => `d.jsonl:7: "output_tokens" must be an integer >= 1, got ${got}`;
    expect(refusal('{"input_ids": [1]}')).toBe(msg("undefined"));
    expect(refusal('{"input_ids": [1], "output_tokens": 0}')).toBe(msg("0"));
    expect(refusal('{"input_ids": [1], "output_tokens": -2}')).toBe(msg("-2"));
    expect(refusal('{"input_ids": [1], "output_tokens": 1.5}')).toBe(msg("1.5"));
    expect(refusal('{"input_ids": [1], "output_tokens": "3"}')).toBe(msg('"3"'));
    // JSON reads 1e400 as Infinity, which was quoted as "null".
    expect(refusal('{"input_ids": [1], "output_tokens": 1e400}')).toBe(msg("Infinity"));
    expect(refusal('{"input_ids": [1], "output_tokens": null}')).toBe(msg("null"));
    expect(parseDatasetLine('{"input_ids": [1], "output_tokens": 1}', "x").outputTokens).toBe(1);
  });

  it("refuses input_ids that are not a non-empty list of ids >= 0", () => {
    for (const ids of ["null", '"1 2"', "{}", "[]", "[1.5]", "[-1]", '["1"]', "[1, null]", "[2, -1]"])
      expect(refusal(`{"input_ids": ${ids}, "output_tokens": 1}`), ids).toBe(
        'd.jsonl:7: "input_ids" must be a non-empty list of token ids',
      );
    expect(parseDatasetLine('{"input_ids": [0, 5], "output_tokens": 1}', "x").inputIds).toEqual([0, 5]);
  });

  it("refuses a prompt without a tokenizer, one that encodes to nothing, and a line with neither", () => {
    expect(refusal('{"prompt": "Hi", "output_tokens": 1}')).toBe(
      'd.jsonl:7: a "prompt" line needs a tokenizer; this engine has none (give "input_ids")',
    );
    expect(refusal('{"prompt": "", "output_tokens": 1}', chars)).toBe(
      'd.jsonl:7: "prompt" encodes to no tokens',
    );
    for (const line of ['{"output_tokens": 1}', '{"prompt": 5, "output_tokens": 1}'])
      expect(refusal(line, chars), line).toBe('d.jsonl:7: needs "input_ids" (token ids) or "prompt" (text)');
  });
});

describe("inputIdsOf, isDatasetText", () => {
  it('inputIdsOf names "input_ids" unless given another field (tsllm-run --input-file lines take the default)', () => {
    expect(() => inputIdsOf([], "f:1")).toThrow(
      new DatasetError('f:1: "input_ids" must be a non-empty list of token ids'),
    );
    expect(() => inputIdsOf([1.5], "f:2", "logits")).toThrow(
      new DatasetError('f:2: "logits" must be a non-empty list of token ids'),
    );
    expect(inputIdsOf([0, 3], "f:3")).toEqual([0, 3]);
  });

  it("isDatasetText: a first line that is a JSON object with task_id, input_ids, output_tokens in that order", () => {
    expect(isDatasetText('{"task_id":0,"input_ids":[1],"output_tokens":1}\nanything else')).toBe(true);
    const written = formatDatasetLine({ taskId: "q", inputIds: [5, 6], outputTokens: 2 });
    expect(isDatasetText(`${written}\n`)).toBe(true);
    for (const text of [
      '{"a":1}',
      '{"output_tokens":1,"input_ids":[1],"task_id":0}',
      '{"task_id":0,"input_ids":[1]}',
      "not JSON",
      "",
      "null",
      "3",
      "true",
      "[0,1,2]",
      '"task_id,input_ids,output_tokens"',
    ])
      expect(isDatasetText(text), text).toBe(false);
  });
});

describe("readDataset", () => {
  const dir = tmpDir("tsllm-dataset-");
  const file = (name: string, text: string) => {
    const f = path.join(dir, name);
    fs.writeFileSync(f, text);
    return f;
  };

  it("reads every line in order, skipping blank ones (CRLF too), with the encoder", () => {
    const f = file(
      "a.jsonl",
      '{"task_id": 0, "input_ids": [1, 2], "output_tokens": 3}\r\n\r\n  \n' +
        '{"task_id": 1, "prompt": "ab", "output_tokens": 2}\n',
    );
    expect(readDataset(f, { encode: chars })).toEqual([
      { taskId: 0, inputIds: [1, 2], outputTokens: 3, line: 1 },
      { taskId: 1, inputIds: [97, 98], outputTokens: 2, line: 4 },
    ]);
    expect(() => readDataset(f)).toThrow(`${f}:4: a "prompt" line needs a tokenizer`);
  });

  it("errors name the file and the line, blank lines counted", () => {
    const f = file(
      "b.jsonl",
      '{"input_ids": [1], "output_tokens": 1}\n\n{"input_ids": [], "output_tokens": 1}\n',
    );
    expect(() => readDataset(f)).toThrow(
      new DatasetError(`${f}:3: "input_ids" must be a non-empty list of token ids`),
    );
  });

  it("checks ids against the vocabulary when it is given", () => {
    const f = file(
      "c.jsonl",
      '{"input_ids": [0, 511], "output_tokens": 1}\n{"input_ids": [3, 512, 600], "output_tokens": 1}\n',
    );
    expect(() => readDataset(f, { vocabSize: 512 })).toThrow(
      new DatasetError(`${f}:2: token id 512 outside the engine's vocabulary (0..511)`),
    );
    expect(readDataset(f, { vocabSize: 601 })).toHaveLength(2);
    expect(readDataset(f)).toHaveLength(2);
  });

  // Read as "utf8" the bytes became U+FFFD, and the prompt was encoded as another text than the file holds;
  // trtllm-bench's Python open() refuses the file.
  it("refuses bytes that are not UTF-8, naming their line; UTF-8 prompts read as written", () => {
    const line = (prompt: string) => `{"prompt": "${prompt}", "output_tokens": 1}\n`;
    const f = path.join(dir, "latin1.jsonl");
    fs.writeFileSync(f, Buffer.concat([Buffer.from(line("ok")), Buffer.from(line("caf\xe9"), "latin1")]));
    expect(() => readDataset(f, { encode: chars })).toThrow(new DatasetError(`${f}:2: not UTF-8 text`));
    // A truncated 4-byte character at the very end, no newline after it.
    const g = path.join(dir, "cut.jsonl");
    fs.writeFileSync(
      g,
      Buffer.concat([Buffer.from(line("ok")), Buffer.from("\n"), Buffer.from("🙂").subarray(0, 3)]),
    );
    expect(() => readDataset(g, { encode: chars })).toThrow(new DatasetError(`${g}:3: not UTF-8 text`));
    fs.writeFileSync(f, line("café 🙂"));
    expect(readDataset(f, { encode: chars })[0].inputIds).toEqual(chars("café 🙂"));
  });

  // Read as one string, a file past V8's longest string (2^29 - 24 characters) was refused with "Cannot create a
  // string longer than 0x1fffffe8 characters", naming no file: prepare-dataset writes such files. The file is 513 MB:
  // skipped where the disk has less than 4 GiB free (the CI machine's once had 287 MB), not to fail for want of room.
  const free = (() => {
    try {
      const s = fs.statfsSync(dir);
      return s.bavail * s.bsize;
    } catch {
      return 0;
    }
  })();
  it.skipIf(free < 4 * 2 ** 30)("reads a file past V8's longest string, line by line", () => {
    const f = path.join(dir, "big.jsonl");
    const fd = fs.openSync(f, "w");
    try {
      fs.writeSync(fd, '{"task_id": 0, "input_ids": [1, 2], "output_tokens": 3}\n');
      const blank = Buffer.alloc(1 << 20, " ");
      blank[blank.length - 1] = 0x0a;
      for (let i = 0; i < 2 ** 29 / blank.length; i++) fs.writeSync(fd, blank);
      fs.writeSync(fd, '{"task_id": 1, "input_ids": [4], "output_tokens": 5}');
      fs.closeSync(fd);
      expect(fs.statSync(f).size).toBeGreaterThan(2 ** 29);
      expect(readDataset(f)).toEqual([
        { taskId: 0, inputIds: [1, 2], outputTokens: 3, line: 1 },
        { taskId: 1, inputIds: [4], outputTokens: 5, line: 2 ** 29 / blank.length + 2 },
      ]);
    } finally {
      fs.rmSync(f, { force: true });
    }
  });

  it("refuses a file it cannot read and one without requests", () => {
    const missing = path.join(dir, "none.jsonl");
    expect(() => readDataset(missing)).toThrow(
      new DatasetError(`${missing}: cannot read the dataset (ENOENT)`),
    );
    expect(() => readDataset(dir)).toThrow(new DatasetError(`${dir}: cannot read the dataset (EISDIR)`));
    for (const text of ["", "\n \n\r\n"]) {
      const f = file("empty.jsonl", text);
      expect(() => readDataset(f)).toThrow(new DatasetError(`${f}: no requests in the dataset`));
    }
  });

  it("refuses a device before reading it (a terminal, /dev/zero: the read never ended); reads a FIFO", () => {
    // /dev/null stands in for them here: a character device whose read ends, on the old code too.
    expect(() => readDataset("/dev/null")).toThrow(new DatasetError(`/dev/null: ${DEVICE_REFUSAL}`));
    const fifo = path.join(dir, "ds.fifo");
    execFileSync("mkfifo", [fifo]);
    const line = '{"task_id":0,"input_ids":[1],"output_tokens":1}';
    const src = file("src.jsonl", `${line}\n`);
    const writer = spawn("sh", ["-c", 'cat "$0" > "$1"', src, fifo]);
    expect(readDataset(fifo).map((e) => e.inputIds)).toEqual([[1]]);
    writer.kill();
  });
});

describe("formatDatasetLine", () => {
  it("writes prepare_dataset.py's three fields, which read back as the entry", () => {
    const e = { taskId: 4, inputIds: [7, 0, 9], outputTokens: 12 };
    expect(formatDatasetLine(e)).toBe('{"task_id":4,"input_ids":[7,0,9],"output_tokens":12}');
    expect(parseDatasetLine(formatDatasetLine(e), "x")).toEqual(e);
    expect(formatDatasetLine({ ...e, taskId: "q" })).toBe(
      '{"task_id":"q","input_ids":[7,0,9],"output_tokens":12}',
    );
  });
});

describe("datasetText", () => {
  // One string of every line failed past V8's longest string (~512 MB) with "Invalid string length": parts.
  it("the lines of formatDatasetLine in order, in parts of at least partChars but the last", () => {
    const entries = tokenNormDist({
      numRequests: 50,
      inputMean: 20,
      inputStdev: 8,
      outputMean: 7,
      outputStdev: 0,
      seed: 1,
      vocabSize: 512,
    });
    const lines = entries.map((e) => `${formatDatasetLine(e)}\n`);
    const parts = datasetText(entries, 300);
    expect(parts.join("")).toBe(lines.join(""));
    expect(parts.length).toBeGreaterThan(5);
    for (const p of parts.slice(0, -1)) expect(p.length).toBeGreaterThanOrEqual(300);
    // Each part ends a line; a part is a line longer than partChars at most.
    for (const p of parts)
      expect(p.endsWith("\n") && p.length < 300 + Math.max(...lines.map((l) => l.length))).toBe(true);
    expect(datasetText(entries)).toEqual([lines.join("")]);
    expect(datasetText([])).toEqual([]);
  });

  it("a part ends at the first line that brings it to partChars: a part of exactly partChars is not grown", () => {
    // {"task_id":N,"input_ids":[1],"output_tokens":1} + "\n": 13 + 16 + 18 + 1 = 48 characters, counted by hand.
    const three = [0, 1, 2].map((taskId) => ({ taskId, inputIds: [1], outputTokens: 1 }));
    const line = (n: number) => `{"task_id":${n},"input_ids":[1],"output_tokens":1}\n`;
    expect(line(0)).toHaveLength(48);
    expect(datasetText(three, 48)).toEqual([line(0), line(1), line(2)]);
    expect(datasetText(three, 47)).toEqual([line(0), line(1), line(2)]);
    expect(datasetText(three, 49)).toEqual([line(0) + line(1), line(2)]);
    expect(datasetText(three, 96)).toEqual([line(0) + line(1), line(2)]);
    expect(datasetText(three, 97)).toEqual([line(0) + line(1) + line(2)]);
  });
});

describe("tokenNormDist", () => {
  const base: TokenNormDist = {
    numRequests: 4,
    inputMean: 12,
    inputStdev: 0,
    outputMean: 7,
    outputStdev: 0,
    seed: 4,
    vocabSize: 512,
  };
  /** The k-th uniform (k from 1) of a seed's stream, as the comment of `uniforms` defines it. */
  const uniform = (seed: number, k: number) =>
    (lowbias32((lowbias32(seed) ^ Math.imul(k, 0x9e3779b9)) >>> 0) + 0.5) / 2 ** 32;

  it("stdev 0: every request has the means rounded up (at least 1), task ids from 0", () => {
    const d = tokenNormDist(base);
    expect(d.map((e) => e.taskId)).toEqual([0, 1, 2, 3]);
    expect(d.map((e) => [e.inputIds.length, e.outputTokens])).toEqual([
      [12, 7],
      [12, 7],
      [12, 7],
      [12, 7],
    ]);
    const r = tokenNormDist({ ...base, numRequests: 1, inputMean: 2.5, outputMean: 0.4 })[0];
    expect([r.inputIds.length, r.outputTokens]).toEqual([3, 1]);
    const up = tokenNormDist({ ...base, numRequests: 1, inputMean: 2.2, outputMean: -3 })[0];
    expect([up.inputIds.length, up.outputTokens]).toEqual([3, 1]);
    expect(tokenNormDist({ ...base, numRequests: 0 })).toEqual([]);
  });

  it("stdev 0: the ids are the seed's uniform stream scaled to the vocabulary", () => {
    // At a vocabulary of 2^32 each id is the hash itself (u · 2^32 = hash + 0.5).
    for (const vocabSize of [512, 2 ** 32]) {
      const ids = tokenNormDist({ ...base, numRequests: 2, inputMean: 3, vocabSize }).flatMap(
        (e) => e.inputIds,
      );
      expect(ids).toEqual([1, 2, 3, 4, 5, 6].map((k) => Math.floor(uniform(4, k) * vocabSize)));
    }
  });

  it("lengths by Box-Muller over the same stream: the radius from the first uniform, the angle from the second", () => {
    const [u1, u2, u3, u4] = [1, 2, 3, 4].map((k) => uniform(9, k));
    const z = (a: number, b: number) => Math.sqrt(-2 * Math.log(a)) * Math.cos(2 * Math.PI * b);
    const e = tokenNormDist({
      ...base,
      numRequests: 1,
      inputMean: 100,
      inputStdev: 30,
      outputMean: 50,
      outputStdev: 10,
      seed: 9,
    })[0];
    expect(e.inputIds.length).toBe(Math.max(1, Math.ceil(100 + 30 * z(u1, u2))));
    expect(e.outputTokens).toBe(Math.max(1, Math.ceil(50 + 10 * z(u3, u4))));
    expect(e.inputIds.length).not.toBe(Math.max(1, Math.ceil(100 - 30 * z(u1, u2))));
  });

  it("lengths are rounded up and clamped to >= 1, as TensorRT-LLM's get_norm_dist_lengths (max(1, ceil(x)))", () => {
    // Seed 3, 40 requests: each request draws 4 uniforms for its lengths, then inputLen for its ids.
    const o = {
      ...base,
      numRequests: 40,
      inputMean: 6,
      inputStdev: 4,
      outputMean: 3,
      outputStdev: 2,
      seed: 3,
    };
    let k = 0;
    const next = () => uniform(3, ++k);
    const draw = (mean: number, stdev: number) => {
      const z = Math.sqrt(-2 * Math.log(next())) * Math.cos(2 * Math.PI * next());
      return mean + stdev * z;
    };
    const want: number[][] = [];
    const raw: number[] = [];
    for (let i = 0; i < o.numRequests; i++) {
      const x = draw(6, 4);
      const y = draw(3, 2);
      raw.push(x, y);
      want.push([Math.max(1, Math.ceil(x)), Math.max(1, Math.ceil(y))]);
      k += want[i][0]; // the ids' uniforms
    }
    const got = tokenNormDist(o).map((e) => [e.inputIds.length, e.outputTokens]);
    expect(got).toEqual(want);
    // The draws cover what tells ceil from round (a fraction below .5) and the clamp (a draw below 1).
    expect(raw.some((x) => x > 1 && x - Math.floor(x) < 0.5)).toBe(true);
    expect(raw.some((x) => x < 0)).toBe(true);
  });

  it("a seed repeats its dataset; another seed gives another", () => {
    const o = { ...base, numRequests: 20, inputStdev: 5, outputStdev: 3 };
    expect(tokenNormDist(o)).toEqual(tokenNormDist(o));
    expect(tokenNormDist({ ...o, seed: 5 })).not.toEqual(tokenNormDist(o));
  });

  it("lengths have the asked mean and stdev and are never below 1", () => {
    const n = 4000;
    const d = tokenNormDist({
      ...base,
      numRequests: n,
      inputMean: 100,
      inputStdev: 10,
      outputMean: 50,
      outputStdev: 5,
      vocabSize: 2,
    });
    const stats = (xs: number[]) => {
      const m = xs.reduce((a, b) => a + b, 0) / xs.length;
      return [m, Math.sqrt(xs.reduce((a, b) => a + (b - m) ** 2, 0) / (xs.length - 1))];
    };
    // Standard errors at n 4000: 0.16 and 0.11 for N(100, 10), half that for N(50, 5); bounds are 5-6 of them.
    const [im, is] = stats(d.map((e) => e.inputIds.length));
    // Rounding up adds half a token to the mean, as in trtllm-bench's datasets.
    expect(Math.abs(im - 100.5)).toBeLessThan(1);
    expect(Math.abs(is - 10)).toBeLessThan(0.6);
    const [om, os_] = stats(d.map((e) => e.outputTokens));
    expect(Math.abs(om - 50.5)).toBeLessThan(0.5);
    expect(Math.abs(os_ - 5)).toBeLessThan(0.3);
    const low = tokenNormDist({
      ...base,
      numRequests: 200,
      inputMean: 0,
      inputStdev: 1,
      outputMean: 0,
      outputStdev: 1,
    });
    expect(Math.min(...low.map((e) => e.inputIds.length))).toBe(1);
    expect(Math.min(...low.map((e) => e.outputTokens))).toBe(1);
    expect(low.every((e) => Number.isInteger(e.inputIds.length) && Number.isInteger(e.outputTokens))).toBe(
      true,
    );
  });

  it("ids are uniform over the vocabulary and stay inside it", () => {
    const ids = tokenNormDist({ ...base, numRequests: 300, inputMean: 40, vocabSize: 3 }).flatMap(
      (e) => e.inputIds,
    );
    expect(ids).toHaveLength(12_000);
    const count = [0, 1, 2].map((v) => ids.filter((t) => t === v).length);
    expect(count.reduce((a, b) => a + b)).toBe(12_000); // nothing outside 0..2
    // 4,000 expected each, standard deviation 52: within 6 of them.
    for (const c of count) expect(Math.abs(c - 4000)).toBeLessThan(300);
  });
});
