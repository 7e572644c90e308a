// TextTokenizer.load and the engine's tokenizer files (src/text/tokenizer.ts, src/text/engine-files.ts)
// called in-process on copies of tiny-llama's tokenizer in temporary folders: which files are read, where
// bos / eos / special tokens come from, and each refusal as its one-line message naming the file.
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { findTokenizer, requireTokenizer, tokenizerForEngine } from "../../src/text/engine-files.ts";
import { TextTokenizer, TokenizerError, tokenizerFilesIn } from "../../src/text/tokenizer.ts";
import { TINY_LLAMA, tmpDir } from "../fixtures.ts";
import { thrown } from "../thrown.ts";

const TEMPLATE = fs.readFileSync(path.join(TINY_LLAMA, "chat_template.jinja"), "utf8");
const golden = JSON.parse(fs.readFileSync(path.join(TINY_LLAMA, "tokenizer-golden.json"), "utf8"));
const FIXTURE_FILES = [
  "tokenizer.json",
  "tokenizer_config.json",
  "generation_config.json",
  "chat_template.jinja",
];

/** A temporary folder with tiny-llama's tokenizer.json and the other files given (objects as JSON). */
function folder(files: Record<string, unknown> = {}): string {
  const dir = tmpDir("tsllm-tokload-");
  fs.copyFileSync(path.join(TINY_LLAMA, "tokenizer.json"), path.join(dir, "tokenizer.json"));
  for (const [name, v] of Object.entries(files))
    fs.writeFileSync(path.join(dir, name), typeof v === "string" ? v : JSON.stringify(v));
  return dir;
}

/** A copy of the whole fixture tokenizer (the four files). */
function fixtureCopy(): string {
  const dir = tmpDir("tsllm-tokload-");
  for (const f of FIXTURE_FILES) fs.copyFileSync(path.join(TINY_LLAMA, f), path.join(dir, f));
  return dir;
}

const message = (f: () => unknown): string => thrown(f, TokenizerError).message;

describe("tokenizerFilesIn", () => {
  it("lists the files present in transformers' order, none without tokenizer.json", () => {
    const all = folder({
      "chat_template.json": {},
      "chat_template.jinja": "",
      "generation_config.json": {},
      "special_tokens_map.json": {},
      "tokenizer_config.json": {},
      "other.json": {},
    });
    expect(tokenizerFilesIn(all)).toEqual([
      "tokenizer.json",
      "tokenizer_config.json",
      "special_tokens_map.json",
      "generation_config.json",
      "chat_template.jinja",
      "chat_template.json",
    ]);
    expect(tokenizerFilesIn(folder())).toEqual(["tokenizer.json"]);
    const none = tmpDir("tsllm-tokload-");
    fs.writeFileSync(path.join(none, "tokenizer_config.json"), "{}");
    expect(tokenizerFilesIn(none)).toEqual([]);
  });
});

