// The stream's priming against a port of vLLM's FastIncrementalDetokenizer (vllm/v1/engine/detokenizer.py): the
// prompt suffix is the shortest of 4 to 23 tokens that decodes without U+FFFD, else THE WHOLE PROMPT (a prompt of 4
// tokens or fewer is always whole), and the DecodeStream is primed by stepping through it. A prompt that ends inside
// a character (token-id prompts can) then has its character finished by the reply: vLLM answers "東", where a stream
// primed with nothing answered "\uFFFD" (the reply's last byte of 東 decoded alone).
import { Tokenizer } from "@huggingface/tokenizers";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { type Decoder, TextStream } from "../../src/text/incremental.ts";
import { TextTokenizer } from "../../src/text/tokenizer.ts";
import { TINY_LLAMA } from "../fixtures.ts";
import { SP_TOKENIZER_JSON } from "./sentencepiece-toy.ts";

const llama = TextTokenizer.load(TINY_LLAMA);
const sp = new Tokenizer(SP_TOKENIZER_JSON, { clean_up_tokenization_spaces: false });
const spDecoder: Decoder = {
  decode: (ids, o = {}) =>
    ids.length === 0 ? "" : sp.decode(ids, { skip_special_tokens: o.skipSpecialTokens ?? false }),
};
const FFFD = "\uFFFD";

/** vLLM's reply text: FastIncrementalDetokenizer's prompt suffix, then tokenizers' DecodeStream.step for each id. */
function vllmText(tok: Decoder, prompt: number[], out: number[]): string {
  let suffix = prompt;
  if (prompt.length > 4)
    for (let i = 4; i < Math.min(prompt.length + 1, 24); i++) {
      const s = prompt.slice(-i);
      if (!tok.decode(s, { skipSpecialTokens: true }).includes(FFFD)) {
        suffix = s;
        break;
      }
    }
  const o = { skipSpecialTokens: true };
  let ids: number[] = [];
  let prefix = "";
  let prefixIndex = 0;
  const step = (id: number): string => {
    ids.push(id);
    const str = tok.decode(ids, o);
    if (str.length > prefix.length && !str.endsWith(FFFD)) {
      const text = str.slice(prefix.length);
      const next = ids.length - prefixIndex;
      ids = ids.slice(prefixIndex);
      prefix = tok.decode(ids, o);
      prefixIndex = next;
      return text;
    }
    return "";
  };
  for (const id of suffix) step(id);
  return out.map(step).join("");
}

/** What a stream after `prompt` releases for `out`; `flush`: with what it still holds at the end too. */
function streamed(tok: Decoder, prompt: number[], out: number[], flush = true): string {
  const s = new TextStream(tok, [], true, prompt);
  return out.map((id) => s.push(id)).join("") + (flush ? s.flush() : "");
}

describe("a stream primed as vLLM primes its detokenizer", () => {
  it("a prompt ending inside a character: the reply finishes it (東, not U+FFFD)", () => {
    // 東 is bytes e6 9d b1 = ids 162 251 109 of the fixture; 39 is "H".
    expect(vllmText(llama, [39, 39, 39, 39, 39, 162, 251], [109, 39])).toBe("東H");
    expect(streamed(llama, [39, 39, 39, 39, 39, 162, 251], [109, 39])).toBe("東H");
    // Four tokens or fewer: vLLM always primes with the whole prompt.
    expect(streamed(llama, [162, 251], [109])).toBe("東");
    // The prompt's cut character is never flushed as the reply's text: a reply of nothing (its end token left out)
    // stays empty; one that ends inside a character of its own flushes that one as U+FFFD, as before.
    expect(streamed(llama, [39, 39, 39, 39, 39, 162, 251], [])).toBe("");
    expect(streamed(llama, [39, 39, 39, 39, 39, 39], [39, 162])).toBe("H\uFFFD");
  });

  it("a SentencePiece prompt starting inside a character keeps the reply's first space", () => {
    // <0x9D> <0xB1> ▁a ▁a ▁a: every suffix starts inside 東, so vLLM primes with all of it; ▁b then decodes " b".
    expect(vllmText(spDecoder, [9, 10, 3, 3, 3], [4])).toBe(" b");
    expect(streamed(spDecoder, [9, 10, 3, 3, 3], [4])).toBe(" b");
  });

  // Without the end's flush: a reply ending inside a character is released as U+FFFD here (as transformers' decode
  // gives it), where vLLM's DecodeStream keeps it back for good.
  it("releases what vLLM's stream releases, for any prompt and reply (byte-level and SentencePiece)", () => {
    const BYTES = fc.oneof(fc.integer({ min: 0, max: 511 }), fc.constantFrom(162, 251, 109, 39, 507));
    fc.assert(
      fc.property(
        fc.array(BYTES, { maxLength: 30 }),
        fc.array(BYTES, { minLength: 1, maxLength: 8 }),
        (p, o) => {
          expect(streamed(llama, p, o, false)).toBe(vllmText(llama, p, o));
        },
      ),
      { numRuns: 500 },
    );
    fc.assert(
      fc.property(
        fc.array(fc.integer({ min: 0, max: 10 }), { maxLength: 30 }),
        fc.array(fc.integer({ min: 0, max: 10 }), { minLength: 1, maxLength: 8 }),
        (p, o) => {
          expect(streamed(spDecoder, p, o, false)).toBe(vllmText(spDecoder, p, o));
        },
      ),
      { numRuns: 500 },
    );
  });
});
