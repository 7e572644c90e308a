// Streaming detokenisation and stop strings: the concatenated stream equals the one-shot decode, and a
// character split over several byte-level tokens is released whole, never as U+FFFD.
import * as fs from "node:fs";
import * as path from "node:path";
import { Tokenizer } from "@huggingface/tokenizers";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { IncrementalDecoder, StopStrings, TextStream } from "../../src/text/incremental.ts";
import { TextTokenizer } from "../../src/text/tokenizer.ts";
import { TINY_LLAMA, tmpDir } from "../fixtures.ts";
import { SP_TOKENIZER_JSON } from "./sentencepiece-toy.ts";

const tok = TextTokenizer.load(TINY_LLAMA);

// The reference for what a stream must add up to: @huggingface/tokenizers' own decode of the whole
// sequence, the tokenizer built straight from the fixture (no cleanup of spaces, as transformers 5 does
// for this folder); checked against transformers' decodes in tokenizer-golden.json below.
const json = (f: string) => JSON.parse(fs.readFileSync(path.join(TINY_LLAMA, f), "utf8"));
const hf = new Tokenizer(json("tokenizer.json"), { clean_up_tokenization_spaces: false });
const golden: { text: string; ids: number[]; decoded: string; decoded_skip_special: string }[] =
  json("tokenizer-golden.json").encode;
const reference = (ids: number[], skip: boolean) =>
  ids.length === 0 ? "" : hf.decode(ids, { skip_special_tokens: skip });
/** Ids 0–255 of the fixture are its 256 single bytes, 507–511 its special tokens. */
const BYTE = fc.integer({ min: 0, max: 255 });
const ANY_ID = fc.oneof(BYTE, fc.integer({ min: 0, max: 506 }), fc.integer({ min: 507, max: 511 }));

/** Pieces of a whole stream: every push, then the flush. */
function stream(ids: number[], skip?: boolean): string[] {
  const d = skip === undefined ? new IncrementalDecoder(tok) : new IncrementalDecoder(tok, skip);
  const pieces = ids.map((id) => d.push(id));
  pieces.push(d.flush());
  return pieces;
}

