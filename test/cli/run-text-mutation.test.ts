// tsllm-run's text mode (src/cli/run-text.ts) against a scripted batch manager: readChatFile's file, stdin and
// error cases; runText's max_seq_len check before anything is submitted, its failures (named by `what`), the
// request it submits and its --json summary worked out by hand; interactiveChat's turns (the exact prompt ids of
// each, the assistant's reply in the history), a blank line, the last token that fits, a failed reply, the readline
// interface closed at the end, and the terminal it uses by default. (test/text/run-text.test.ts and
// test/text/interactive-chat.test.ts run the tiny-llama engine; these pin the numbers and messages.)
import * as fs from "node:fs";
import * as path from "node:path";
import { afterEach, describe, expect, it, vi } from "vitest";
import { interactiveChat, readChatFile, runText, type TextRunOptions } from "../../src/cli/run-text.ts";
import type { BatchManager, FinishReason, GenerationRequest } from "../../src/serving/types.ts";
import type { ChatMessage } from "../../src/text/chat-template.ts";
import { TextTokenizer } from "../../src/text/tokenizer.ts";
import { DEVICE_REFUSAL } from "../../src/text/utf8.ts";
import { TINY_LLAMA, tmpDir } from "../fixtures.ts";
import { terminal } from "../text/terminal.ts";

// fs.readFileSync(0) (stdin, `--chat -`) comes from this stand-in while `stdin.text` is set.
const stdin = vi.hoisted(() => ({ text: null as string | null, reads: 0 }));
vi.mock("node:fs", async (orig) => (await import("../stdin-mock.ts")).fsWithStdin(await orig(), stdin));

const tok = TextTokenizer.load(TINY_LLAMA);
const golden = JSON.parse(fs.readFileSync(path.join(TINY_LLAMA, "tokenizer-golden.json"), "utf8")) as {
  chat: { messages: ChatMessage[]; ids: number[] }[];
};
const BANNER = "(empty line or Ctrl-D ends the conversation)\n";
const HELLO = tok.encode("Hello world", { addSpecialTokens: false }); // 8 tokens
const HI = tok.encode("Hi there", { addSpecialTokens: false }); // 5 tokens

afterEach(() => {
  stdin.text = null;
  stdin.reads = 0;
  vi.restoreAllMocks();
});

interface Script {
  ids: number[];
  finishReason?: FinishReason;
  error?: Error;
  tokenTimesMs?: number[];
  queueMs?: number;
  ttftMs?: number;
  e2eMs?: number;
}

/** A batch manager whose n-th request streams scripts[n] (cut to its maxNewTokens); it records the requests. */
function scripted(scripts: Script[], maxSeqLen = 64) {
  const requests: GenerationRequest[] = [];
  const bm: BatchManager = {
    limits: { maxBatchSize: 1, maxNumTokens: 64, maxSeqLen, tokensPerBlock: 16, kvBlocksTotal: 8 },
    policy: "guaranteed_no_evict",
    vocabSize: 512,
    eosTokenIds: [],
    submit(req) {
      const s = scripts[requests.length];
      requests.push(req);
      const out = s.ids.slice(0, req.maxNewTokens);
      const timings = {
        queueMs: s.queueMs ?? 0,
        ttftMs: s.ttftMs ?? 1,
        tokenTimesMs: s.tokenTimesMs ?? out.map((_, i) => i + 1),
        e2eMs: s.e2eMs ?? out.length + 1,
      };
      const result = {
        outputIds: out,
        finishReason: s.finishReason ?? ("length" as const),
        ...(s.error ? { error: s.error } : {}),
        timings,
        preemptions: 0,
      };
      return {
        id: requests.length,
        done: Promise.resolve(result),
        cancel() {},
        async *[Symbol.asyncIterator]() {
          for (const [index, tokenId] of out.entries()) yield { tokenId, index, timeMs: index + 1 };
        },
      };
    },
    stats: () => {
      throw new Error("unused");
    },
    shutdown: async () => {},
  };
  return { bm, requests };
}

