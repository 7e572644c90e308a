// The tokenizer against what transformers' AutoTokenizer produced (tokenizer-golden.json), in the
// transformers 5 layout of the fixture and in the older layouts derived from it.
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { TextTokenizer, tokenizerFilesIn } from "../../src/text/tokenizer.ts";
import { TINY_LLAMA, tmpDir } from "../fixtures.ts";

interface Golden {
  encode: { text: string; ids: number[]; decoded: string; decoded_skip_special: string }[];
  chat: { messages: { role: string; content: string }[]; text: string; ids: number[] }[];
}
const golden: Golden = JSON.parse(fs.readFileSync(path.join(TINY_LLAMA, "tokenizer-golden.json"), "utf8"));
const TEMPLATE = fs.readFileSync(path.join(TINY_LLAMA, "chat_template.jinja"), "utf8");

/** A copy of the fixture's tokenizer files with tokenizer_config.json rewritten by `edit`, and no .jinja. */
function olderLayout(edit: (cfg: Record<string, unknown>) => void): string {
  const dir = tmpDir("tsllm-tok-");
  for (const f of ["tokenizer.json", "generation_config.json"])
    fs.copyFileSync(path.join(TINY_LLAMA, f), path.join(dir, f));
  const cfg = JSON.parse(fs.readFileSync(path.join(TINY_LLAMA, "tokenizer_config.json"), "utf8"));
  edit(cfg);
  fs.writeFileSync(path.join(dir, "tokenizer_config.json"), JSON.stringify(cfg));
  return dir;
}

function checkGolden(tok: TextTokenizer): void {
  for (const e of golden.encode) {
    expect(tok.encode(e.text), e.text).toEqual(e.ids);
    expect(tok.decode(e.ids)).toBe(e.decoded);
    expect(tok.decode(e.ids, { skipSpecialTokens: true })).toBe(e.decoded_skip_special);
  }
  for (const c of golden.chat) {
    const got = tok.applyChatTemplate(c.messages, { addGenerationPrompt: true });
    expect(got.text).toBe(c.text);
    expect(got.ids).toEqual(c.ids);
  }
}

describe("tokenizer (tiny-llama, transformers 5 layout)", () => {
  const tok = TextTokenizer.load(TINY_LLAMA);

  it("reproduces every tokenizer-golden.json entry", () => {
    expect(golden.encode.length).toBe(9);
    expect(golden.chat.length).toBe(2);
    checkGolden(tok);
  });

  it("takes bos/eos from generation_config.json first, then the tokenizer's eos", () => {
    expect(tok.bosToken).toBe("<|begin_of_text|>");
    expect(tok.eosToken).toBe("<|eot_id|>");
    expect(tok.bosTokenId).toBe(507);
    expect(tok.eosTokenIds).toEqual([508, 511]);
    expect(tok.maxTokenId).toBe(511);
    expect(tok.isSpecial(511)).toBe(true);
    expect(tok.isSpecial(39)).toBe(false);
  });

  it("lists the files it was built from", () => {
    expect(tokenizerFilesIn(TINY_LLAMA)).toEqual([
      "tokenizer.json",
      "tokenizer_config.json",
      "generation_config.json",
      "chat_template.jinja",
    ]);
  });
});

describe("tokenizer: older layouts", () => {
  it("chat_template inside tokenizer_config.json", () => {
    const dir = olderLayout((c) => {
      c.chat_template = TEMPLATE;
    });
    checkGolden(TextTokenizer.load(dir));
  });

  it("list-of-named-templates form, default and by name", () => {
    const dir = olderLayout((c) => {
      c.chat_template = [
        { name: "default", template: TEMPLATE },
        { name: "shout", template: "{% for m in messages %}{{ m['content'] | upper }}{% endfor %}" },
      ];
    });
    const tok = TextTokenizer.load(dir);
    checkGolden(tok);
    expect(tok.applyChatTemplate([{ role: "user", content: "Hi" }], { name: "shout" }).text).toBe("HI");
    expect(() => tok.applyChatTemplate([], { name: "nope" })).toThrow(
      /no chat template named "nope" \(have: default, shout\)/,
    );
  });

  it("special tokens as AddedToken dicts in special_tokens_map.json, eos from the tokenizer alone", () => {
    const dir = olderLayout((c) => {
      delete c.bos_token;
      delete c.eos_token;
      c.chat_template = TEMPLATE;
    });
    fs.rmSync(path.join(dir, "generation_config.json"));
    fs.writeFileSync(
      path.join(dir, "special_tokens_map.json"),
      JSON.stringify({
        bos_token: {
          content: "<|begin_of_text|>",
          lstrip: false,
          normalized: false,
          rstrip: false,
          single_word: false,
        },
        eos_token: {
          content: "<|eot_id|>",
          lstrip: false,
          normalized: false,
          rstrip: false,
          single_word: false,
        },
      }),
    );
    const tok = TextTokenizer.load(dir);
    expect(tok.eosTokenIds).toEqual([511]);
    expect(tok.bosTokenId).toBe(507);
    checkGolden(tok);
  });

  it("refuses a malformed template list and a folder without tokenizer.json, naming the file", () => {
    const bad = olderLayout((c) => {
      c.chat_template = [{ name: "default" }];
    });
    expect(() => TextTokenizer.load(bad)).toThrow(/tokenizer_config.json: chat_template\[0\] must be/);
    expect(() => TextTokenizer.load(tmpDir())).toThrow(/no tokenizer.json/);
    const noTemplate = olderLayout(() => {});
    expect(() => TextTokenizer.load(noTemplate).applyChatTemplate([])).toThrow(/has no chat template/);
  });
});