/** `text` pushed into `s` in pieces cut at `cuts` (clamped, deduplicated, in order), then flushed: all it released. */
function pushInPieces(s: StopStrings, text: string, cuts: number[]): string {
  const at = [...new Set(cuts.map((c) => Math.min(c, text.length)))].sort((x, y) => x - y);
  let out = "";
  let prev = 0;
  for (const c of [...at, text.length]) {
    out += s.push(text.slice(prev, c));
    prev = c;
  }
  return out + s.flush();
}
describe("IncrementalDecoder", () => {
  it("releases multi-byte characters only when complete (東京: 3 tokens each, 🙂: 4)", () => {
    const ids = tok.encode("東京 emoji 🙂 ok Grüße", { addSpecialTokens: false });
    const d = new IncrementalDecoder(tok);
    const pieces = ids.map((id) => d.push(id));
    pieces.push(d.flush());
    expect(pieces.join("")).toBe("東京 emoji 🙂 ok Grüße");
    for (const p of pieces) expect(p).not.toContain("\uFFFD");
    // 東 is bytes e6 9d b1 = ids 162 251 109: nothing until the third.
    expect(pieces.slice(0, 3)).toEqual(["", "", "東"]);
    expect(pieces).toContain("🙂");
  });

  it("equals the one-shot decode for any text, special tokens skipped", () => {
    fc.assert(
      fc.property(fc.string({ unit: "grapheme", maxLength: 24 }), (s) => {
        const ids = tok.encode(s);
        const d = new IncrementalDecoder(tok);
        const out = ids.map((id) => d.push(id)).join("") + d.flush();
        expect(out).toBe(tok.decode(ids, { skipSpecialTokens: true }));
      }),
      { numRuns: 200 },
    );
  });

  it("a character cut off at the end flushes as U+FFFD, as a one-shot decode does", () => {
    const d = new IncrementalDecoder(tok);
    expect(d.push(162) + d.push(251)).toBe("");
    expect(d.flush()).toBe(tok.decode([162, 251]));
  });
  it("the reference decode agrees with transformers' decodes of the golden ids", () => {
    for (const g of golden) {
      expect(reference(g.ids, true)).toBe(g.decoded_skip_special);
      expect(reference(g.ids, false)).toBe(g.decoded);
    }
  });

  it("streams of the golden ids add up to transformers' decode; special tokens skipped by default", () => {
    for (const g of golden) {
      expect(stream(g.ids).join("")).toBe(g.decoded_skip_special);
      expect(stream(g.ids, true).join("")).toBe(g.decoded_skip_special);
      expect(stream(g.ids, false).join("")).toBe(g.decoded);
    }
  });

  it("any token sequence (bytes that split or break characters, special tokens) adds up to the whole decode", () => {
    fc.assert(
      fc.property(fc.array(ANY_ID, { maxLength: 24 }), fc.boolean(), (ids, skip) => {
        const pieces = stream(ids, skip);
        const whole = reference(ids, skip);
        expect(pieces.join("")).toBe(whole);
        // A push never shows half a character; only the flush may end in U+FFFD, and it has something to
        // release only when the text ends in a cut-off character.
        for (const p of pieces.slice(0, -1)) expect(p.endsWith("\uFFFD")).toBe(false);
        if (pieces.at(-1) !== "") expect(whole.endsWith("\uFFFD")).toBe(true);
      }),
      { numRuns: 1500 },
    );
  });

  it("a flush after released text gives only the cut-off character (e6 9d: one U+FFFD), not the text again", () => {
    const a = tok.encode("a", { addSpecialTokens: false });
    expect(a).toHaveLength(1);
    const d = new IncrementalDecoder(tok);
    expect(d.push(a[0])).toBe("a");
    expect(d.push(162) + d.push(251)).toBe("");
    expect(d.flush()).toBe("\uFFFD");
    expect(reference([a[0], 162, 251], true)).toBe("a\uFFFD");
    // Nothing is held any more.
    expect(d.flush()).toBe("");
  });
});

// A SentencePiece-style tokenizer (sentencepiece-toy.ts): the decoder strips the space of whatever token comes
// first, so a window that started at a skipped special token would lose the space of the word after it.
const sp = new Tokenizer(SP_TOKENIZER_JSON, { clean_up_tokenization_spaces: false });
const spDecoder = {
  decode: (ids: number[], o: { skipSpecialTokens?: boolean } = {}) =>
    ids.length === 0 ? "" : sp.decode(ids, { skip_special_tokens: o.skipSpecialTokens ?? false }),
};

describe("IncrementalDecoder, SentencePiece-style decoder", () => {
  it("keeps the space of a word after a skipped special token (a <s> b → 'a b')", () => {
    expect(sp.decode([3, 1, 4], { skip_special_tokens: true })).toBe("a b");
    const d = new IncrementalDecoder(spDecoder);
    expect([d.push(3), d.push(1), d.push(4), d.flush()]).toEqual(["a", "", " b", ""]);
    expect(sp.decode([4], { skip_special_tokens: true })).toBe("b"); // the first token's space is stripped
  });

  it("any token sequence adds up to the tokenizer's decode of the whole", () => {
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 0, max: 10 }), { maxLength: 12 }), fc.boolean(), (ids, skip) => {
        const d = new IncrementalDecoder(spDecoder, skip);
        const out = ids.map((id) => d.push(id)).join("") + d.flush();
        expect(out).toBe(spDecoder.decode(ids, { skipSpecialTokens: skip }));
      }),
      { numRuns: 1000 },
    );
  });
});

