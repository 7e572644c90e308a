// tsllm-run in-process (src/cli/run.ts tsllmRun, with stdout and stderr captured): generation from --input-ids
// and a JSONL file equal to the transformers goldens, --stop-token-ids, eos and --ignore-eos, sampling flags,
// --verbose, --golden; and every refusal of bad input as one line before any work: the refusals run on a copy
// of the engine with one weight byte changed, which fails its content hash if loaded, so a refusal that came
// after loading would read as that hash error instead.
// (test/serving/run-cli.test.ts runs the same binary as a child process; Stryker's coverage does not reach that.)
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from "vitest";
import { openEngine } from "../../src/engine/reader.ts";
import { LimitError } from "../../src/executor/types.ts";
import { readGolden } from "../../src/golden.ts";
import { TokenizerError } from "../../src/text/tokenizer.ts";
import { capture } from "../cli-main-helpers.ts";
import { buildFixture, corruptLastWeightByte, TINY_LLAMA } from "../fixtures.ts";
import { thrown } from "../thrown.ts";

const GOLDEN = path.join(TINY_LLAMA, "golden.safetensors");
const golden = readGolden(GOLDEN);
const prompt = (i: number) => golden.prompts[i].inputIds.slice(0, golden.prompts[i].promptLen);
const cont = (i: number) => golden.prompts[i].inputIds.slice(golden.prompts[i].promptLen);
const EOS = [508, 511];

let tmp: string;
let dir: string;
let corrupt: string;
const folders: string[] = [];
let tsllmRun: (argv: readonly string[]) => Promise<void>;
let imported: { stderr: string; exitCode: typeof process.exitCode; missing: string };

beforeAll(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), "tsllm-run-main-"));
  const o = { maxSeqLen: 64, maxNumTokens: 64, maxBatchSize: 4, tokensPerBlock: 8 };
  dir = await buildFixture("llama", o);
  corrupt = await buildFixture("llama", o);
  folders.push(tmp, path.dirname(dir), path.dirname(corrupt));
  corruptLastWeightByte(corrupt, openEngine(corrupt).config.ranks[0].file);
  // Importing the module runs tsllm-run on process.argv once: let it refuse a missing engine in its folder.
  const argv = process.argv;
  const missing = path.join(tmp, "missing");
  process.argv = [process.execPath, "tsllm-run", missing];
  const c = capture();
  try {
    ({ tsllmRun } = await import("../../src/cli/run.ts"));
  } finally {
    c.restore();
    process.argv = argv;
  }
  // Checked in a test below: a failing hook would skip the tests, which Stryker reads as a surviving mutant.
  imported = { stderr: c.io.stderr, exitCode: process.exitCode, missing };
  process.exitCode = undefined;
});
afterAll(() => {
  for (const f of folders) fs.rmSync(f, { recursive: true, force: true });
});
afterEach(() => {
  vi.restoreAllMocks();
});

/** tsllm-run ENGINE --device cpu ARGS: its stdout and stderr. */
async function run(args: string[], engine = dir) {
  const c = capture();
  try {
    await tsllmRun([process.execPath, "tsllm-run", engine, "--device", "cpu", ...args]);
  } finally {
    c.restore();
  }
  return c.io;
}

/** The one-line error tsllm-run refuses ARGS with on the corrupt engine, having written nothing to stdout. */
async function refused(args: string[], cls: new (m: string) => Error = Error): Promise<string> {
  const c = capture();
  const e = await tsllmRun([process.execPath, "tsllm-run", corrupt, "--device", "cpu", ...args]).then(
    () => null,
    (e: unknown) => e,
  );
  c.restore();
  expect(c.io.stdout, args.join(" ")).toBe("");
  return thrown(() => {
    if (e) throw e;
  }, cls).message;
}

const lines = (...ids: number[][]) => ids.map((l) => `${l.join(",")}\n`).join("");

