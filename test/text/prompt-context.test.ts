// The first generated tokens are decoded after the prompt's last tokens, as vLLM's detokenizer is primed with them
// (FastIncrementalDetokenizer): a SentencePiece decoder strips the space of the first token it decodes, so a reply
// decoded on its own lost its first space ("▁Paris" → "Paris", where vLLM answers " Paris").
import { Tokenizer } from "@huggingface/tokenizers";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { promptContext, TextStream } from "../../src/text/incremental.ts";
import { TextTokenizer } from "../../src/text/tokenizer.ts";
import { TINY_LLAMA } from "../fixtures.ts";
import { SP_TOKENIZER_JSON } from "./sentencepiece-toy.ts";

const sp = new Tokenizer(SP_TOKENIZER_JSON, { clean_up_tokenization_spaces: false });
const spDecoder = {
  decode: (ids: number[], o: { skipSpecialTokens?: boolean } = {}) =>
    ids.length === 0 ? "" : sp.decode(ids, { skip_special_tokens: o.skipSpecialTokens ?? false }),
};
const llama = TextTokenizer.load(TINY_LLAMA);

/** What a stream after `prompt` releases for `out`, all of it. */
function streamed(tok: typeof spDecoder, prompt: number[], out: number[]): string {
  const s = new TextStream(tok, [], true, prompt);
  return out.map((id) => s.push(id)).join("") + s.flush();
}

describe("streams decode after the prompt (vLLM's primed detokenizer)", () => {
  it("a SentencePiece reply keeps its first word's space: <s> ▁a | ▁b ▁a → ' b a'", () => {
    expect(spDecoder.decode([4, 3])).toBe("b a"); // the one-shot decode of the reply alone strips it
    expect(streamed(spDecoder, [1, 3], [4, 3])).toBe(" b a");
    expect(streamed(spDecoder, [1, 3, 3, 3, 3, 3, 3], [4])).toBe(" b");
    // After a prompt of only special tokens (skipped) there is no text before it: stripped, as vLLM's is.
    expect(streamed(spDecoder, [1], [4])).toBe("b");
    // No prompt: as before.
    expect(streamed(spDecoder, [], [4, 3])).toBe("b a");
  });

  it("the reply is the decode of prompt + reply less the decode of the prompt's context, for any tokens", () => {
    fc.assert(
      fc.property(
        fc.array(fc.integer({ min: 0, max: 10 }), { maxLength: 30 }),
        fc.array(fc.integer({ min: 0, max: 10 }), { maxLength: 12 }),
        (prompt, out) => {
          const ctx = promptContext(spDecoder, prompt);
          const o = { skipSpecialTokens: true };
          const before = spDecoder.decode(ctx, o);
          // A context with a cut character (no suffix decodes whole): prompt-context-vllm.test.ts compares that case
          // with vLLM's stream, whose priming keeps the cut character's bytes for the reply to finish.
          fc.pre(!before.includes("\uFFFD"));
          const whole = spDecoder.decode([...ctx, ...out], o);
          expect(whole.startsWith(before)).toBe(true);
          expect(streamed(spDecoder, prompt, out)).toBe(whole.slice(before.length));
        },
      ),
      { numRuns: 500 },
    );
  });

  it("the context is the shortest suffix of 4 to 23 tokens with no cut character, else the whole prompt", () => {
    const hello = llama.encode("Hello world", { addSpecialTokens: false });
    expect(promptContext(llama, [507, ...hello])).toEqual(hello.slice(-4));
    expect(promptContext(llama, [507, 39])).toEqual([507, 39]);
    expect(promptContext(llama, [])).toEqual([]);
    // 東 is bytes 162 251 109: a suffix starting at 251 or 109 cuts it, so the context reaches back to 162.
    expect(promptContext(llama, [39, 39, 39, 39, 162, 251, 109, 39, 39])).toEqual([162, 251, 109, 39, 39]);
    // A prompt that ends in the middle of a character: every suffix is cut, so the whole prompt (as vLLM's).
    expect(promptContext(llama, [39, 39, 39, 39, 39, 162, 251])).toEqual([39, 39, 39, 39, 39, 162, 251]);
    // Byte-level tokens decode the same after any context: the reply's text is its own decode.
    const s = new TextStream(llama, [], true, [507, ...hello]);
    const reply = llama.encode(" 東京 ok", { addSpecialTokens: false });
    expect(reply.map((id) => s.push(id)).join("") + s.flush()).toBe(" 東京 ok");
  });

  it("the whole prompt for one that starts inside a character; special tokens skipped; [] never decoded", () => {
    // 251 109 are the last bytes of 東 (e6 9d b1): every suffix from 4 tokens to the whole prompt starts inside it, so
    // none qualifies (a suffix shorter than 4, [39] here, is never tried): the whole prompt, as vLLM's.
    expect(llama.decode([109, 39, 39, 39])).toMatch(/^\uFFFD/);
    expect(llama.decode([251, 109, 39, 39, 39])).toMatch(/^\uFFFD/);
    expect(llama.decode([39])).toBe("H");
    expect(promptContext(llama, [251, 109, 39, 39, 39])).toEqual([251, 109, 39, 39, 39]);
    // <|begin_of_text|> inside 東's bytes: checked with it skipped (vLLM's check, tokenizers' decode default), the
    // bytes join up to 東; kept, the token cuts the character in two. Four tokens or fewer: the whole prompt anyway.
    const split = [162, 507, 251, 109];
    expect(llama.decode(split, { skipSpecialTokens: true })).toBe("東");
    expect(llama.decode(split, { skipSpecialTokens: false })).toContain("\uFFFD");
    expect(promptContext(llama, split)).toEqual(split);
    expect(promptContext(llama, [39, ...split])).toEqual(split);
    // @huggingface/tokenizers refuses to decode an empty list; an empty prompt has no context without asking it.
    // (The stream itself decodes empty windows, so its decoders map [] to "", as TextTokenizer does.)
    const raw = { decode: (ids: number[]) => sp.decode(ids, { skip_special_tokens: true }) };
    expect(() => raw.decode([])).toThrow();
    expect(promptContext(raw, [])).toEqual([]);
  });
});