describe("StopStrings", () => {
  it("holds back a possible stop prefix and cuts at the earliest stop", () => {
    const s = new StopStrings(["END", "xy"]);
    expect(s.push("abc E")).toBe("abc ");
    expect(s.push("N")).toBe("");
    expect(s.push("D tail")).toBe("");
    expect(s.matched).toBe("END");
    expect(s.flush()).toBe("");
  });

  it("releases held text that turned out not to be a stop", () => {
    const s = new StopStrings(["END"]);
    expect(s.push("aE")).toBe("a");
    expect(s.push("Nx")).toBe("ENx");
    expect(s.push("EN")).toBe("");
    expect(s.flush()).toBe("EN");
    expect(s.matched).toBeNull();
  });

  it("any split of a text into chunks gives the same output as the whole", () => {
    fc.assert(
      fc.property(
        fc.string({ unit: fc.constantFrom("a", "b", "c"), maxLength: 30 }),
        fc.array(fc.string({ unit: fc.constantFrom("a", "b", "c"), minLength: 1, maxLength: 3 }), {
          maxLength: 3,
        }),
        fc.array(fc.nat(30), { maxLength: 6 }),
        (text, stops, cuts) => {
          const whole = new StopStrings(stops);
          const expected = whole.push(text) + whole.flush();
          const s = new StopStrings(stops);
          const out = pushInPieces(s, text, cuts);
          expect(out).toBe(expected);
          expect(s.matched === null).toBe(whole.matched === null);
          // The output never contains a stop string, and is a prefix of the text.
          expect(text.startsWith(out)).toBe(true);
          for (const st of stops) expect(out.includes(st)).toBe(false);
        },
      ),
      { numRuns: 300 },
    );
  });
  it("an empty stop string is ignored, not a stop at offset 0", () => {
    const s = new StopStrings(["", "zz"]);
    expect(s.push("abc")).toBe("abc");
    expect(s.flush()).toBe("");
    expect(s.matched).toBeNull();
  });

  it("the stop that completes first wins; of two completing together, the longer (earlier start), in any order", () => {
    // "bc" ends at 3 in "abcd", "abcd" at 4: generation would have ended at "bc".
    for (const stops of [
      ["abcd", "bc"],
      ["bc", "abcd"],
    ]) {
      const s = new StopStrings(stops);
      expect(s.push("abcd")).toBe("a");
      expect(s.matched).toBe("bc");
    }
    // "abc" and "bc" both end at 4 in "xabc": cut where "abc" begins, whichever comes first in the list.
    for (const stops of [
      ["abc", "bc"],
      ["bc", "abc"],
    ]) {
      const s = new StopStrings(stops);
      expect(s.push("xabcd")).toBe("x");
      expect(s.matched).toBe("abc");
    }
  });

  it("matches a character-by-character scan: cut before the longest stop ending at the first end position", () => {
    /** Independent oracle: walk the text's end positions; the first where some stop ends decides. */
    const scan = (text: string, stops: string[]) => {
      for (let e = 1; e <= text.length; e++) {
        const ending = stops.filter((st) => st.length > 0 && text.slice(0, e).endsWith(st));
        if (ending.length > 0) {
          const longest = ending.reduce((x, y) => (y.length > x.length ? y : x));
          return { out: text.slice(0, e - longest.length), matched: longest };
        }
      }
      return { out: text, matched: null };
    };
    const ab = fc.constantFrom("a", "b", "c");
    fc.assert(
      fc.property(
        fc.string({ unit: ab, maxLength: 20 }),
        fc.array(fc.string({ unit: ab, maxLength: 4 }), { maxLength: 4 }),
        fc.array(fc.nat(20), { maxLength: 5 }),
        (text, stops, cuts) => {
          const want = scan(text, stops);
          const s = new StopStrings(stops);
          const out = pushInPieces(s, text, cuts);
          expect(out).toBe(want.out);
          expect(s.matched).toBe(want.matched);
        },
      ),
      { numRuns: 500 },
    );
  });

  it("a second flush releases nothing", () => {
    const s = new StopStrings(["END"]);
    expect(s.push("xEN")).toBe("x");
    expect(s.flush()).toBe("EN");
    expect(s.flush()).toBe("");
  });
});