const options = (out: string[], o: Partial<TextRunOptions> = {}): TextRunOptions => ({
  maxNewTokens: 12,
  sampling: { temperature: 0, topK: 0, topP: 1, seed: 0 },
  ignoreEos: true,
  stopTokenIds: [],
  stop: [],
  json: false,
  out: { write: (s: string) => out.push(s) },
  ...o,
});

const failure = (p: Promise<unknown>) =>
  p.then(
    () => "resolved",
    (e: Error) => e.message,
  );

describe("readChatFile", () => {
  it("reads a file's messages; a missing file and bad JSON are errors naming --chat FILE", () => {
    const dir = tmpDir();
    const file = path.join(dir, "chat.json");
    fs.writeFileSync(file, JSON.stringify(golden.chat[0].messages));
    expect(readChatFile(file)).toEqual(golden.chat[0].messages);
    const missing = path.join(dir, "missing.json");
    expect(() => readChatFile(missing)).toThrow(new Error(`--chat ${missing}: file not found`));
    const bad = path.join(dir, "bad.json");
    fs.writeFileSync(bad, "[{");
    expect(() => readChatFile(bad)).toThrow(new RegExp(`^--chat ${bad}: invalid JSON: `));
    fs.writeFileSync(bad, "[]");
    expect(() => readChatFile(bad)).toThrow(
      `--chat ${bad}: expected a list of {"role", "content"} messages: give at least one message`,
    );
    expect(stdin.reads).toBe(0);
  });

  // Read "utf8", bytes that are not UTF-8 became U+FFFD in the prompt without a word (transformers refuses the
  // file), and a folder was Node's bare "EISDIR: illegal operation on a directory, read".
  it("a file that is not UTF-8 or is a folder: one error naming --chat FILE (and the line)", () => {
    const dir = tmpDir();
    const latin1 = path.join(dir, "latin1.json");
    fs.writeFileSync(latin1, Buffer.from('[{"role": "user",\n "content": "caf\xe9"}]', "latin1"));
    expect(() => readChatFile(latin1)).toThrow(new Error(`--chat ${latin1}:2: not UTF-8 text`));
    expect(() => readChatFile(dir)).toThrow(new Error(`--chat ${dir}: is a directory; name a file`));
    // A device was read until it ended: a terminal waited, /dev/zero grew without end (/dev/null stands in here).
    expect(() => readChatFile("/dev/null")).toThrow(new Error(`--chat /dev/null: ${DEVICE_REFUSAL}`));
    fs.writeFileSync(latin1, '[{"role": "user", "content": "caf\u00e9 🙂"}]');
    expect(readChatFile(latin1)).toEqual([{ role: "user", content: "café 🙂" }]);
  });

  it("- reads stdin, whose errors say stdin", () => {
    stdin.text = JSON.stringify(golden.chat[1].messages);
    expect(readChatFile("-")).toEqual(golden.chat[1].messages);
    expect(stdin.reads).toBe(1);
    stdin.text = "{";
    expect(() => readChatFile("-")).toThrow(/^stdin: invalid JSON: /);
    expect(stdin.reads).toBe(2);
  });
});

