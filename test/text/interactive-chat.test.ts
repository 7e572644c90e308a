// tsllm-run --chat on a terminal (src/cli/run-text.ts interactiveChat) on the tiny-llama engine (CPU): each line
// is a user turn answered with what runText gives for the whole conversation so far through the chat template;
// an empty line, the end of input (Ctrl-D) and max_seq_len end it; a reply cancelled because stdout's reader is
// gone ends it without asking again. The terminal is a pair of streams whose "user" types a line only once
// the "> " prompt is out, as a person does (readline/promises drops lines that arrive with no question pending).
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { interactiveChat, runText, type TextRunOptions } from "../../src/cli/run-text.ts";
import type { InflightBatchManager } from "../../src/serving/batch-manager.ts";
import { openBatchManager } from "../../src/serving/open.ts";
import type { ChatMessage } from "../../src/text/chat-template.ts";
import { TextTokenizer } from "../../src/text/tokenizer.ts";
import { buildFixture, TINY_LLAMA } from "../fixtures.ts";
import { terminal } from "./terminal.ts";

const tok = TextTokenizer.load(TINY_LLAMA);
const BANNER = "(empty line or Ctrl-D ends the conversation)\n";

const options = (maxNewTokens = 12): TextRunOptions => ({
  maxNewTokens,
  sampling: { temperature: 0, topK: 0, topP: 1, seed: 0 },
  ignoreEos: true,
  stopTokenIds: [],
  stop: [],
  json: false,
  out: { write: () => true },
});

/** What runText prints for `messages` (the reply's text and its newline). */
async function reply(bm: InflightBatchManager, messages: ChatMessage[], maxNewTokens = 12) {
  const { ids } = tok.applyChatTemplate(messages, { addGenerationPrompt: true });
  let out = "";
  const r = await runText(bm, tok, ids, {
    ...options(maxNewTokens),
    out: { write: (s: string) => (out += s) },
  });
  return { out, text: r.text };
}

describe("interactive chat", () => {
  let bm: InflightBatchManager;
  beforeAll(async () => {
    bm = await openBatchManager(await buildFixture("llama"), { device: "cpu" });
  });
  afterAll(async () => {
    await bm?.shutdown();
  });

  it("answers each turn with the whole conversation so far; an empty line ends it", async () => {
    const t = terminal(["Hi there", "And then?", ""]);
    await interactiveChat(bm, tok, options(), "Be brief.", t.io);
    const sys: ChatMessage = { role: "system", content: "Be brief." };
    const first = await reply(bm, [sys, { role: "user", content: "Hi there" }]);
    const second = await reply(bm, [
      sys,
      { role: "user", content: "Hi there" },
      { role: "assistant", content: first.text },
      { role: "user", content: "And then?" },
    ]);
    expect(first.text.length).toBeGreaterThan(0);
    expect(second.out).not.toBe(first.out); // the second turn sees the first
    expect(t.text()).toBe(`${BANNER}> ${first.out}> ${second.out}> `);
    expect(t.prompts()).toBe(3);
  });

  it("Ctrl-D at the prompt ends the conversation (the question does not hang)", async () => {
    const t = terminal(["Hi there", null]);
    await interactiveChat(bm, tok, options(), undefined, t.io);
    const first = await reply(bm, [{ role: "user", content: "Hi there" }]);
    expect(t.text()).toBe(`${BANNER}> ${first.out}> `);
    // and the manager still serves: nothing was left running
    expect(bm.stats().running).toBe(0);
  });

  it("input that ends during a reply ends the conversation after that reply", async () => {
    let t: ReturnType<typeof terminal>;
    // the user presses Ctrl-D while the reply streams: the input ends at the reply's first write
    let ended = false;
    t = terminal(["Hi there"], (s) => {
      if (s !== "> " && s !== BANNER && !ended) {
        ended = true;
        t.io.input.end();
      }
    });
    await interactiveChat(bm, tok, options(), undefined, t.io);
    const first = await reply(bm, [{ role: "user", content: "Hi there" }]);
    expect(t.text()).toBe(`${BANNER}> ${first.out}`);
  });

  it("the conversation stops at max_seq_len, saying so", async () => {
    const long = "word ".repeat(Math.ceil(bm.limits.maxSeqLen / 2));
    const t = terminal([long]);
    await interactiveChat(bm, tok, options(), undefined, t.io);
    const { ids } = tok.applyChatTemplate([{ role: "user", content: long }], { addGenerationPrompt: true });
    expect(ids.length).toBeGreaterThanOrEqual(bm.limits.maxSeqLen); // the test's premise
    expect(t.text()).toBe(`${BANNER}> (the conversation has reached max_seq_len ${bm.limits.maxSeqLen})\n`);
  });
});

describe("interactive chat, stdout's reader gone", () => {
  it("a reply cancelled by the shutdown ends the conversation: no further question, no error", async () => {
    const bm = await openBatchManager(await buildFixture("llama"), { device: "cpu" });
    // tsllm-run shuts the manager down when stdout's reader is gone (cli/common.ts cancelWhenReaderGone):
    // here at the reply's first write. A second line is ready, so a further question would be answered and
    // its submit refused ("shutting down", exit 1 from tsllm-run).
    let shut = false;
    const t = terminal(["Hi there", "More"], (s) => {
      if (s !== "> " && s !== BANNER && !shut) {
        shut = true;
        void bm.shutdown();
      }
    });
    await interactiveChat(bm, tok, options(200), undefined, t.io);
    expect(shut).toBe(true);
    expect(t.prompts()).toBe(1);
    expect(t.text().endsWith("\n")).toBe(true);
  });
});