describe("tsllm-run generation (in-process)", () => {
  it("the module runs tsllm-run on process.argv: a missing engine is one error line and exit code 1", () => {
    expect(imported.stderr).toBe(`error: ${imported.missing}: not an engine directory (no config.json)\n`);
    expect(imported.exitCode).toBe(1);
  });

  it("--input-ids (repeated) and a JSONL file: one line each, in order, each the golden continuation", async () => {
    const f = path.join(tmp, "prompts.jsonl");
    fs.writeFileSync(
      f,
      `${JSON.stringify({ input_ids: prompt(2) })}\n\n${JSON.stringify({ input_ids: prompt(0), output_tokens: 3 })}\n`,
    );
    const ids = (i: number) => prompt(i).join(",");
    const r = await run([
      "--input-ids",
      ids(0),
      "--input-ids",
      ids(1),
      "--input-file",
      f,
      "--max-new-tokens",
      "12",
    ]);
    // --ignore-eos not needed: the golden continuations hold no eos id.
    expect(golden.prompts.flatMap((p) => p.inputIds).filter((t) => EOS.includes(t))).toEqual([]);
    expect(r.stdout).toBe(lines(cont(0), cont(1), cont(2), cont(0).slice(0, 3)));
    expect(r.stderr).toBe("");
  });

  it("--max-new-tokens 0: an empty line per prompt, from --input-ids and from a file line without output_tokens", async () => {
    const f = path.join(tmp, "zero.jsonl");
    fs.writeFileSync(f, `${JSON.stringify({ input_ids: prompt(1) })}\n`);
    const r = await run(["--input-ids", prompt(0).join(","), "--input-file", f, "--max-new-tokens", "0"]);
    expect(r.stdout).toBe("\n\n");
  });

  it("stops at the engine's eos ids unless --ignore-eos; --stop-token-ids ends at the first of them", async () => {
    // Greedy from 0,3,0 reaches an eos id within 40 tokens (test/serving/run-cli.test.ts).
    const free = (await run(["--input-ids", "0,3,0", "--max-new-tokens", "40", "--ignore-eos"])).stdout;
    const all = free.trim().split(",").map(Number);
    expect(all.length).toBe(40);
    const k = all.findIndex((t) => EOS.includes(t));
    expect(k).toBeGreaterThanOrEqual(0);
    expect(k).toBeLessThan(39);
    expect((await run(["--input-ids", "0,3,0", "--max-new-tokens", "40"])).stdout).toBe(
      lines(all.slice(0, k + 1)),
    );
    // A stop id from the golden continuation (and one that never comes): the line ends with its first occurrence.
    const c = cont(1);
    const stop = c[4];
    const r = await run([
      "--input-ids",
      prompt(1).join(","),
      "--max-new-tokens",
      "12",
      "--stop-token-ids",
      `499,${stop}`,
    ]);
    expect(r.stdout).toBe(lines(c.slice(0, c.indexOf(stop) + 1)));
    expect(c.indexOf(stop)).toBeLessThan(11);
  });

  it("sampling flags reach the sampler: top-k 1 and a tiny top-p are greedy at temperature 1; the seed decides", async () => {
    const p = ["--input-ids", prompt(0).join(","), "--max-new-tokens", "12"];
    expect((await run([...p, "--temperature", "1", "--top-k", "1", "--seed", "3"])).stdout).toBe(
      lines(cont(0)),
    );
    expect((await run([...p, "--temperature", "1", "--top-p", "1e-6", "--seed", "3"])).stdout).toBe(
      lines(cont(0)),
    );
    const s1 = (await run([...p, "--temperature", "2", "--seed", "1"])).stdout;
    expect((await run([...p, "--temperature", "2", "--seed", "1"])).stdout).toBe(s1);
    const s2 = (await run([...p, "--temperature", "2", "--seed", "2"])).stdout;
    expect(s1).not.toBe(lines(cont(0)));
    expect(s2).not.toBe(s1);
    expect(s1.trim().split(",")).toHaveLength(12);
  });

  it("--verbose: the load line (hash checked, or not with --no-verify) and generation progress on stderr", async () => {
    const env = process.env.TSLLM_PROGRESS_INTERVAL;
    process.env.TSLLM_PROGRESS_INTERVAL = "0";
    try {
      const p = ["--input-ids", prompt(0).join(","), "--max-new-tokens", "12"];
      const v = await run([...p, "--verbose"]);
      expect(v.stdout).toBe(lines(cont(0)));
      expect(v.stderr).toMatch(
        new RegExp(
          `^loaded ${dir.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}: [\\d.]+ [KM]i?B in [\\d.]+ s, [\\d.]+ GB/s, content hash checked in the same pass$`,
          "m",
        ),
      );
      // The load line's time and rate: a tiny engine loads in well under a minute at a rate above 5 MB/s.
      const m = / in ([\d.]+) s, ([\d.]+) GB\/s, content hash/.exec(v.stderr);
      expect(Number(m?.[1])).toBeLessThan(60);
      expect(Number(m?.[2])).toBeGreaterThan(0);
      expect(Number(m?.[2])).toBeLessThan(1000);
      // Load progress in MiB of the rank file (1 MiB = 1048576 bytes).
      const mib = (openEngine(dir).config.ranks[0].bytes / 1048576).toFixed(2);
      expect(v.stderr).toMatch(new RegExp(`^load: ${mib} MiB in [\\d.]+ s, [\\d.]+ GB/s$`, "m"));
      // 5 prompt tokens + 11 forwards for 12 new tokens (the last sampled token needs no forward).
      expect(v.stderr).toMatch(/^generate: \d+\/16 \(\d+%\)/m);
      expect(v.stderr).toMatch(/^generate: 16 in [\d.]+ s, [\d.]+ tok\/s$/m);
      // Nothing else: no load phases (cuda only), no kernel report (cuda only).
      expect(v.stderr.split("\n").filter((l) => l && !/^(load|loaded|generate)[: ]/.test(l))).toEqual([]);
      // The corrupt engine loads with --no-verify (and says the hash was not checked), not without.
      const nv = await run([...p, "--verbose", "--no-verify"], corrupt);
      expect(nv.stderr).toMatch(/content hash not checked \(--no-verify\)$/m);
      expect(nv.stdout.trim().split(",")).toHaveLength(12);
      await expect(run(p, corrupt)).rejects.toThrow(/hash/);
      // Without --verbose a small engine prints nothing on stderr.
      expect((await run(p)).stderr).toBe("");
    } finally {
      if (env === undefined) delete process.env.TSLLM_PROGRESS_INTERVAL;
      else process.env.TSLLM_PROGRESS_INTERVAL = env;
    }
  });

  it("--golden: a line per prompt and the overall max |Δlogit|; over --tolerance is an error", async () => {
    const r = await run(["--golden", GOLDEN, "--verbose"]);
    // --verbose on the CPU: the load progress and the load line, nothing else (no phases, no kernel report).
    expect(r.stderr.split("\n").filter((l) => l && !/^(load|loaded) /.test(l) && !/^load: /.test(l))).toEqual(
      [],
    );
    expect(r.stderr).toMatch(/^loaded .* content hash checked in the same pass$/m);
    const out = r.stdout.split("\n");
    expect(out).toHaveLength(golden.prompts.length + 2);
    golden.prompts.forEach((p, i) =>
      expect(out[i]).toMatch(
        new RegExp(
          `^prompt ${i}: max \\|Δlogit\\| \\d\\.\\d{3}e-\\d+ \\(prefill \\d\\.\\d{3}e-\\d+, decode \\d\\.\\d{3}e-\\d+\\), top-1 agreement ${p.inputIds.length}/${p.inputIds.length}$`,
        ),
      ),
    );
    // fp32 on the CPU: within the default 1e-3 (measured about 3e-6).
    const m = /^overall: max \|Δlogit\| (\S+) \(tolerance 0\.001\)$/.exec(out[golden.prompts.length]);
    expect(m).not.toBeNull();
    const maxAbs = Number(m?.[1]);
    expect(maxAbs).toBeGreaterThan(0);
    expect(maxAbs).toBeLessThan(1e-5);
    const c = capture();
    const e = await tsllmRun([
      process.execPath,
      "tsllm-run",
      dir,
      "--device",
      "cpu",
      "--golden",
      GOLDEN,
      "--tolerance",
      "1e-9",
    ]).then(
      () => null,
      (e: unknown) => e,
    );
    c.restore();
    expect(c.io.stdout).toMatch(/^overall: .* \(tolerance 1e-9\)$/m);
    expect(
      thrown(() => {
        if (e) throw e;
      }, Error).message,
    ).toMatch(/^max \|Δlogit\| \d\.\d{3}e-\d+ exceeds tolerance 1e-9$/);
  });
});