describe("runText", () => {
  it("streams the text and a newline; submits the prompt, options and the tag `what` (default prompt)", async () => {
    const { bm, requests } = scripted([{ ids: HELLO }, { ids: HELLO }]);
    const out: string[] = [];
    const r = await runText(bm, tok, [507, 1, 2], options(out, { stopTokenIds: [9], ignoreEos: false }));
    expect(out.join("")).toBe("Hello world\n");
    expect(out.at(-1)).toBe("\n");
    expect(r.text).toBe("Hello world");
    expect(r.outputIds).toEqual(HELLO);
    expect(requests[0]).toEqual({
      promptIds: [507, 1, 2],
      maxNewTokens: 12,
      sampling: { temperature: 0, topK: 0, topP: 1, seed: 0 },
      ignoreEos: false,
      stopTokenIds: [9],
      stop: [],
      tag: "prompt",
    });
    await runText(bm, tok, [507], options([]), "line 2");
    expect(requests[1].tag).toBe("line 2");
  });

  it("prompt + max_new_tokens over max_seq_len is refused before anything is submitted", async () => {
    const { bm, requests } = scripted([{ ids: HELLO }], 16);
    const out: string[] = [];
    const ids = Array.from({ length: 12 }, (_, i) => i + 1);
    expect(await failure(runText(bm, tok, ids, options(out, { maxNewTokens: 5 })))).toBe(
      "prompt: prompt of 12 tokens + max_new_tokens 5 = 17 exceeds max_seq_len 16",
    );
    expect(await failure(runText(bm, tok, ids, options(out, { maxNewTokens: 6 }), "line 4"))).toBe(
      "line 4: prompt of 12 tokens + max_new_tokens 6 = 18 exceeds max_seq_len 16",
    );
    expect(requests).toEqual([]);
    expect(out).toEqual([]);
    // exactly max_seq_len fits
    await runText(bm, tok, ids, options(out, { maxNewTokens: 4 }));
    expect(requests).toHaveLength(1);
    expect(out.join("")).toBe(`${tok.decode(HELLO.slice(0, 4))}\n`);
  });

  it("a failed generation is an error naming `what` and the failure, with no closing newline", async () => {
    const { bm } = scripted([
      { ids: HI, finishReason: "error", error: new Error("step failed: boom") },
      { ids: [], finishReason: "error" },
      { ids: HI, finishReason: "error", error: new Error("oom") },
    ]);
    const out: string[] = [];
    expect(await failure(runText(bm, tok, [507], options(out)))).toBe("prompt: step failed: boom");
    expect(out.join("")).toBe("Hi there");
    expect(await failure(runText(bm, tok, [507], options([])))).toBe("prompt: generation failed");
    expect(await failure(runText(bm, tok, [507], options([], { json: true }), "chat"))).toBe("chat: oom");
  });

  it("--json: one line at the end, every field and timing worked out by hand", async () => {
    const { bm } = scripted([
      {
        ids: HELLO.slice(0, 4),
        queueMs: 0.5,
        ttftMs: 3,
        tokenTimesMs: [3, 5, 10, 18],
        e2eMs: 40,
      },
    ]);
    const out: string[] = [];
    const r = await runText(bm, tok, [507, 1], options(out, { json: true }));
    expect(out).toHaveLength(1);
    expect(out[0].endsWith("}\n")).toBe(true);
    expect(JSON.parse(out[0])).toStrictEqual({
      prompt_ids: [507, 1],
      ids: HELLO.slice(0, 4),
      text: r.text,
      finish_reason: "length",
      timings: { queue_ms: 0.5, ttft_ms: 3, e2e_ms: 40, tpot_ms: 5, output_tokens_per_s: 100 },
    });
    expect(r.text).toBe(tok.decode(HELLO.slice(0, 4)));
  });

  it("--json: tpot is null for one token or none; a stop string is reported", async () => {
    const { bm } = scripted([
      { ids: [HELLO[0]], tokenTimesMs: [7], ttftMs: 7, e2eMs: 8 },
      { ids: [], tokenTimesMs: [], ttftMs: Number.NaN, e2eMs: 2 },
      { ids: HELLO, e2eMs: 50 },
    ]);
    const one: string[] = [];
    await runText(bm, tok, [507], options(one, { json: true }));
    expect(JSON.parse(one[0]).timings).toStrictEqual({
      queue_ms: 0,
      ttft_ms: 7,
      e2e_ms: 8,
      tpot_ms: null,
      output_tokens_per_s: 125,
    });
    const none: string[] = [];
    await runText(bm, tok, [507], options(none, { json: true, maxNewTokens: 1 }));
    expect(JSON.parse(none[0]).timings.tpot_ms).toBeNull();
    expect(JSON.parse(none[0]).timings.output_tokens_per_s).toBe(0);
    const cut: string[] = [];
    const r = await runText(bm, tok, [507], options(cut, { json: true, stop: [" world"] }));
    const j = JSON.parse(cut[0]);
    expect(j.text).toBe("Hello");
    expect(j.finish_reason).toBe("stop");
    expect(j.stop_string).toBe(" world");
    expect(r.stopString).toBe(" world");
    expect(Object.keys(j)).toEqual(["prompt_ids", "ids", "text", "finish_reason", "stop_string", "timings"]);
  });
});