describe("TextTokenizer.load", () => {
  it("tokenizer.json alone: no bos / eos / special tokens, no template, the vocabulary's top id", () => {
    const dir = folder();
    const tok = TextTokenizer.load(dir);
    expect(tok.files).toEqual(["tokenizer.json"]);
    expect(tok.dir).toBe(dir);
    expect(tok.bosToken).toBeNull();
    expect(tok.eosToken).toBeNull();
    expect(tok.bosTokenId).toBeNull();
    expect(tok.eosTokenIds).toEqual([]);
    expect(tok.specialTokens).toEqual({});
    expect(tok.maxTokenId).toBe(511);
    expect(tok.hasChatTemplate).toBe(false);
    expect(message(() => tok.applyChatTemplate([{ role: "user", content: "hi" }]))).toBe(
      `${dir}: the tokenizer has no chat template (none in chat_template.jinja or tokenizer_config.json)`,
    );
    // the post-processor still adds bos; the golden ids
    for (const e of golden.encode) expect(tok.encode(e.text)).toEqual(e.ids);
  });

  it("reads only the files it is given (an engine's recorded list)", () => {
    const dir = fixtureCopy();
    const tok = TextTokenizer.load(dir, ["tokenizer.json"]);
    expect(tok.files).toEqual(["tokenizer.json"]);
    expect(tok.bosToken).toBeNull();
    expect(tok.eosTokenIds).toEqual([]);
    expect(tok.hasChatTemplate).toBe(false);
    const full = TextTokenizer.load(dir, [...FIXTURE_FILES]);
    expect(full.eosTokenIds).toEqual([508, 511]);
    expect(full.hasChatTemplate).toBe(true);
    expect(message(() => TextTokenizer.load(dir, ["tokenizer_config.json"]))).toBe(
      `${dir}: no tokenizer.json`,
    );
    const empty = tmpDir("tsllm-tokload-");
    expect(message(() => TextTokenizer.load(empty))).toBe(`${empty}: no tokenizer.json`);
  });

  it("special tokens: *_token keys only, strings or AddedToken dicts, tokenizer_config.json over special_tokens_map.json", () => {
    const dir = folder({
      "special_tokens_map.json": {
        bos_token: "<|end_header_id|>",
        eos_token: { content: "<|end_of_text|>", lstrip: false },
        pad_token: "<|end_of_text|>",
        unk_token: { content: 3 },
        sep_token: null,
        additional_special_tokens: ["<|eot_id|>"],
      },
      "tokenizer_config.json": {
        bos_token: { content: "<|begin_of_text|>" },
        cls_token: "<|start_header_id|>",
        model_max_length: 8,
        tokenizer_class: "PreTrainedTokenizerFast",
        padding_side: { content: "left" },
        chat_template_token: 5,
        clean_up_tokenization_spaces: false,
      },
    });
    const tok = TextTokenizer.load(dir);
    expect(tok.specialTokens).toEqual({
      bos_token: "<|begin_of_text|>",
      eos_token: "<|end_of_text|>",
      pad_token: "<|end_of_text|>",
      cls_token: "<|start_header_id|>",
    });
    expect(tok.bosToken).toBe("<|begin_of_text|>");
    expect(tok.eosToken).toBe("<|end_of_text|>");
    // no generation_config.json: the ids of the tokens
    expect(tok.bosTokenId).toBe(507);
    expect(tok.eosTokenIds).toEqual([508]);
  });

  it("generation_config.json's ids first: an integer or the integers of a list, then the tokenizer's eos once", () => {
    const cfg = { bos_token: "<|begin_of_text|>", eos_token: "<|eot_id|>" };
    const t1 = TextTokenizer.load(
      folder({
        "tokenizer_config.json": cfg,
        "generation_config.json": { bos_token_id: 3, eos_token_id: 508 },
      }),
    );
    expect(t1.bosTokenId).toBe(3);
    expect(t1.eosTokenIds).toEqual([508, 511]);
    const t2 = TextTokenizer.load(
      folder({
        "tokenizer_config.json": cfg,
        "generation_config.json": { bos_token_id: [9, 4], eos_token_id: [511, "508", 1.5, null, 509] },
      }),
    );
    expect(t2.bosTokenId).toBe(9);
    expect(t2.eosTokenIds).toEqual([511, 509]);
    // not ids: the tokens' own
    const t3 = TextTokenizer.load(
      folder({
        "tokenizer_config.json": cfg,
        "generation_config.json": { bos_token_id: "1", eos_token_id: { id: 2 } },
      }),
    );
    expect(t3.bosTokenId).toBe(507);
    expect(t3.eosTokenIds).toEqual([511]);
    const t4 = TextTokenizer.load(
      folder({ "generation_config.json": { bos_token_id: [], eos_token_id: [0] } }),
    );
    expect(t4.bosTokenId).toBeNull();
    expect(t4.eosTokenIds).toEqual([0]);
    // a token the vocabulary lacks has no id
    const t5 = TextTokenizer.load(
      folder({ "tokenizer_config.json": { bos_token: "<nope>", eos_token: "<nope>" } }),
    );
    expect(t5.bosToken).toBe("<nope>");
    expect(t5.bosTokenId).toBeNull();
    expect(t5.eosTokenIds).toEqual([]);
  });

  it("maxTokenId is the highest id of the vocabulary, in whatever order it is listed", () => {
    const wordLevel = (vocab: Record<string, number>) => {
      const dir = tmpDir("tsllm-tokload-");
      const model = { type: "WordLevel", vocab, unk_token: "a" };
      const tj = {
        version: "1.0",
        added_tokens: [],
        normalizer: null,
        pre_tokenizer: { type: "Whitespace" },
        post_processor: null,
        decoder: null,
        model,
      };
      fs.writeFileSync(path.join(dir, "tokenizer.json"), JSON.stringify(tj));
      return TextTokenizer.load(dir);
    };
    const t = wordLevel({ c: 2, a: 0, b: 1 });
    expect(t.maxTokenId).toBe(2);
    expect(t.encode("a b c")).toEqual([0, 1, 2]);
    expect(wordLevel({ a: 0 }).maxTokenId).toBe(0);
  });

  it("keeps spaces before punctuation unless the folder asks to clean them up", () => {
    const ids = [64, 220, 13, 299, 220, 11, 271]; // "a . b , c" without bos
    const keep = TextTokenizer.load(folder({ "tokenizer_config.json": {} }));
    expect(keep.encode("a . b , c", { addSpecialTokens: false })).toEqual(ids);
    expect(keep.decode(ids)).toBe("a . b , c");
    const clean = TextTokenizer.load(
      folder({ "tokenizer_config.json": { clean_up_tokenization_spaces: true } }),
    );
    expect(clean.decode(ids)).toBe("a. b, c");
  });

  it("encode, decode and isSpecial", () => {
    const tok = TextTokenizer.load(TINY_LLAMA);
    expect(tok.encode("hello", { addSpecialTokens: false })).toEqual([393, 356, 78]);
    expect(tok.encode("hello", {})).toEqual([507, 393, 356, 78]);
    expect(tok.encode("hello", { addSpecialTokens: true })).toEqual([507, 393, 356, 78]);
    expect(tok.decode([])).toBe("");
    expect(tok.decode([], { skipSpecialTokens: true })).toBe("");
    expect(tok.decode([507, 393, 356, 78, 511])).toBe("<|begin_of_text|>hello<|eot_id|>");
    expect(tok.decode([507, 393, 356, 78, 511], { skipSpecialTokens: false })).toBe(
      "<|begin_of_text|>hello<|eot_id|>",
    );
    expect(tok.decode([507, 393, 356, 78, 511], { skipSpecialTokens: true })).toBe("hello");
    for (const id of [507, 508, 509, 510, 511]) expect(tok.isSpecial(id)).toBe(true);
    for (const id of [0, 393, 506, 512, 100000, -1]) expect(tok.isSpecial(id)).toBe(false);
  });

  it("applyChatTemplate: the generation prompt by default, special tokens and extra variables to the template", () => {
    const tok = TextTokenizer.load(TINY_LLAMA);
    const msgs = [{ role: "user", content: "hi" }];
    const head = "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>";
    const prompt = "<|start_header_id|>assistant<|end_header_id|>\n\n";
    expect(tok.applyChatTemplate(msgs).text).toBe(head + prompt);
    expect(tok.applyChatTemplate(msgs, {}).text).toBe(head + prompt);
    expect(tok.applyChatTemplate(msgs, { addGenerationPrompt: true }).text).toBe(head + prompt);
    const plain = tok.applyChatTemplate(msgs, { addGenerationPrompt: false });
    expect(plain.text).toBe(head);
    // the rendered text's ids without a second bos
    expect(plain.ids).toEqual([
      507,
      ...tok.encode(head.slice("<|begin_of_text|>".length), { addSpecialTokens: false }),
    ]);
    expect(plain.ids.filter((i) => i === 507)).toHaveLength(1);
    expect(tok.applyChatTemplate(msgs, { name: "default" }).text).toBe(head + prompt);
    expect(message(() => tok.applyChatTemplate(msgs, { name: "tool_use" }))).toBe(
      `${TINY_LLAMA}: no chat template named "tool_use" (have: default)`,
    );
    // extra variables reach the template, and cannot replace messages or add_generation_prompt
    const dir = folder({
      "tokenizer_config.json": { bos_token: "<B>", eos_token: "<|eot_id|>" },
      "chat_template.jinja":
        "{{ bos_token }}|{{ eos_token }}|{{ who }}|{{ messages | length }}|{{ add_generation_prompt }}|{{ messages[0].content }}",
    });
    const t = TextTokenizer.load(dir);
    expect(
      t.applyChatTemplate(msgs, {
        addGenerationPrompt: false,
        extra: { who: "x", messages: [], add_generation_prompt: true },
      }).text,
    ).toBe("<B>|<|eot_id|>|x|1|false|hi");
    expect(t.applyChatTemplate(msgs, { extra: { bos_token: "<C>" } }).text).toBe("<C>|<|eot_id|>||1|true|hi");
  });

  it("refuses files that are not JSON objects, naming the file, in one line", () => {
    for (const [text, why] of [
      ["[]", "not a JSON object"],
      ["null", "not a JSON object"],
      ["3", "not a JSON object"],
      ['"x"', "not a JSON object"],
      ["{", "Expected property name or '}' in JSON at position 1"],
    ] as const) {
      for (const name of [
        "tokenizer_config.json",
        "generation_config.json",
        "special_tokens_map.json",
        "chat_template.json",
      ]) {
        const dir = folder({ [name]: text });
        expect(message(() => TextTokenizer.load(dir))).toBe(`${path.join(dir, name)}: ${why}`);
      }
      const dir = tmpDir("tsllm-tokload-");
      fs.writeFileSync(path.join(dir, "tokenizer.json"), text);
      expect(message(() => TextTokenizer.load(dir))).toBe(`${path.join(dir, "tokenizer.json")}: ${why}`);
    }
    // a tokenizer.json the library cannot build
    const dir = tmpDir("tsllm-tokload-");
    fs.writeFileSync(path.join(dir, "tokenizer.json"), JSON.stringify({ model: { type: "Nope" } }));
    expect(message(() => TextTokenizer.load(dir))).toBe(
      `${path.join(dir, "tokenizer.json")}: Tokenizer must contain a "decoder" property`,
    );
    fs.writeFileSync(path.join(dir, "tokenizer.json"), "{}");
    expect(message(() => TextTokenizer.load(dir))).toBe(
      `${path.join(dir, "tokenizer.json")}: Tokenizer must contain a "model" property`,
    );
    // a listed file that is missing
    const gone = folder();
    const m2 = message(() => TextTokenizer.load(gone, ["tokenizer.json", "tokenizer_config.json"]));
    expect(m2).toBe(
      `${path.join(gone, "tokenizer_config.json")}: ENOENT: no such file or directory, open '${path.join(gone, "tokenizer_config.json")}'`,
    );
  });

  it("templates: chat_template.jinja over tokenizer_config.json over chat_template.json", () => {
    const both = folder({
      "chat_template.jinja": "J",
      "tokenizer_config.json": { chat_template: "T" },
      "chat_template.json": { chat_template: "C" },
    });
    expect(TextTokenizer.load(both).applyChatTemplate([]).text).toBe("J");
    const two = folder({
      "tokenizer_config.json": { chat_template: "T" },
      "chat_template.json": { chat_template: "C" },
    });
    expect(TextTokenizer.load(two).applyChatTemplate([]).text).toBe("T");
    const one = folder({ "chat_template.json": { chat_template: "C" } });
    expect(TextTokenizer.load(one).applyChatTemplate([]).text).toBe("C");
    const bad = folder({ "chat_template.json": { chat_template: 5 } });
    expect(message(() => TextTokenizer.load(bad))).toBe(
      `${path.join(bad, "chat_template.json")}: chat_template must be a string or a list of {name, template}`,
    );
    const badCfg = folder({ "tokenizer_config.json": { chat_template: {} } });
    expect(message(() => TextTokenizer.load(badCfg))).toBe(
      `${path.join(badCfg, "tokenizer_config.json")}: chat_template must be a string or a list of {name, template}`,
    );
    expect(TextTokenizer.load(folder({ "chat_template.jinja": TEMPLATE })).hasChatTemplate).toBe(true);
  });
});