describe("tsllm-run text mode (in-process)", () => {
  const tokGolden = JSON.parse(fs.readFileSync(path.join(TINY_LLAMA, "tokenizer-golden.json"), "utf8")) as {
    encode: { text: string; ids: number[] }[];
    chat: { messages: unknown[]; ids: number[] }[];
  };
  const json = (s: string) =>
    JSON.parse(s) as {
      prompt_ids: number[];
      ids: number[];
      text: string;
      finish_reason: string;
      stop_string?: string;
    };

  it("a text prompt (argument or --prompt) and --chat: transformers' prompt ids, the tokens --input-ids gives them", async () => {
    const enc = tokGolden.encode[0];
    const byIds = (await run(["--input-ids", enc.ids.join(","), "--max-new-tokens", "8", "--ignore-eos"]))
      .stdout;
    for (const how of [[enc.text], ["--prompt", enc.text]]) {
      const r = json((await run([...how, "--json", "--max-new-tokens", "8", "--ignore-eos"])).stdout);
      expect(r.prompt_ids).toEqual(enc.ids);
      expect(r.ids).toEqual(byIds.trim().split(",").map(Number));
      expect(r.finish_reason).toBe("length");
    }
    // Without --json: the text, then a newline.
    const plain = await run([enc.text, "--max-new-tokens", "8", "--ignore-eos"]);
    expect(plain.stdout).toBe(
      `${json((await run([enc.text, "--json", "--max-new-tokens", "8", "--ignore-eos"])).stdout).text}\n`,
    );
    const chat = tokGolden.chat[0];
    const f = path.join(tmp, "chat.json");
    fs.writeFileSync(f, JSON.stringify(chat.messages));
    const c = json((await run(["--chat", f, "--json", "--max-new-tokens", "3", "--ignore-eos"])).stdout);
    expect(c.prompt_ids).toEqual(chat.ids);
    expect(c.ids).toHaveLength(3);
  });

  it("text mode stops at the engine's eos ids unless --ignore-eos", async () => {
    // Greedy from the text "2" reaches an eos id within 12 tokens (found by trying one-character prompts).
    const p = ["2", "--json", "--max-new-tokens", "12"];
    const free = json((await run([...p, "--ignore-eos"])).stdout);
    expect(free.ids).toHaveLength(12);
    expect(free.finish_reason).toBe("length");
    const k = free.ids.findIndex((t) => EOS.includes(t));
    expect(k).toBeGreaterThanOrEqual(0);
    expect(k).toBeLessThan(11);
    const stopped = json((await run(p)).stdout);
    expect(stopped.ids).toEqual(free.ids.slice(0, k + 1));
    expect(stopped.finish_reason).toBe("stop");
  });

  it("--stop-token-ids, --stop and sampling flags reach text generation", async () => {
    const enc = tokGolden.encode[1];
    const p = [enc.text, "--json", "--max-new-tokens", "12", "--ignore-eos"];
    const all = json((await run(p)).stdout);
    const stop = all.ids[3];
    const s = json((await run([...p, "--stop-token-ids", `${stop}`])).stdout);
    expect(s.ids).toEqual(all.ids.slice(0, all.ids.indexOf(stop) + 1));
    expect(s.finish_reason).toBe("stop");
    // The stop token ends the text without being part of it, as vLLM's detokenizer skips it (its id stays above).
    const upTo = all.ids.indexOf(stop);
    const before = json(
      (await run([enc.text, "--json", "--max-new-tokens", `${upTo}`, "--ignore-eos"])).stdout,
    );
    expect(s.text).toBe(before.text);
    // A stop string from the middle of the greedy text: generation ends before it.
    const at = Math.floor(all.text.length / 2);
    const str = all.text.slice(at, at + 1);
    expect(str.trim()).not.toBe("");
    const t = json((await run([...p, "--stop", str])).stdout);
    expect(t.finish_reason).toBe("stop");
    expect(t.stop_string).toBe(str);
    expect(t.text).toBe(all.text.slice(0, all.text.indexOf(str)));
    // top-k 1 at temperature 1 is greedy; temperature 2 with a seed is not.
    expect(json((await run([...p, "--temperature", "1", "--top-k", "1", "--seed", "5"])).stdout).ids).toEqual(
      all.ids,
    );
    expect(json((await run([...p, "--temperature", "2", "--seed", "5"])).stdout).ids).not.toEqual(all.ids);
  });
});

