// tsllm-compile in-process (src/cli/compile.ts tsllmCompile, stdout and stderr captured): each engine it writes is
// read back and compared with one compileEngine builds from the same options (rank hashes, build config), its stdout
// is compileEngine's log lines, the fusion report of the report.json it wrote and the "wrote" line worked out from
// the files, its stderr the weights progress line; and its refusals. (test/cli-errors.test.ts and others run the
// binary as a child process; Stryker's coverage does not reach that.)
import * as fs from "node:fs";
import * as path from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { type CompileOptions, compileEngine } from "../src/compile.ts";
import type { EngineConfig } from "../src/engine/format.ts";
import { openEngine } from "../src/engine/reader.ts";
import { printGraph } from "../src/ir/printer.ts";
import { loadModelFile } from "../src/model-file.ts";
import { fmtBytes } from "../src/report/bytes.ts";
import { FusionReport, formatReport } from "../src/report/index.ts";
import { Exit, importMain, runCaptured } from "./cli-main-helpers.ts";
import { GPTJ_MODEL, LLAMA_MODEL, TINY_GPTJ, TINY_LLAMA, tmpDir } from "./fixtures.ts";
import { graphOf } from "./passes/helpers.ts";

const PASSES = [
  "qkv-fusion",
  "gate-up-fusion",
  "attention-fusion",
  "epilogue-fusion",
  "add-norm-fusion",
  "norm-chain-fusion",
  "cse",
  "dce",
  "quantize-weights",
  "quantize-kv",
  "memory-plan",
];

let tsllmCompile: (argv: readonly string[]) => Promise<void>;
let imported: { stdout: string; stderr: string; exitCode: typeof process.exitCode; out: string };

beforeAll(async () => {
  // Importing the module runs tsllm-compile on process.argv once: let it refuse an unknown --sm.
  const out = path.join(tmpDir(), "engine");
  const r = await importMain(
    () => import("../src/cli/compile.ts"),
    [process.execPath, "tsllm-compile", LLAMA_MODEL, "--checkpoint", TINY_LLAMA, "--sm", "91", "-o", out],
  );
  tsllmCompile = r.module.tsllmCompile;
  // Checked in a test below: a failing hook would skip the tests, which Stryker reads as a surviving mutant.
  imported = { ...r, out };
});

/** tsllm-compile ARGS: its output, what it threw, and how long it took (seconds). */
async function compile(...args: string[]) {
  const t0 = performance.now();
  const r = await runCaptured(() => tsllmCompile([process.execPath, "tsllm-compile", ...args]));
  return { ...r, wall: (performance.now() - t0) / 1000 };
}

/** compileEngine on the same options into a folder of its own: the config and the log lines. */
async function reference(o: Omit<CompileOptions, "out">) {
  const log: string[] = [];
  const r = await compileEngine({ ...o, out: path.join(tmpDir(), "ref"), log: (s) => log.push(s) });
  return { config: r.config, log };
}

const fileBytes = (dir: string, files: string[]) =>
  files.reduce((a, f) => a + fs.statSync(path.join(dir, f)).size, 0);
const readConfig = (dir: string): EngineConfig =>
  JSON.parse(fs.readFileSync(path.join(dir, "config.json"), "utf8"));
const summaryOf = (dir: string) =>
  formatReport(FusionReport.parse(JSON.parse(fs.readFileSync(path.join(dir, "report.json"), "utf8"))));

/**
 * Checks the last stdout line `wrote OUT: …` against what it should say, and its seconds against the wall time
 * of the call; returns stdout without it.
 */
function wroteLine(r: { stdout: string; wall: number }, head: string): string {
  const m = r.stdout.match(/(?:^|\n)(wrote [^\n]*) in (\d+\.\d) s\n$/);
  expect(m, r.stdout.slice(-300)).not.toBeNull();
  expect(m![1]).toBe(head);
  const secs = Number(m![2]);
  expect(secs).toBeGreaterThanOrEqual(0);
  expect(secs).toBeLessThanOrEqual(r.wall + 0.05);
  return r.stdout.slice(0, r.stdout.length - m![0].length + (m![0].startsWith("\n") ? 1 : 0));
}

