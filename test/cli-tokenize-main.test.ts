// tsllm-tokenize in-process (src/cli/tokenize.ts tsllmTokenize, stdout and stderr captured), on tiny-llama's
// Hugging Face folder: every mode against the transformers goldens (tokenizer-golden.json), the --info fields read
// off the tokenizer files, and every refusal with its exact message. stdin (--chat -) comes from a stand-in for
// fs.readFileSync(0). (test/text/engine-tokenizer.test.ts runs the binary on an engine as a child process; Stryker's
// coverage does not reach that.)
import * as fs from "node:fs";
import * as path from "node:path";
import { beforeAll, describe, expect, it, vi } from "vitest";
import { DEVICE_REFUSAL } from "../src/text/utf8.ts";
import { Exit, importMain, runCaptured } from "./cli-main-helpers.ts";
import { TINY_GPTJ, TINY_LLAMA, tmpDir } from "./fixtures.ts";

const stdin = vi.hoisted(() => ({ text: null as string | null, reads: 0 }));
vi.mock("node:fs", async (orig) => (await import("./stdin-mock.ts")).fsWithStdin(await orig(), stdin));

interface Golden {
  encode: { text: string; ids: number[]; decoded: string; decoded_skip_special: string }[];
  chat: { messages: { role: string; content: string }[]; text: string; ids: number[] }[];
}
const golden: Golden = JSON.parse(fs.readFileSync(path.join(TINY_LLAMA, "tokenizer-golden.json"), "utf8"));
const tokenizerJson = JSON.parse(fs.readFileSync(path.join(TINY_LLAMA, "tokenizer.json"), "utf8"));
const BOS = 507;

let tsllmTokenize: (argv: readonly string[]) => Promise<void>;
let imported: { stdout: string; stderr: string; exitCode: typeof process.exitCode };

beforeAll(async () => {
  // Importing the module runs tsllm-tokenize on process.argv once: --info on tiny-llama.
  const r = await importMain(
    () => import("../src/cli/tokenize.ts"),
    [process.execPath, "tsllm-tokenize", TINY_LLAMA, "--info"],
  );
  tsllmTokenize = r.module.tsllmTokenize;
  // Checked in a test below: a failing hook would skip the tests, which Stryker reads as a surviving mutant.
  imported = r;
});

const tokenize = (...args: string[]) =>
  runCaptured(() => tsllmTokenize([process.execPath, "tsllm-tokenize", ...args]));

/** The JSON line tsllm-tokenize prints for ARGS on tiny-llama (nothing on stderr). */
async function json(...args: string[]): Promise<unknown> {
  const r = await tokenize(TINY_LLAMA, ...args);
  expect(r.error).toBeNull();
  expect(r.stderr).toBe("");
  expect(r.stdout.endsWith("\n")).toBe(true);
  expect(r.stdout.indexOf("\n")).toBe(r.stdout.length - 1);
  return JSON.parse(r.stdout);
}

/** The message tsllm-tokenize throws for ARGS, having printed nothing. */
async function refused(dir: string, ...args: string[]): Promise<string> {
  const r = await tokenize(dir, ...args);
  expect(r.stdout).toBe("");
  expect(r.error).toBeInstanceOf(Error);
  return (r.error as Error).message;
}

