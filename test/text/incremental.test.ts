// Streaming detokenisation and stop strings: the concatenated stream equals the one-shot decode, and a
// character split over several byte-level tokens is released whole, never as U+FFFD.
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { IncrementalDecoder, StopStrings, TextStream } from "../../src/text/incremental.ts";
import { TextTokenizer } from "../../src/text/tokenizer.ts";
import { TINY_LLAMA } from "../fixtures.ts";

const tok = TextTokenizer.load(TINY_LLAMA);

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
        fc.array(fc.string({ unit: fc.constantFrom("a", "b", "c"), minLength: 1, maxLength: 3 }), { maxLength: 3 }),
        fc.array(fc.nat(30), { maxLength: 6 }),
        (text, stops, cuts) => {
          const whole = new StopStrings(stops);
          const expected = whole.push(text) + whole.flush();
          const s = new StopStrings(stops);
          const at = [...new Set(cuts.map((c) => Math.min(c, text.length)))].sort((a, b) => a - b);
          let out = "";
          let prev = 0;
          for (const c of [...at, text.length]) {
            out += s.push(text.slice(prev, c));
            prev = c;
          }
          out += s.flush();
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
});

describe("TextStream", () => {
  it("stops at a stop string that spans tokens", () => {
    const ids = tok.encode("numbers 12345 and 3.14", { addSpecialTokens: false });
    const t = new TextStream(tok, ["345"]);
    for (const id of ids) {
      t.push(id);
      if (t.stopped) break;
    }
    t.flush();
    expect(t.text).toBe("numbers 12");
    expect(t.stopped).toBe(true);
  });
});
