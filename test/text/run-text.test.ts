// tsllm-run with text: a prompt (or chat) in, streamed text out; --json; --stop; the id-mode contract is
// unchanged; the printing stays correct when characters are split across tokens.
import * as fs from "node:fs";
import * as path from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { runText } from "../../src/cli/run-text.ts";
import type { BatchManager } from "../../src/serving/types.ts";
import { TextTokenizer } from "../../src/text/tokenizer.ts";
import { buildFixture, REPO, TINY_LLAMA, tmpDir } from "../fixtures.ts";
import { runBin } from "../server/helpers.ts";

const RUN = path.join(REPO, "bin/tsllm-run.mjs");
const tok = TextTokenizer.load(TINY_LLAMA);
const golden = JSON.parse(fs.readFileSync(path.join(TINY_LLAMA, "tokenizer-golden.json"), "utf8"));

describe("tsllm-run with text", () => {
  let engine: string;
  beforeAll(async () => {
    engine = await buildFixture("llama");
  });
  const run = async (...args: string[]) => {
    const r = await runBin(RUN, [engine, "--device", "cpu", ...args]);
    if (r.status !== 0) throw new Error(r.stderr);
    return r.stdout;
  };

  it("prints the text of the same tokens the id mode prints for the encoded prompt", async () => {
    const e = golden.encode[1];
    const idsLine = (await run("--input-ids", e.ids.join(","), "--max-new-tokens", "20")).trim();
    const ids = idsLine.split(",").map(Number);
    expect(await run(e.text, "--max-new-tokens", "20")).toBe(
      `${tok.decode(ids, { skipSpecialTokens: true })}\n`,
    );
    const j = JSON.parse(await run("--prompt", e.text, "--max-new-tokens", "20", "--json"));
    expect(j.prompt_ids).toEqual(e.ids);
    expect(j.ids).toEqual(ids);
    expect(j.text).toBe(tok.decode(ids, { skipSpecialTokens: true }));
    expect(["stop", "length"]).toContain(j.finish_reason);
    expect(j.timings.ttft_ms).toBeGreaterThan(0);
    expect(j.timings.e2e_ms).toBeGreaterThanOrEqual(j.timings.ttft_ms);
  });

  it("--chat FILE renders the chat template (the golden ids) and --stop cuts the text", async () => {
    const chat = golden.chat[0];
    const file = path.join(tmpDir(), "chat.json");
    fs.writeFileSync(file, JSON.stringify(chat.messages));
    const j = JSON.parse(await run("--chat", file, "--max-new-tokens", "24", "--json", "--ignore-eos"));
    expect(j.prompt_ids).toEqual(chat.ids);
    const at =
      [...j.text.matchAll(/[^\uFFFD]{2}/g)]
        .map((m: RegExpMatchArray) => m.index!)
        .find((i: number) => i >= 2) ?? -1;
    expect(at, j.text).toBeGreaterThanOrEqual(2);
    const stop = j.text.slice(at, at + 2);
    const cut = JSON.parse(
      await run("--chat", file, "--max-new-tokens", "24", "--json", "--ignore-eos", "--stop", stop),
    );
    expect(cut.text).toBe(j.text.slice(0, j.text.indexOf(stop)));
    expect(cut.finish_reason).toBe("stop");
    expect(cut.stop_string).toBe(stop);
  });

  it("text on an engine without a tokenizer: one line, exit 1", async () => {
    const gptj = await buildFixture("gptj");
    const r = await runBin(RUN, [gptj, "--device", "cpu", "hello"]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(
      /^error: a text prompt needs a tokenizer: engine .* has no tokenizer .*token ids still work\n$/,
    );
    expect(r.stdout).toBe("");
  });
});

// A batch manager (the public API of src/serving/types.ts) whose requests "generate" a fixed script of
// ids, so the test controls which tokens split characters.
function scriptedManager(script: number[]): BatchManager {
  const limits = { maxBatchSize: 1, maxNumTokens: 64, maxSeqLen: 64, tokensPerBlock: 16, kvBlocksTotal: 4 };
  return {
    limits,
    policy: "guaranteed_no_evict",
    vocabSize: 512,
    eosTokenIds: [],
    submit(req) {
      const out = script.slice(0, req.maxNewTokens);
      const timings = { queueMs: 0, ttftMs: 1, tokenTimesMs: out.map((_, i) => i + 1), e2eMs: out.length };
      return {
        id: 1,
        done: Promise.resolve({ outputIds: out, finishReason: "length" as const, timings, preemptions: 0 }),
        cancel() {},
        async *[Symbol.asyncIterator]() {
          for (const [index, tokenId] of out.entries()) yield { tokenId, index, timeMs: index + 1 };
        },
      };
    },
    stats: () => {
      throw new Error("unused");
    },
    shutdown: async () => {},
  };
}

describe("streamed text output", () => {
  it("characters split across tokens are printed whole, never as U+FFFD", async () => {
    const text = "東京 🙂 Grüße";
    const ids = tok.encode(text, { addSpecialTokens: false });
    expect(ids.length).toBeGreaterThan([...text].length); // some characters take several tokens
    const bm = scriptedManager(ids);
    const writes: string[] = [];
    await runText(bm, tok, [507, 1, 2], {
      maxNewTokens: ids.length,
      sampling: { temperature: 0, topK: 0, topP: 1, seed: 0 },
      ignoreEos: true,
      stopTokenIds: [],
      stop: [],
      json: false,
      out: { write: (s: string) => writes.push(s) },
    });
    expect(writes.join("")).toBe(`${text}\n`);
    for (const w of writes) expect(w).not.toContain("\uFFFD");
    expect(writes).toContain("東");
    expect(writes).toContain("🙂");
  });
});