describe("tsllm-tokenize in-process", () => {
  it("the module runs tsllm-tokenize on process.argv: --info, the fields read off the tokenizer files", () => {
    const maxId = Math.max(
      ...Object.values(tokenizerJson.model.vocab as Record<string, number>),
      ...tokenizerJson.added_tokens.map((t: { id: number }) => t.id),
    );
    expect(maxId).toBe(511);
    const info = {
      files: ["tokenizer.json", "tokenizer_config.json", "generation_config.json", "chat_template.jinja"],
      special_tokens: { bos_token: "<|begin_of_text|>", eos_token: "<|eot_id|>" },
      bos_token_id: BOS,
      eos_token_ids: [508, 511],
      max_token_id: maxId,
      chat_template: true,
    };
    expect(imported.stdout).toBe(`${JSON.stringify(info)}\n`);
    expect(imported.stderr).toBe("");
    expect(imported.exitCode).toBeUndefined();
  });

  it("TEXT: the golden ids (with the BOS the post-processor adds), and without it under --no-special", async () => {
    expect(golden.encode.map((e) => e.text)).toContain("");
    for (const e of golden.encode) {
      expect(e.ids[0]).toBe(BOS);
      expect(await json(e.text)).toEqual({ text: e.text, ids: e.ids });
      expect(await json(e.text, "--no-special")).toEqual({ text: e.text, ids: e.ids.slice(1) });
    }
    const r = await tokenize(TINY_LLAMA, "Hello world");
    expect(r.stdout).toBe(`{"text":"Hello world","ids":[${golden.encode[0].ids.join(",")}]}\n`);
  });

  it("--decode: the golden text, skipping special tokens under --no-special; ids up to the largest", async () => {
    for (const e of golden.encode) {
      const ids = e.ids.join(",");
      expect(await json("--decode", ids)).toEqual({ ids: e.ids, text: e.decoded });
      expect(await json("--decode", ids, "--no-special")).toEqual({
        ids: e.ids,
        text: e.decoded_skip_special,
      });
    }
    expect(await json("--decode", "511")).toEqual({ ids: [511], text: "<|eot_id|>" });
    expect(await json("--decode", "0,511", "--no-special")).toMatchObject({ ids: [0, 511] });
  });

  it("--decode refuses an id past the tokenizer's largest, naming the first such id", async () => {
    expect(await refused(TINY_LLAMA, "--decode", "1,512")).toBe(
      "--decode: token id 512 is not in the tokenizer (allowed: 0..511)",
    );
    expect(await refused(TINY_LLAMA, "--decode", "600,1,512")).toBe(
      "--decode: token id 600 is not in the tokenizer (allowed: 0..511)",
    );
    // An empty --decode is still --decode (given, and parsed), not a missing one.
    expect(await refused(TINY_LLAMA, "--decode", "")).toBe('--decode: "" is not a token id');
  });

  it("--chat FILE: the golden chat text and ids, the messages as read", async () => {
    const dir = tmpDir();
    for (const [i, c] of golden.chat.entries()) {
      const f = path.join(dir, `chat${i}.json`);
      fs.writeFileSync(f, JSON.stringify(c.messages));
      expect(await json("--chat", f)).toEqual({ messages: c.messages, text: c.text, ids: c.ids });
    }
    const missing = path.join(dir, "missing.json");
    expect(await refused(TINY_LLAMA, "--chat", missing)).toBe(`--chat ${missing}: file not found`);
    const bad = path.join(dir, "bad.json");
    fs.writeFileSync(bad, "nope");
    expect(await refused(TINY_LLAMA, "--chat", bad)).toMatch(new RegExp(`^${bad}: invalid JSON: `));
  });

  // Bytes that are not UTF-8 became U+FFFD (the ids printed were of "caf\uFFFD", where transformers refuses the
  // file), and a folder was Node's bare "EISDIR: illegal operation on a directory, read".
  it("--chat FILE that is not UTF-8 or is a folder: one message naming it (and the line)", async () => {
    const dir = tmpDir();
    const latin1 = path.join(dir, "latin1.json");
    fs.writeFileSync(latin1, Buffer.from('[{"role": "user",\n "content": "caf\xe9"}]', "latin1"));
    expect(await refused(TINY_LLAMA, "--chat", latin1)).toBe(`--chat ${latin1}:2: not UTF-8 text`);
    expect(await refused(TINY_LLAMA, "--chat", dir)).toBe(`--chat ${dir}: is a directory; name a file`);
    // A device was read until it ended: a terminal waited, /dev/zero grew without end (/dev/null stands in here).
    expect(await refused(TINY_LLAMA, "--chat", "/dev/null")).toBe(`--chat /dev/null: ${DEVICE_REFUSAL}`);
    const utf8 = path.join(dir, "utf8.json");
    fs.writeFileSync(utf8, '[{"role": "user",\n "content": "caf\u00e9"}]');
    expect(await json("--chat", utf8)).toMatchObject({ messages: [{ role: "user", content: "café" }] });
  });

  it("--chat -: the messages from stdin, named stdin in errors", async () => {
    const c = golden.chat[1];
    stdin.text = JSON.stringify(c.messages);
    stdin.reads = 0;
    try {
      expect(await json("--chat", "-")).toEqual({ messages: c.messages, text: c.text, ids: c.ids });
      expect(stdin.reads).toBe(1);
      stdin.text = "nope";
      expect(await refused(TINY_LLAMA, "--chat", "-")).toMatch(/^stdin: invalid JSON: /);
      expect(stdin.reads).toBe(2);
    } finally {
      stdin.text = null;
    }
  });

  it("exactly one of TEXT, --chat, --decode, --info: none or two refused, before the tokenizer is looked for", async () => {
    const msg = "give exactly one of TEXT, --chat FILE, --decode IDS or --info";
    const f = path.join(tmpDir(), "chat.json");
    fs.writeFileSync(f, JSON.stringify(golden.chat[0].messages));
    const nowhere = path.join(tmpDir(), "nowhere");
    for (const dir of [TINY_LLAMA, nowhere]) {
      expect(await refused(dir)).toBe(msg);
      expect(await refused(dir, "hi", "--info")).toBe(msg);
      expect(await refused(dir, "hi", "--decode", "1")).toBe(msg);
      expect(await refused(dir, "hi", "--chat", f)).toBe(msg);
      expect(await refused(dir, "--chat", f, "--decode", "1")).toBe(msg);
      expect(await refused(dir, "--chat", f, "--info")).toBe(msg);
      expect(await refused(dir, "--decode", "1", "--info")).toBe(msg);
      expect(await refused(dir, "", "--info")).toBe(msg);
    }
    // Each alone is accepted, in turn, by the same program (no option value left over from the call before).
    expect(await json("--info")).toMatchObject({ bos_token_id: BOS });
    expect(await json("hi")).toMatchObject({ text: "hi" });
    expect(await json("--decode", "1")).toMatchObject({ ids: [1] });
    expect(await json("--chat", f)).toMatchObject({ ids: golden.chat[0].ids });
    expect(await json("")).toEqual({ text: "", ids: [BOS] });
  });

  it("a folder without a tokenizer: one message naming the command and the folder", async () => {
    expect(await refused(TINY_GPTJ, "hello")).toBe(
      `tsllm-tokenize needs a tokenizer: ${TINY_GPTJ} has no tokenizer.json`,
    );
  });

  it('an empty <dir> ("$MODEL" unset) is refused by name, not read as the working folder', async () => {
    const r = await tokenize("", "hello");
    expect((r.error as Exit).code).toBe(1);
    expect(r.stderr.split("\n")[0]).toBe(
      "error: command-argument value '' is invalid for argument 'dir'. <dir> is empty",
    );
  });

  it("a usage error is commander's: one line, the --help hint, exit 1", async () => {
    const r = await tokenize();
    expect(r.error).toBeInstanceOf(Exit);
    expect((r.error as Exit).code).toBe(1);
    expect(r.stderr).toBe(
      "error: missing required argument 'dir'\n(tsllm-tokenize --help lists the flags)\n",
    );
  });
});