/** stderr: the weights progress line alone (no terminal here: the plain form), of `amount`. */
function progressLine(stderr: string, amount: string) {
  expect(stderr).toMatch(
    new RegExp(`^weights: ${amount.replace(".", "\\.")} in \\d+\\.\\d s, \\d+\\.\\d\\d GB/s\\n$`),
  );
}

describe("tsllm-compile in-process", () => {
  it("the module runs tsllm-compile on process.argv: an unknown --sm is one error line, exit code 1, no output", () => {
    expect(imported.stderr).toBe(
      "error: --sm 91: not a known GPU architecture (known: 80, 86, 87, 89, 90, 100, 120)\n",
    );
    expect(imported.stdout).toBe("");
    expect(imported.exitCode).toBe(1);
    expect(fs.existsSync(imported.out)).toBe(false);
  });

  it("a checkpoint build: the engine compileEngine writes, its log, the fusion report and the wrote line", async () => {
    const out = path.join(tmpDir(), "engine");
    const r = await compile(
      ...[LLAMA_MODEL, "--checkpoint", TINY_LLAMA, "--sm", "90", "--dtype", "fp32", "--seed", "3"],
      ...[
        "--max-batch-size",
        "2",
        "--max-seq-len",
        "64",
        "--max-num-tokens",
        "64",
        "--tokens-per-block",
        "8",
      ],
      ...["-o", out],
    );
    expect(r.error).toBeNull();
    const ref = await reference({
      modelFile: LLAMA_MODEL,
      checkpoint: TINY_LLAMA,
      sm: 90,
      dtype: "fp32",
      seed: 3,
      maxBatchSize: 2,
      maxSeqLen: 64,
      maxNumTokens: 64,
      tokensPerBlock: 8,
    });
    const cfg = openEngine(out).config;
    expect(cfg.build).toEqual({
      ...{
        sm: 90,
        tp: 1,
        moe_ep_size: 1,
        dtype: "fp32",
        kv_cache_dtype: "fp32",
        quant: "none",
        group_size: 128,
      },
      ...{ max_batch_size: 2, max_seq_len: 64, max_num_tokens: 64, tokens_per_block: 8 },
      ...{ random_weights: false, seed: 3, passes: PASSES },
    });
    expect(cfg.build).toEqual(ref.config.build);
    expect(cfg.ranks.map((x) => x.hash)).toEqual(ref.config.ranks.map((x) => x.hash));
    expect(cfg.tokenizer?.files).toEqual(ref.config.tokenizer?.files);
    expect(ref.log[0]).toMatch(/^tokenizer: tokenizer\.json, /);
    expect(ref.log[1]).toMatch(/^warning: this engine will not run on the GPU/);
    // tiny-llama's checkpoint is bf16: 16 weights in fp32 (the 21 tensors, q/k/v and gate/up fused, and a rope table
    // of 16 floats), plus headers and alignment: the rank file.
    const bytes = fs.statSync(path.join(out, "rank0.engine")).size;
    expect(cfg.ranks[0].bytes).toBe(bytes);
    const head = wroteLine(r, `wrote ${out}: 1 rank(s), ${fmtBytes(bytes)}, fp32, sm 90`);
    expect(head).toBe(`${ref.log.map((l) => `${l}\n`).join("")}${summaryOf(out)}\n`);
    progressLine(r.stderr, "1.91 MiB");
  });

  it("random weights from --config over two ranks: fp16, an fp8 KV cache, the seed, sm 89", async () => {
    const out = path.join(tmpDir(), "engine");
    const config = path.join(TINY_LLAMA, "config.json");
    const r = await compile(
      ...[LLAMA_MODEL, "--config", config, "--sm", "89", "--tp", "2", "--dtype", "fp16"],
      ...["--kv-cache-dtype", "fp8", "--seed", "7", "-o", out],
    );
    expect(r.error).toBeNull();
    const ref = await reference({
      modelFile: LLAMA_MODEL,
      config,
      sm: 89,
      tp: 2,
      dtype: "fp16",
      kvCacheDtype: "fp8",
      seed: 7,
    });
    const cfg = readConfig(out);
    expect(cfg.build).toMatchObject({ sm: 89, tp: 2, dtype: "fp16", kv_cache_dtype: "fp8", seed: 7 });
    expect(cfg.build.random_weights).toBe(true);
    expect(cfg.build).toEqual(ref.config.build);
    expect(cfg.ranks.map((x) => x.hash)).toEqual(ref.config.ranks.map((x) => x.hash));
    const bytes = fileBytes(out, ["rank0.engine", "rank1.engine"]);
    const head = wroteLine(r, `wrote ${out}: 2 rank(s), ${fmtBytes(bytes)}, fp16, sm 89, random weights`);
    expect(head).toBe(`${ref.log.map((l) => `${l}\n`).join("")}${summaryOf(out)}\n`);
    // Random weights are stored as seeds: what the writer counts is their records, not weight bytes.
    expect(r.stderr).toMatch(/^weights: \d+ B in \d+\.\d s, \d+\.\d\d GB\/s\n$/);
  });

  it("--print-ir prints the graph the model file built, before any pass (it was accepted and printed nothing)", async () => {
    const out = path.join(tmpDir(), "engine");
    const r = await compile(LLAMA_MODEL, "--sm", "90", "--random-weights", "--print-ir", "-o", out);
    expect(r.error).toBeNull();
    // The same graph as the model file builds for this config, printed as --dump-ir-after prints one.
    const cfg = readConfig(out);
    const dir = tmpDir();
    fs.writeFileSync(
      path.join(dir, "config.json"),
      JSON.stringify((await loadModelFile(LLAMA_MODEL)).defaultConfig),
    );
    const g0 = await graphOf(LLAMA_MODEL, dir, cfg.build);
    const want = `--- IR before any pass ---\n${printGraph(g0)}\n`;
    // after the tokenizer line, before the pass summary
    expect(r.stdout.split(want)[0]).toBe(
      "no tokenizer: the engine takes token ids only (--tokenizer DIR adds one)\n",
    );
    // unfused: separate q / k / v linears, no qkv weight
    expect(want).toMatch(/@model\.layers\.0\.self_attn\.q_proj\.weight/);
    expect(want).not.toMatch(/qkv_proj/);
  });

  it("--random-weights (the model file's own config), --quant int4-wo --group-size 32, --disable-pass, --dump-ir-after", async () => {
    const out = path.join(tmpDir(), "engine");
    const r = await compile(
      ...[LLAMA_MODEL, "--sm", "90", "--random-weights", "--quant", "int4-wo"],
      ...["--group-size", "32", "--disable-pass", "cse,norm-chain-fusion", "--disable-pass", "dce"],
      ...["--dump-ir-after", "qkv-fusion", "-o", out],
    );
    expect(r.error).toBeNull();
    const ref = await reference({
      modelFile: LLAMA_MODEL,
      sm: 90,
      randomWeights: true,
      quant: "int4-wo",
      groupSize: 32,
      disablePasses: ["cse", "norm-chain-fusion", "dce"],
      dumpIrAfter: ["qkv-fusion"],
    });
    const cfg = readConfig(out);
    expect(cfg.build).toMatchObject({ quant: "int4-wo", group_size: 32, random_weights: true });
    expect(cfg.build.passes).toEqual(PASSES.filter((p) => !["cse", "norm-chain-fusion", "dce"].includes(p)));
    expect(cfg.build).toEqual(ref.config.build);
    expect(cfg.ranks.map((x) => x.hash)).toEqual(ref.config.ranks.map((x) => x.hash));
    expect(ref.log.filter((l) => l.startsWith("--- IR after "))).toEqual([
      expect.stringMatching(/^--- IR after qkv-fusion ---\ninput %\d+:/),
    ]);
    const bytes = fileBytes(out, ["rank0.engine"]);
    const head = wroteLine(
      r,
      `wrote ${out}: 1 rank(s), ${fmtBytes(bytes)}, ${cfg.build.dtype}, sm 90, random weights`,
    );
    expect(head).toBe(`${ref.log.map((l) => `${l}\n`).join("")}${summaryOf(out)}\n`);
  });

  it("--tokenizer DIR: a GPT-J checkpoint without one gets tiny-llama's", async () => {
    const out = path.join(tmpDir(), "engine");
    const r = await compile(
      GPTJ_MODEL,
      "--checkpoint",
      TINY_GPTJ,
      "--sm",
      "90",
      "--tokenizer",
      TINY_LLAMA,
      "-o",
      out,
    );
    expect(r.error).toBeNull();
    expect(readConfig(out).tokenizer?.files).toEqual([
      "tokenizer.json",
      "tokenizer_config.json",
      "generation_config.json",
      "chat_template.jinja",
    ]);
    expect(fs.readFileSync(path.join(out, "tokenizer.json"))).toEqual(
      fs.readFileSync(path.join(TINY_LLAMA, "tokenizer.json")),
    );
    expect(r.stdout).toMatch(new RegExp(`^tokenizer: tokenizer\\.json, .* from ${TINY_LLAMA}`));
  });

  it("--emit onnx: the export, no weights progress, the wrote line of its files", async () => {
    const out = path.join(tmpDir(), "onnx");
    const r = await compile(
      LLAMA_MODEL,
      "--checkpoint",
      TINY_LLAMA,
      "--sm",
      "90",
      "--emit",
      "onnx",
      "-o",
      out,
    );
    expect(r.error).toBeNull();
    expect(fs.readdirSync(out).sort()).toEqual(["onnx.json", "rank0.onnx", "rank0.onnx.data"]);
    expect(r.stderr).toBe("");
    const bytes = fileBytes(out, ["rank0.onnx", "rank0.onnx.data"]);
    const head = wroteLine(r, `wrote ${out}: 1 rank(s), ${fmtBytes(bytes)}, bf16, sm 90`);
    expect(head).toMatch(/\nfusion report: 2 layers, tp 1 \(rank 0 shown\), bf16, sm 90, .*\n[\s\S]*\n$/);
  });

  it("an output folder that is not an engine: refused, and replaced with --force", async () => {
    const out = tmpDir();
    fs.writeFileSync(path.join(out, "notes.txt"), "mine");
    const args = [LLAMA_MODEL, "--checkpoint", TINY_LLAMA, "--sm", "90", "-o", out];
    const no = await compile(...args);
    expect((no.error as Error).message).toBe(
      `-o ${out}: is a folder with files in it that is not a tsllm engine or ONNX export; not replacing it (choose another path, or --force)`,
    );
    expect(no.stdout).toBe("");
    expect(fs.readdirSync(out)).toEqual(["notes.txt"]);
    const yes = await compile(...args, "--force");
    expect(yes.error).toBeNull();
    expect(fs.existsSync(path.join(out, "notes.txt"))).toBe(false);
    expect(readConfig(out).build.dtype).toBe("bf16");
  });

  it("the defaults, after calls with other flags: nothing left over from them", async () => {
    const out = path.join(tmpDir(), "engine");
    const r = await compile(LLAMA_MODEL, "--checkpoint", TINY_LLAMA, "--sm", "90", "-o", out);
    expect(r.error).toBeNull();
    const cfg = readConfig(out);
    expect(cfg.build).toEqual({
      ...{
        sm: 90,
        tp: 1,
        moe_ep_size: 1,
        dtype: "bf16",
        kv_cache_dtype: "bf16",
        quant: "none",
        group_size: 128,
      },
      ...{ max_batch_size: 256, max_seq_len: 256, max_num_tokens: 8192, tokens_per_block: 32 },
      ...{ random_weights: false, seed: 0, passes: PASSES },
    });
    expect(cfg.tokenizer?.files).toHaveLength(4);
    wroteLine(r, `wrote ${out}: 1 rank(s), ${fmtBytes(fileBytes(out, ["rank0.engine"]))}, bf16, sm 90`);
  });

  it("a usage error is commander's: one line, the --help hint, exit 1", async () => {
    const r = await compile(LLAMA_MODEL, "-o", path.join(tmpDir(), "x"));
    expect(r.error).toBeInstanceOf(Exit);
    expect((r.error as Exit).code).toBe(1);
    expect(r.stderr).toBe(
      "error: required option '--sm <n>' not specified\n(tsllm-compile --help lists the flags)\n",
    );
  });

  it.each(["--checkpoint", "--config", "--tokenizer"])(
    '%s "" (an unset variable in a script) is refused by name, before anything is read',
    async (flag) => {
      const out = path.join(tmpDir(), "x");
      const r = await compile(LLAMA_MODEL, "--sm", "90", flag, "", "-o", out);
      expect((r.error as Exit).code).toBe(1);
      expect(r.stderr.split("\n")[0]).toBe(
        `error: option '${flag} <${flag === "--config" ? "config.json" : "dir"}>' argument '' is invalid. ${flag} is empty`,
      );
      expect(fs.existsSync(out)).toBe(false);
    },
  );
});