describe("tokenizerForEngine", () => {
  it("copies --tokenizer DIR's files, else the checkpoint's, and logs what it took", () => {
    const lines: string[] = [];
    const src = fixtureCopy();
    const r = tokenizerForEngine({ tokenizer: src, checkpoint: folder() }, 512, (l) => lines.push(l));
    expect(r?.names).toEqual(FIXTURE_FILES);
    expect(Object.keys(r!.files)).toEqual(FIXTURE_FILES);
    for (const f of FIXTURE_FILES)
      expect(r!.files[f]).toBe(fs.readFileSync(path.join(TINY_LLAMA, f), "utf8"));
    expect(lines).toEqual([`tokenizer: ${FIXTURE_FILES.join(", ")} from ${src} (with a chat template)`]);
    const ck = folder();
    const r2 = tokenizerForEngine({ checkpoint: ck }, 512, (l) => lines.push(l));
    expect(r2?.names).toEqual(["tokenizer.json"]);
    expect(lines[1]).toBe(`tokenizer: tokenizer.json from ${ck}`);
    // no log function: the same result
    expect(tokenizerForEngine({ checkpoint: ck }, 512)?.names).toEqual(["tokenizer.json"]);
  });

  it("none: null and a log line; --tokenizer without tokenizer.json refused", () => {
    const lines: string[] = [];
    const empty = tmpDir("tsllm-tokload-");
    expect(tokenizerForEngine({ checkpoint: empty }, 512, (l) => lines.push(l))).toBeNull();
    expect(tokenizerForEngine({}, 512, (l) => lines.push(l))).toBeNull();
    expect(tokenizerForEngine({ tokenizer: "" }, 512)).toBeNull();
    expect(lines).toEqual([
      "no tokenizer: the engine takes token ids only (--tokenizer DIR adds one)",
      "no tokenizer: the engine takes token ids only (--tokenizer DIR adds one)",
    ]);
    expect(message(() => tokenizerForEngine({ tokenizer: empty, checkpoint: TINY_LLAMA }, 512))).toBe(
      `--tokenizer ${empty}: no tokenizer.json there`,
    );
  });

  it("refuses a tokenizer whose ids reach past the model's vocabulary", () => {
    const dir = folder();
    expect(tokenizerForEngine({ tokenizer: dir }, 512)).not.toBeNull();
    expect(message(() => tokenizerForEngine({ tokenizer: dir }, 511))).toBe(
      `${dir}: the tokenizer has token id 511, beyond the model's vocab_size 511`,
    );
    expect(message(() => tokenizerForEngine({ checkpoint: dir }, 100))).toBe(
      `${dir}: the tokenizer has token id 511, beyond the model's vocab_size 100`,
    );
  });
});