const chatIds = (messages: ChatMessage[]) =>
  tok.applyChatTemplate(messages, { addGenerationPrompt: true }).ids;

describe("interactiveChat", () => {
  it("each turn's prompt is the whole conversation, the replies in it; the tag is chat; readline is closed", async () => {
    const { bm, requests } = scripted([{ ids: HELLO }, { ids: HI }], 256);
    const t = terminal(["first", "second", ""]);
    await interactiveChat(bm, tok, options([], { maxNewTokens: 8, json: true }), "Be brief.", t.io);
    expect(t.text()).toBe(`${BANNER}> Hello world\n> Hi there\n> `);
    const sys: ChatMessage = { role: "system", content: "Be brief." };
    expect(requests.map((r) => r.promptIds)).toEqual([
      chatIds([sys, { role: "user", content: "first" }]),
      chatIds([
        sys,
        { role: "user", content: "first" },
        { role: "assistant", content: "Hello world" },
        { role: "user", content: "second" },
      ]),
    ]);
    expect(requests.map((r) => r.tag)).toEqual(["chat", "chat"]);
    expect(requests.map((r) => r.maxNewTokens)).toEqual([8, 8]);
    // the interface let go of its input: paused, no reader left (a terminal's stdin would keep Node running)
    expect(t.io.input.isPaused()).toBe(true);
    expect(t.io.input.listenerCount("data")).toBe(0);
  });

  it("a line of blanks ends the conversation like an empty one", async () => {
    const { bm, requests } = scripted([{ ids: HELLO }]);
    const t = terminal(["  \t ", null]); // Ctrl-D after it: a reply to the blanks would end there, not hang
    await interactiveChat(bm, tok, options([]), undefined, t.io);
    expect(t.text()).toBe(`${BANNER}> `);
    expect(requests).toEqual([]);
  });

  it("the turn whose prompt leaves room for one token still gets it; the next stops at max_seq_len", async () => {
    const first = chatIds([{ role: "user", content: "Hi" }]);
    const { bm, requests } = scripted([{ ids: HELLO }], first.length + 1);
    const t = terminal(["Hi", "again"]);
    await interactiveChat(bm, tok, options([]), undefined, t.io);
    expect(requests).toHaveLength(1);
    expect(requests[0].maxNewTokens).toBe(1);
    expect(t.text()).toBe(
      `${BANNER}> ${tok.decode([HELLO[0]])}\n> (the conversation has reached max_seq_len ${first.length + 1})\n`,
    );
  });

  it("a failed reply is an error naming the chat; readline is closed all the same", async () => {
    const { bm } = scripted([{ ids: HI, finishReason: "error", error: new Error("step failed") }]);
    const t = terminal(["Hi", "More"]);
    expect(await failure(interactiveChat(bm, tok, options([]), undefined, t.io))).toBe("chat: step failed");
    expect(t.prompts()).toBe(1);
    expect(t.io.input.isPaused()).toBe(true);
    expect(t.io.input.listenerCount("data")).toBe(0);
  });

  it("by default it talks on process.stdin and process.stdout", async () => {
    const t = terminal([null]);
    vi.spyOn(process, "stdin", "get").mockReturnValue(t.io.input as unknown as typeof process.stdin);
    vi.spyOn(process, "stdout", "get").mockReturnValue(t.io.output as unknown as typeof process.stdout);
    const { bm, requests } = scripted([]);
    await interactiveChat(bm, tok, options([]));
    vi.restoreAllMocks();
    expect(t.text()).toBe(`${BANNER}> `);
    expect(requests).toEqual([]);
  });
});
