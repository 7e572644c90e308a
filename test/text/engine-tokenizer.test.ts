// tsllm-compile carries the checkpoint's tokenizer (or --tokenizer DIR) into the engine; tsllm-tokenize
// reads it back from the engine; an engine without one says so in one line.
import * as fs from "node:fs";
import * as path from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { openEngine } from "../../src/engine/reader.ts";
import { findTokenizer } from "../../src/text/engine-files.ts";
import { buildFixture, REPO, TINY_LLAMA, tmpDir } from "../fixtures.ts";
import { runBin } from "../server/helpers.ts";

const TOKENIZE = path.join(REPO, "bin/tsllm-tokenize.mjs");
const golden = JSON.parse(fs.readFileSync(path.join(TINY_LLAMA, "tokenizer-golden.json"), "utf8"));

describe("engines carry the tokenizer", () => {
  let llama: string;
  let gptj: string;
  beforeAll(async () => {
    llama = await buildFixture("llama");
    gptj = await buildFixture("gptj");
  });

  it("copies the checkpoint's tokenizer files and records them in config.json", () => {
    const cfg = openEngine(llama).config;
    expect(cfg.tokenizer?.files).toEqual([
      "tokenizer.json",
      "tokenizer_config.json",
      "generation_config.json",
      "chat_template.jinja",
    ]);
    for (const f of cfg.tokenizer!.files)
      expect(fs.readFileSync(path.join(llama, f))).toEqual(fs.readFileSync(path.join(TINY_LLAMA, f)));
  });

  const tokenize = async (...args: string[]) => {
    const r = await runBin(TOKENIZE, args);
    expect(r.stderr).toBe("");
    return JSON.parse(r.stdout);
  };

  it("tsllm-tokenize on the engine reproduces the golden ids and chat", async () => {
    const e = golden.encode[5];
    const out = await tokenize(llama, e.text);
    expect(out.ids).toEqual(e.ids);
    const chatFile = path.join(tmpDir(), "chat.json");
    fs.writeFileSync(chatFile, JSON.stringify(golden.chat[1].messages));
    const chat = await tokenize(llama, "--chat", chatFile);
    expect(chat.text).toBe(golden.chat[1].text);
    expect(chat.ids).toEqual(golden.chat[1].ids);
    const dec = await tokenize(llama, "--decode", e.ids.join(","), "--no-special");
    expect(dec.text).toBe(e.decoded_skip_special);
  });

  // The tokenizer drops ids it has no token for: `--decode 1,99999` used to print the text of 1 alone, exit 0.
  it("tsllm-tokenize --decode refuses an id the tokenizer does not have, in one line, exit 1", async () => {
    const r = await runBin(TOKENIZE, [llama, "--decode", "1,99999"]);
    expect(r.status).toBe(1);
    expect(r.stderr).toBe("error: --decode: token id 99999 is not in the tokenizer (allowed: 0..511)\n");
    expect(r.stdout).toBe("");
    expect((await tokenize(llama, "--decode", "1,511")).ids).toEqual([1, 511]);
  });

  it("an engine without a tokenizer says so in one line, exit 1", async () => {
    const r = await runBin(TOKENIZE, [gptj, "hello"]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(
      /^error: tsllm-tokenize needs a tokenizer: engine .* has no tokenizer \(rebuild from a folder with tokenizer.json, or with --tokenizer DIR\); token ids still work\n$/,
    );
    expect(r.stdout).toBe("");
  });

  it("--tokenizer DIR adds one to an engine built from a folder without", async () => {
    const e = await buildFixture("gptj", { tokenizer: TINY_LLAMA });
    const found = findTokenizer(e);
    expect(found.tok?.encode("Hello world")).toEqual(golden.encode[0].ids);
    await expect(buildFixture("llama", { tokenizer: tmpDir() })).rejects.toThrow(
      /--tokenizer .*: no tokenizer.json there/,
    );
  });

  it("refuses a config.json naming a tokenizer file outside the engine directory", () => {
    const bad = tmpDir();
    for (const f of fs.readdirSync(llama)) fs.copyFileSync(path.join(llama, f), path.join(bad, f));
    const cfg = JSON.parse(fs.readFileSync(path.join(bad, "config.json"), "utf8"));
    cfg.tokenizer.files = ["../../etc/passwd"];
    fs.writeFileSync(path.join(bad, "config.json"), JSON.stringify(cfg));
    expect(() => findTokenizer(bad)).toThrow(/tokenizer file "..\/..\/etc\/passwd" is not a plain file name/);
    expect(() => openEngine(bad)).toThrow(/tokenizer.files.0.*plain file name/);
  });
});