describe("findTokenizer / requireTokenizer", () => {
  /** An engine-like folder: config.json with format_version and ranks, and the fixture's tokenizer files. */
  function engine(cfg: Record<string, unknown>): string {
    const dir = fixtureCopy();
    fs.writeFileSync(path.join(dir, "config.json"), JSON.stringify({ format_version: 1, ranks: [], ...cfg }));
    return dir;
  }

  it("an engine: only the files its config.json names", () => {
    const dir = engine({ tokenizer: { files: ["tokenizer.json", "generation_config.json"] } });
    const r = findTokenizer(dir);
    expect(r.tok?.files).toEqual(["tokenizer.json", "generation_config.json"]);
    expect(r.tok?.eosTokenIds).toEqual([508, 511]);
    expect(r.tok?.hasChatTemplate).toBe(false);
    expect(requireTokenizer(dir, "x").files).toEqual(["tokenizer.json", "generation_config.json"]);
  });

  it("an engine without a tokenizer, or with tokenizer files that are not a list", () => {
    for (const cfg of [
      {},
      { tokenizer: null },
      { tokenizer: {} },
      { tokenizer: { files: "tokenizer.json" } },
    ]) {
      const dir = engine(cfg);
      const why = `engine ${dir} has no tokenizer (rebuild from a folder with tokenizer.json, or with --tokenizer DIR); token ids still work`;
      expect(findTokenizer(dir)).toEqual({ tok: null, why });
      expect(message(() => requireTokenizer(dir, "--prompt"))).toBe(`--prompt needs a tokenizer: ${why}`);
    }
  });

  it("refuses tokenizer file names that are not plain names, naming the first", () => {
    for (const [bad, shown] of [
      ["../x", '"../x"'],
      ["a/b", '"a/b"'],
      ["", '""'],
      [3, "3"],
      [null, "null"],
    ] as const) {
      const dir = engine({ tokenizer: { files: ["tokenizer.json", bad, "../y"] } });
      expect(message(() => findTokenizer(dir))).toBe(
        `${path.join(dir, "config.json")}: tokenizer file ${shown} is not a plain file name`,
      );
    }
  });

  it("a model folder: its own files; config.json not an engine's (no format_version or ranks, not JSON) is a model's", () => {
    const dir = fixtureCopy();
    expect(findTokenizer(dir).tok?.files).toEqual(FIXTURE_FILES);
    expect(findTokenizer(TINY_LLAMA).tok?.files).toEqual(FIXTURE_FILES); // a Hugging Face config.json
    for (const cfg of [
      '{"format_version": 1}',
      '{"ranks": []}',
      "{",
      "null",
      "[1]",
      '"format_version ranks"',
    ]) {
      fs.writeFileSync(path.join(dir, "config.json"), cfg);
      expect(findTokenizer(dir).tok?.files, cfg).toEqual(FIXTURE_FILES);
    }
    const none = tmpDir("tsllm-tokload-");
    fs.writeFileSync(path.join(none, "config.json"), "{}");
    expect(findTokenizer(none)).toEqual({ tok: null, why: `${none} has no tokenizer.json` });
    expect(message(() => requireTokenizer(none, "tsllm-tokenize"))).toBe(
      `tsllm-tokenize needs a tokenizer: ${none} has no tokenizer.json`,
    );
  });
});