describe("tsllm-run refuses bad input in one line before any work", () => {
  it("token ids: not a number, outside the vocabulary, empty", async () => {
    expect(await refused(["--input-ids", "1,x,3"])).toBe('--input-ids: "x" is not a token id');
    expect(await refused(["--input-ids", "5", "--input-ids", "1,512"])).toBe(
      "--input-ids (prompt 2): token id 512 is outside the vocabulary (allowed: 0..511)",
    );
    expect(await refused(["--input-ids", "1", "--stop-token-ids", "5,b"])).toBe(
      '--stop-token-ids: "b" is not a token id',
    );
    expect(await refused(["--input-ids", "1", "--stop-token-ids", ""])).toBe(
      '--stop-token-ids: "" is not a token id',
    );
    // A stop id no token has can never be sampled: it was accepted and did nothing.
    expect(await refused(["--input-ids", "1", "--stop-token-ids", "2,512"])).toBe(
      "--stop-token-ids: token id 512 is outside the vocabulary (allowed: 0..511)",
    );
  });

  it("prompt + max_new_tokens over max_seq_len (the build's, or --max-seq-len's), and --max-seq-len over the model's", async () => {
    expect(await refused(["--input-ids", "1,2", "--input-ids", "1,2,3", "--max-new-tokens", "62"])).toBe(
      "--input-ids (prompt 2): prompt of 3 tokens + --max-new-tokens 62 = 65 exceeds max_seq_len 64",
    );
    // A file line's output_tokens counts, and the message names the line and that field.
    const f = path.join(tmp, "long.jsonl");
    fs.writeFileSync(f, `\n${JSON.stringify({ input_ids: [1, 2], output_tokens: 63 })}\n`);
    expect(await refused(["--input-file", f])).toBe(
      `${f}:2: prompt of 2 tokens + output_tokens 63 = 65 exceeds max_seq_len 64`,
    );
    // A line without output_tokens takes --max-new-tokens, and says so.
    fs.writeFileSync(f, `${JSON.stringify({ input_ids: [1, 2, 3] })}\n`);
    expect(await refused(["--input-file", f, "--max-new-tokens", "62"])).toBe(
      `${f}:1: prompt of 3 tokens + --max-new-tokens 62 = 65 exceeds max_seq_len 64`,
    );
    expect(
      await refused(["--input-ids", prompt(1).join(","), "--max-new-tokens", "6", "--max-seq-len", "16"]),
    ).toBe("--input-ids: prompt of 11 tokens + --max-new-tokens 6 = 17 exceeds max_seq_len 16");
    expect(await refused(["--input-ids", "1", "--max-seq-len", "300"], LimitError)).toBe(
      "--max-seq-len 300 exceeds the model's max_position_embeddings 256",
    );
    // Exactly max_seq_len fits.
    const r = await run(["--input-ids", "1,2", "--max-new-tokens", "62", "--ignore-eos"]);
    expect(r.stdout.trim().split(",")).toHaveLength(62);
  });

  it("flags that do not go together, and no prompt at all", async () => {
    expect(await refused([])).toBe("give --input-ids 1,2,3 (repeatable), --input-file FILE or --golden FILE");
    for (const f of [["--stop", "x"], ["--json"]])
      expect(await refused(["--input-ids", "1", ...f])).toBe(
        "--stop and --json go with a text prompt or --chat",
      );
    expect(await refused(["hello", "--input-ids", "1"])).toBe(
      "give a text prompt (or --chat) or --input-ids/--input-file, not both",
    );
    expect(await refused(["--prompt", "hello", "--input-file", path.join(tmp, "x.jsonl")])).toBe(
      "give a text prompt (or --chat) or --input-ids/--input-file, not both",
    );
    expect(await refused(["hello", "--chat", path.join(tmp, "chat.json")])).toBe(
      "give a text prompt or --chat, not both",
    );
  });

  it("a text prompt given twice (argument and --prompt)", async () => {
    // Was not refused: the argument won silently (and the engine loaded).
    expect(await refused(["hello", "--prompt", "bye"])).toBe(
      "give the text prompt once: as an argument or --prompt, not both",
    );
  });

  it("a bad --stop-token-ids with a text prompt", async () => {
    // Was refused only after the engine had loaded (here: the corrupt engine's hash error instead).
    expect(await refused(["hello", "--stop-token-ids", "5,x"])).toBe(
      '--stop-token-ids: "x" is not a token id',
    );
    expect(await refused(["hello", "--stop-token-ids", "9999"])).toBe(
      "--stop-token-ids: token id 9999 is outside the vocabulary (allowed: 0..511)",
    );
  });

  it("a text prompt or --chat on an engine without a tokenizer, naming which", async () => {
    const bare = path.join(tmp, "bare-engine");
    fs.mkdirSync(bare);
    for (const f of ["generation_config.json", openEngine(corrupt).config.ranks[0].file])
      fs.copyFileSync(path.join(corrupt, f), path.join(bare, f));
    // config.json without its tokenizer entry (an engine built from a folder without tokenizer.json).
    const cfg = JSON.parse(fs.readFileSync(path.join(corrupt, "config.json"), "utf8"));
    expect(cfg.tokenizer).toBeDefined();
    delete cfg.tokenizer;
    fs.writeFileSync(path.join(bare, "config.json"), JSON.stringify(cfg));
    const chat = path.join(tmp, "chat-bare.json");
    fs.writeFileSync(chat, JSON.stringify([{ role: "user", content: "hi" }]));
    const c = capture();
    const errs: unknown[] = [];
    for (const a of [["hello"], ["--chat", chat]])
      errs.push(
        await tsllmRun([process.execPath, "tsllm-run", bare, "--device", "cpu", ...a]).then(
          () => null,
          (e: unknown) => e,
        ),
      );
    c.restore();
    expect(c.io.stdout).toBe("");
    const [text, chatErr] = errs.map(
      (e) =>
        thrown(() => {
          if (e) throw e;
        }, TokenizerError).message,
    );
    expect(text).toMatch(/^a text prompt needs a tokenizer: /);
    expect(chatErr).toMatch(/^--chat needs a tokenizer: /);
  });

  it("--golden on --device cuda without the native runtime", async () => {
    // (Said only "native runtime not built: ..." before the executor named the flag.)
    expect(await refused(["--golden", GOLDEN, "--device", "cuda"])).toMatch(
      /^--device cuda: native runtime not built/,
    );
    expect(await refused(["--input-ids", "1", "--device", "cuda"])).toMatch(
      /^--device cuda: native runtime not built/,
    );
  });

  it("prompts given with --golden", async () => {
    // Were not refused: --golden ignored them silently (and the engine loaded).
    const msg =
      "--golden checks the golden file's own prompts: give no prompt, --chat, --input-ids or --input-file";
    for (const extra of [
      ["--input-ids", "1"],
      ["--input-file", GOLDEN],
      ["hello"],
      ["--prompt", "x"],
      ["--chat", "m.json"],
    ])
      expect(await refused(["--golden", GOLDEN, ...extra])).toBe(msg);
  });

  it("a bad flag value is commander's one-line usage error and exit 1", async () => {
    for (const [flag, v] of [
      ["--max-new-tokens", "-1"],
      ["--max-new-tokens", "1.5"],
      ["--temperature", "-0.5"],
      ["--top-k", "-1"],
      ["--top-p", "0"],
      ["--top-p", "1.5"],
      ["--seed", "x"],
      ["--tolerance", "0"],
      ["--max-batch-size", "0"],
      ["--device", "gpu"],
    ]) {
      const exit = vi.spyOn(process, "exit").mockImplementation((code?: string | number | null) => {
        throw new Error(`exit ${code}`);
      });
      const c = capture();
      const e = await tsllmRun([process.execPath, "tsllm-run", corrupt, "--input-ids", "1", flag, v]).then(
        () => null,
        (e: unknown) => e,
      );
      c.restore();
      exit.mockRestore();
      expect((e as Error)?.message, `${flag} ${v}`).toBe("exit 1");
      expect(c.io.stdout).toBe("");
      expect(c.io.stderr.split("\n")[0]).toMatch(new RegExp(`^error: .*${flag}`));
    }
  });
});
