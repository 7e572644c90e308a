// generateText over a scripted batch manager (it hands out a fixed token sequence, one per read, and
// records submit and cancel): the deltas add up to @huggingface/tokenizers' decode of the generated ids,
// a stop string ends the text, cancels the request and is reported, a reader that stops early cancels,
// and bad requests are refused before anything is submitted.
import * as fs from "node:fs";
import * as path from "node:path";
import { Tokenizer } from "@huggingface/tokenizers";
import { describe, expect, it } from "vitest";
import {
  type BatchManager,
  type FinishReason,
  type GenerationRequest,
  type RequestHandle,
  RequestRejectedError,
  type RequestResult,
  type TokenEvent,
} from "../../src/serving/types.ts";
import {
  generateText,
  type TextDelta,
  type TextGeneration,
  type TextRequest,
} from "../../src/text/generate-text.ts";
import { TextTokenizer } from "../../src/text/tokenizer.ts";
import { TINY_LLAMA, tmpDir } from "../fixtures.ts";
import { thrown } from "../thrown.ts";
import { SP_TOKENIZER_JSON } from "./sentencepiece-toy.ts";

const tok = TextTokenizer.load(TINY_LLAMA);
const hf = new Tokenizer(JSON.parse(fs.readFileSync(path.join(TINY_LLAMA, "tokenizer.json"), "utf8")), {
  clean_up_tokenization_spaces: false,
});
/** The reference: the tokenizer library's decode of the whole sequence. */
const reference = (ids: number[], skip = true) =>
  ids.length === 0 ? "" : hf.decode(ids, { skip_special_tokens: skip });
const ids = (text: string) => tok.encode(text, { addSpecialTokens: false });
const EOT = 511; // <|eot_id|>, a special token of the fixture

interface Log {
  submitted: GenerationRequest[];
  cancels: number;
}

/**
 * A batch manager that generates `script` one token per read of the stream (so a cancel lands between two
 * tokens, as at a step boundary) and finishes with `end`, or "cancelled" when cancelled first; cancel is a
 * no-op once finished, as the interface says. `maxNewTokens` < 1 is rejected at submit.
 */
function scripted(script: number[], end: FinishReason = "length"): { manager: BatchManager; log: Log } {
  const log: Log = { submitted: [], cancels: 0 };
  const manager = {
    submit(req: GenerationRequest): RequestHandle {
      if (req.maxNewTokens < 1) throw new RequestRejectedError("invalid", "maxNewTokens must be >= 1");
      log.submitted.push(req);
      const out: number[] = [];
      let finished = false;
      let resolve!: (r: RequestResult) => void;
      const done = new Promise<RequestResult>((r) => {
        resolve = r;
      });
      const finish = (finishReason: FinishReason) => {
        if (finished) return;
        finished = true;
        const tokenTimesMs = out.map((_, i) => i + 1);
        resolve({
          outputIds: [...out],
          finishReason,
          timings: { queueMs: 0, ttftMs: 1, tokenTimesMs, e2eMs: out.length + 1 },
          preemptions: 0,
        } as RequestResult);
      };
      async function* events(): AsyncGenerator<TokenEvent> {
        for (const [index, tokenId] of script.entries()) {
          await Promise.resolve();
          if (finished) return;
          out.push(tokenId);
          yield { tokenId, index, timeMs: index + 1 };
        }
        finish(end);
      }
      return {
        id: log.submitted.length,
        done,
        cancel() {
          log.cancels++;
          finish("cancelled");
        },
        [Symbol.asyncIterator]: () => events(),
      };
    },
  } as unknown as BatchManager;
  return { manager, log };
}

async function drain(g: TextGeneration): Promise<TextDelta[]> {
  const out: TextDelta[] = [];
  for await (const d of g) out.push(d);
  return out;
}