describe("TextStream", () => {
  it("stops at a stop string that spans tokens", () => {
    const ids = tok.encode("numbers 12345 and 3.14", { addSpecialTokens: false });
    const t = new TextStream(tok, ["345"]);
    for (const id of ids) {
      t.push(id);
      if (t.stopped) break;
    }
    expect(t.flush()).toBe("");
    expect(t.text).toBe("numbers 12");
    expect(t.stopped).toBe(true);
    expect(t.stopString).toBe("345");
  });

  it("without a stop string nothing is held back, and nothing has stopped", () => {
    for (const text of [...golden.map((g) => g.text), "Say S", "Stop"]) {
      const ids = tok.encode(text, { addSpecialTokens: false });
      const t = new TextStream(tok);
      const want = stream(ids);
      expect(ids.map((id) => t.push(id))).toEqual(want.slice(0, -1));
      expect(t.flush()).toBe(want.at(-1));
      expect(t.stopped).toBe(false);
      expect(t.stopString).toBeNull();
    }
  });

  it("skips special tokens by default, keeps them when asked (transformers' decodes)", () => {
    for (const g of golden) {
      const skip = new TextStream(tok);
      const keep = new TextStream(tok, [], false);
      for (const id of g.ids) {
        skip.push(id);
        keep.push(id);
      }
      skip.flush();
      keep.flush();
      expect(skip.text).toBe(g.decoded_skip_special);
      expect(keep.text).toBe(g.decoded);
    }
  });

  it("a folder that cleans up spaces (clean_up_tokenization_spaces, as Llama 3's): every character streamed, none cleaned", () => {
    // The tiny-llama tokenizer with the folder's clean-up on. Before, the stream decoded with it: " ." became "."
    // after the space was released, the text shifted under the decoder's offsets, and "a", " ", ".", "b" streamed
    // "a b" (the "." lost). The stream never cleans up (as vLLM's detokenizer): it adds up to the plain decode.
    const dir = tmpDir();
    fs.copyFileSync(path.join(TINY_LLAMA, "tokenizer.json"), path.join(dir, "tokenizer.json"));
    const cfg = { ...json("tokenizer_config.json"), clean_up_tokenization_spaces: true };
    fs.writeFileSync(path.join(dir, "tokenizer_config.json"), JSON.stringify(cfg));
    const clean = TextTokenizer.load(dir);
    const enc = (x: string) => clean.encode(x, { addSpecialTokens: false });
    for (const parts of [
      ["a", " ", ".", "b"],
      ["it", " ", "'s", " ok"],
      ["x", " ", ",", " y", " ", "?"],
    ]) {
      const ids = parts.flatMap(enc);
      const t = new TextStream(clean);
      const pushed = ids.map((id) => t.push(id)).join("") + t.flush();
      expect(pushed, JSON.stringify(parts)).toBe(parts.join(""));
      expect(t.text).toBe(parts.join(""));
    }
    expect(clean.decode(enc("a .b"))).toBe("a.b"); // the folder's one-shot decode does clean up
  });

  it("the flush releases a held-back start of a stop string that never completed, and a cut-off character", () => {
    const ids = tok.encode("so EN", { addSpecialTokens: false });
    const t = new TextStream(tok, ["END"]);
    const pushed = ids.map((id) => t.push(id)).join("");
    expect(pushed).toBe("so ");
    expect(t.flush()).toBe("EN");
    expect(t.text).toBe("so EN");
    expect(t.stopped).toBe(false);
    // e6 9d: the start of 東, cut off; flushed as U+FFFD as the whole decode has it.
    const u = new TextStream(tok, ["END"]);
    expect(u.push(162) + u.push(251)).toBe("");
    expect(u.flush()).toBe("\uFFFD");
  });
});
