// tsllm-run's text mode: a prompt (text, or chat messages through the chat template) is encoded with the
// engine's tokenizer, generated through the batch manager (src/text/generate-text.ts) and the text is
// printed as it comes (or, with --json, one JSON object at the end: ids, text, finish reason, timings).
import * as fs from "node:fs";
import * as readline from "node:readline/promises";
import { type BatchManager, failureText, overMaxSeqLen, type SamplingOptions } from "../serving/types.ts";
import { parseChatMessages } from "../text/chat-messages.ts";
import type { ChatMessage } from "../text/chat-template.ts";
import { generateText, type TextResult } from "../text/generate-text.ts";
import type { TextTokenizer } from "../text/tokenizer.ts";
import { readUtf8File } from "../text/utf8.ts";

export interface TextRunOptions {
  maxNewTokens: number;
  sampling: SamplingOptions;
  ignoreEos: boolean;
  stopTokenIds: number[];
  stop: string[];
  json: boolean;
  out: { write(s: string): unknown };
}

/** --chat FILE (or - for stdin): the messages to render. */
export function readChatFile(file: string): ChatMessage[] {
  // As UTF-8 or not at all, as transformers reads it ("utf8" made other bytes U+FFFD in the prompt, silently).
  if (file === "-") return parseChatMessages(readUtf8File(0, "stdin"), "stdin");
  if (!fs.existsSync(file)) throw new Error(`--chat ${file}: file not found`);
  return parseChatMessages(readUtf8File(file, `--chat ${file}`), `--chat ${file}`);
}

function checkFits(bm: BatchManager, promptLen: number, maxNew: number, what: string): void {
  const tooLong = overMaxSeqLen(promptLen, maxNew, bm.limits.maxSeqLen);
  if (tooLong) throw new Error(`${what}: ${tooLong}`);
}

/** Generates from prompt ids; streams the text to o.out, or prints the JSON summary at the end. */
export async function runText(
  bm: BatchManager,
  tok: TextTokenizer,
  promptIds: number[],
  o: TextRunOptions,
  what = "prompt",
): Promise<TextResult> {
  checkFits(bm, promptIds.length, o.maxNewTokens, what);
  const gen = generateText(bm, tok, {
    promptIds,
    maxNewTokens: o.maxNewTokens,
    sampling: o.sampling,
    ignoreEos: o.ignoreEos,
    stopTokenIds: o.stopTokenIds,
    stop: o.stop,
    tag: what,
  });
  for await (const d of gen) if (!o.json && d.text) o.out.write(d.text);
  const r = await gen.done;
  if (r.finishReason === "error") throw new Error(`${what}: ${failureText(r.result)}`);
  if (o.json) {
    const t = r.result.timings;
    const n = r.outputIds.length;
    o.out.write(
      `${JSON.stringify({
        prompt_ids: promptIds,
        ids: r.outputIds,
        text: r.text,
        finish_reason: r.finishReason,
        ...(r.stopString !== undefined ? { stop_string: r.stopString } : {}),
        timings: {
          queue_ms: t.queueMs,
          ttft_ms: t.ttftMs,
          e2e_ms: t.e2eMs,
          tpot_ms: n > 1 ? (t.tokenTimesMs[n - 1] - t.tokenTimesMs[0]) / (n - 1) : null,
          output_tokens_per_s: n / (t.e2eMs / 1000),
        },
      })}\n`,
    );
  } else o.out.write("\n");
  return r;
}

/** Where an interactive conversation reads its turns and writes its replies (a terminal: process.stdin / stdout). */
export interface ChatIo {
  input: NodeJS.ReadableStream;
  output: NodeJS.WritableStream;
}

/**
 * An interactive conversation on a terminal: each line is a user turn, the reply streams back. Ends at an empty
 * line, at the end of input (Ctrl-D), at max_seq_len, or when a reply was cancelled (stdout's reader gone: the
 * batch manager was shut down, so no later turn could run).
 */
export async function interactiveChat(
  bm: BatchManager,
  tok: TextTokenizer,
  o: TextRunOptions,
  system?: string,
  io: ChatIo = { input: process.stdin, output: process.stdout },
): Promise<void> {
  const messages: ChatMessage[] = system ? [{ role: "system", content: system }] : [];
  const rl = readline.createInterface({ input: io.input, output: io.output });
  // Node 20's readline/promises leaves a pending question unsettled when its input ends (Ctrl-D closes the
  // interface): without this race the conversation hung there, and tsllm-run ended only because Node's event loop
  // ran empty, its `finally` (the batch manager's shutdown) never run. `closed` comes first: input that ended
  // during a reply makes the next question reject (ERR_USE_AFTER_CLOSE), and the race then takes the close.
  const closed = new Promise<null>((resolve) => rl.once("close", () => resolve(null)));
  io.output.write("(empty line or Ctrl-D ends the conversation)\n");
  try {
    for (;;) {
      const line = await Promise.race([closed, rl.question("> ")]);
      if (line === null || !line.trim()) break;
      messages.push({ role: "user", content: line });
      const { ids } = tok.applyChatTemplate(messages, { addGenerationPrompt: true });
      const maxNew = Math.min(o.maxNewTokens, bm.limits.maxSeqLen - ids.length);
      if (maxNew < 1) {
        io.output.write(`(the conversation has reached max_seq_len ${bm.limits.maxSeqLen})\n`);
        break;
      }
      const r = await runText(
        bm,
        tok,
        ids,
        { ...o, maxNewTokens: maxNew, json: false, out: io.output },
        "chat",
      );
      if (r.finishReason === "cancelled") break;
      messages.push({ role: "assistant", content: r.text });
    }
  } finally {
    rl.close();
  }
}