describe("generateText", { timeout: 5000 }, () => {
  it("deltas add up to the decode of the generated ids, one delta per token, each carrying its id", async () => {
    const script = ids("Hello world, 東京 🙂 and Grüße.");
    const { manager, log } = scripted(script, "length");
    const g = generateText(manager, tok, { promptIds: [507], maxNewTokens: script.length });
    const deltas = await drain(g);
    expect(deltas.map((d) => d.tokenIds)).toEqual(script.map((id) => [id]));
    expect(deltas.map((d) => d.text).join("")).toBe("Hello world, 東京 🙂 and Grüße.");
    for (const d of deltas) expect(d.text).not.toContain("\uFFFD");
    const r = await g.done;
    expect(r.text).toBe(reference(script));
    expect(r.outputIds).toEqual(script);
    expect(r.finishReason).toBe("length");
    expect(r.stopString).toBeUndefined();
    expect("stopString" in r).toBe(false);
    expect(r.result.outputIds).toEqual(script);
    // The request as asked reached the manager, once.
    expect(log.submitted).toHaveLength(1);
    expect(log.submitted[0].promptIds).toEqual([507]);
  });

  it("decodes the reply after the prompt: a SentencePiece reply keeps its first space, as vLLM's (' b', not 'b')", async () => {
    const dir = tmpDir();
    fs.writeFileSync(path.join(dir, "tokenizer.json"), JSON.stringify(SP_TOKENIZER_JSON));
    const sp = TextTokenizer.load(dir);
    const g = generateText(scripted([4, 3]).manager, sp, { promptIds: [1, 3], maxNewTokens: 2 });
    expect((await drain(g)).map((d) => d.text)).toEqual([" b", " a"]);
    expect((await g.done).text).toBe(" b a");
  });

  it("without stop strings each delta is the text the token adds (nothing held back: 'Say S' ends in S)", async () => {
    const script = ids("Say S");
    const g = generateText(scripted(script).manager, tok, { promptIds: [507], maxNewTokens: 8 });
    const deltas = await drain(g);
    expect(deltas).toHaveLength(script.length);
    deltas.forEach((d, i) => {
      expect(d.text).toBe(reference(script.slice(0, i + 1)).slice(reference(script.slice(0, i)).length));
    });
    expect(deltas.at(-1)!.text.endsWith("S")).toBe(true);
  });

  it("a cut-off character at the end comes as a last delta of no ids; none when nothing is left", async () => {
    const script = [...ids("ok"), 162, 251]; // e6 9d: the start of 東, then the length limit
    const g = generateText(scripted(script).manager, tok, { promptIds: [507], maxNewTokens: 8 });
    const deltas = await drain(g);
    expect(deltas).toHaveLength(script.length + 1);
    expect(deltas.at(-1)).toEqual({ text: "\uFFFD", tokenIds: [] });
    expect((await g.done).text).toBe(reference(script));
    expect(reference(script)).toBe("ok\uFFFD");
  });

  it("special tokens are left out of the text by default and kept when asked", async () => {
    const script = [...ids("Hi"), EOT];
    const skip = generateText(scripted(script, "stop").manager, tok, { promptIds: [507], maxNewTokens: 8 });
    await drain(skip);
    const r = await skip.done;
    expect(r.text).toBe("Hi");
    expect(r.finishReason).toBe("stop");
    expect(r.outputIds).toEqual(script);
    const keep = generateText(scripted(script, "stop").manager, tok, {
      promptIds: [507],
      maxNewTokens: 8,
      skipSpecialTokens: false,
    });
    await drain(keep);
    expect((await keep.done).text).toBe("Hi<|eot_id|>");
    expect(reference(script, false)).toBe("Hi<|eot_id|>");
  });

  it("the end or stop token that ended generation is not in the text, as vLLM skips it, unless includeStopStr", async () => {
    const text = async (script: number[], req: Partial<TextRequest>) => {
      const g = generateText(scripted(script, "stop").manager, tok, {
        promptIds: [507],
        maxNewTokens: 8,
        ...req,
      });
      const deltas = await drain(g);
      const r = await g.done;
      expect(deltas.map((d) => d.text).join("")).toBe(r.text);
      expect(r.outputIds).toEqual(script); // the id stays in the output ids
      return r.text;
    };
    const dot = ids("Hi.");
    expect(reference(dot)).toBe("Hi.");
    // A stop token id that is not special (tsllm-run --stop-token-ids): was "Hi.".
    expect(await text(dot, { stopTokenIds: [dot.at(-1)!] })).toBe("Hi");
    expect(await text(dot, { stopTokenIds: [dot.at(-1)!], includeStopStr: true })).toBe("Hi.");
    // An end id with special tokens kept: was "Hi<|eot_id|>"; as text only when the stop is asked for.
    const eot = [...ids("Hi"), EOT];
    expect(await text(eot, { endIds: [EOT], skipSpecialTokens: false })).toBe("Hi");
    expect(await text(eot, { endIds: [EOT], skipSpecialTokens: false, includeStopStr: true })).toBe(
      "Hi<|eot_id|>",
    );
    // Under ignoreEos an end id ends nothing, and is text like any other token.
    expect(await text(eot, { endIds: [EOT], skipSpecialTokens: false, ignoreEos: true })).toBe(
      "Hi<|eot_id|>",
    );
  });

  it("includeStopStr: the text ends after the stop string, streamed or not (vLLM's include_stop_str_in_output)", async () => {
    const script = ids("numbers 12345 and more text after");
    const g = generateText(scripted(script, "length").manager, tok, {
      promptIds: [507],
      maxNewTokens: 64,
      stop: ["zzz", "345"],
      includeStopStr: true,
    });
    const deltas = await drain(g);
    const r = await g.done;
    expect(r.text).toBe("numbers 12345");
    expect(deltas.map((d) => d.text).join("")).toBe("numbers 12345");
    expect(r.finishReason).toBe("stop");
    expect(r.stopString).toBe("345");
  });

  it("a stop string spanning tokens ends the text before it, cancels the request, reports stop", async () => {
    const script = ids("numbers 12345 and more text after");
    const { manager, log } = scripted(script, "length");
    const g = generateText(manager, tok, { promptIds: [507], maxNewTokens: 64, stop: ["zzz", "345"] });
    const deltas = await drain(g);
    const r = await g.done;
    expect(r.text).toBe("numbers 12");
    expect(deltas.map((d) => d.text).join("")).toBe("numbers 12");
    expect(r.finishReason).toBe("stop");
    expect(r.stopString).toBe("345");
    expect(r.result.finishReason).toBe("cancelled");
    expect(log.cancels).toBeGreaterThanOrEqual(1);
    // The ids up to and including the token that completed "345", the last delta carrying it.
    const n = r.outputIds.length;
    expect(n).toBeLessThan(script.length);
    expect(r.outputIds).toEqual(script.slice(0, n));
    expect(reference(script.slice(0, n))).toContain("345");
    expect(reference(script.slice(0, n - 1))).not.toContain("345");
    expect(deltas.at(-1)!.tokenIds).toEqual([script[n - 1]]);
    expect(deltas.flatMap((d) => d.tokenIds)).toEqual(r.outputIds);
  });

  it("a stop string completed by the flushed cut-off character still reports stop and the string", async () => {
    const script = [...ids("ok"), 162, 251]; // decodes to "ok\uFFFD" at the length limit
    const g = generateText(scripted(script, "length").manager, tok, {
      promptIds: [507],
      maxNewTokens: 4,
      stop: ["\uFFFD"],
    });
    const deltas = await drain(g);
    const r = await g.done;
    expect(deltas.map((d) => d.text).join("")).toBe("ok");
    expect(r.text).toBe("ok");
    expect(r.finishReason).toBe("stop");
    expect(r.stopString).toBe("\uFFFD");
  });

  it("a stop string that never completes is released at the end", async () => {
    const script = ids("so EN");
    const g = generateText(scripted(script).manager, tok, {
      promptIds: [507],
      maxNewTokens: 8,
      stop: ["END"],
    });
    const deltas = await drain(g);
    const r = await g.done;
    expect(r.text).toBe("so EN");
    expect(deltas.at(-1)).toEqual({ text: "EN", tokenIds: [] });
    expect(r.finishReason).toBe("length");
    expect(r.stopString).toBeUndefined();
  });

  it("a reader that stops early cancels the request; done reports what it read", async () => {
    const script = ids("one two three four five");
    const { manager, log } = scripted(script);
    const g = generateText(manager, tok, { promptIds: [507], maxNewTokens: 64 });
    let k = 0;
    for await (const _ of g) if (++k === 2) break;
    expect(log.cancels).toBe(1);
    const r = await g.done;
    expect(r.finishReason).toBe("cancelled");
    expect(r.outputIds).toEqual(script.slice(0, 2));
    expect(r.text).toBe(reference(script.slice(0, 2)));
  });

  it("cancel() ends the stream at the next token and done says cancelled", async () => {
    const script = ids("one two three four five");
    const { manager, log } = scripted(script);
    const g = generateText(manager, tok, { promptIds: [507], maxNewTokens: 64 });
    const seen: number[] = [];
    for await (const d of g) {
      seen.push(...d.tokenIds);
      if (seen.length === 1) g.cancel();
    }
    expect(seen).toEqual(script.slice(0, 1));
    expect(log.cancels).toBeGreaterThanOrEqual(1);
    expect((await g.done).finishReason).toBe("cancelled");
  });

  it("cancel() while the stream is read: done's text is what the deltas added up to, the flushed tail included", async () => {
    // Cancelled right after the second byte of 東 (e6 9d): the stream ends at the next read and the cut-off character
    // comes out of the flush as U+FFFD, a last delta after the cancel; done must wait for it, not settle at cancel().
    const script = [...ids("ok"), 162, 251, ...ids(" more")];
    const { manager, log } = scripted(script);
    const g = generateText(manager, tok, { promptIds: [507], maxNewTokens: 64 });
    const deltas: TextDelta[] = [];
    for await (const d of g) {
      deltas.push(d);
      if (d.tokenIds[0] === 251) g.cancel();
    }
    const n = ids("ok").length + 2;
    expect(deltas.flatMap((d) => d.tokenIds)).toEqual(script.slice(0, n));
    expect(deltas.at(-1)).toEqual({ text: "\uFFFD", tokenIds: [] });
    const r = await g.done;
    expect(r.finishReason).toBe("cancelled");
    expect(r.outputIds).toEqual(script.slice(0, n));
    expect(r.text).toBe(reference(script.slice(0, n)));
    expect(r.text).toBe("ok\uFFFD");
    expect(deltas.map((d) => d.text).join("")).toBe(r.text);
    expect(log.cancels).toBeGreaterThanOrEqual(1);
  });

  it("cancel() before the stream is read still settles done, as cancelled with nothing generated", async () => {
    const { manager, log } = scripted(ids("never read"));
    const g = generateText(manager, tok, { promptIds: [507], maxNewTokens: 8 });
    g.cancel();
    const r = await g.done;
    expect(r.finishReason).toBe("cancelled");
    expect(r.outputIds).toEqual([]);
    expect(r.text).toBe("");
    expect(log.cancels).toBe(1);
    // reading afterwards yields nothing and leaves the result as it was
    expect(await drain(g)).toEqual([]);
    expect((await g.done).finishReason).toBe("cancelled");
  });

  it("without a tokenizer: ids only, empty text, and stop strings are refused before anything is submitted", async () => {
    const script = [5, 6, 7];
    const { manager, log } = scripted(script, "stop");
    const g = generateText(manager, null, { promptIds: [1], maxNewTokens: 3 });
    const deltas = await drain(g);
    expect(deltas).toEqual(script.map((id) => ({ text: "", tokenIds: [id] })));
    const r = await g.done;
    expect(r).toMatchObject({ text: "", outputIds: script, finishReason: "stop" });
    const e = thrown(
      () => generateText(manager, null, { promptIds: [1], maxNewTokens: 3, stop: ["x"] }),
      Error,
    );
    expect(e.message).toBe("stop strings need a tokenizer");
    expect(log.submitted).toHaveLength(1);
    // An empty stop list is no stop string.
    await drain(generateText(manager, null, { promptIds: [1], maxNewTokens: 3, stop: [] }));
    expect(log.submitted).toHaveLength(2);
  });

  it("a request the manager rejects throws at once, as submit does", () => {
    const { manager } = scripted([1]);
    const e = thrown(
      () => generateText(manager, tok, { promptIds: [1], maxNewTokens: 0 }),
      RequestRejectedError,
    );
    expect(e.reason).toBe("invalid");
  });
});
