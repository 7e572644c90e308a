// tsllm-inspect in-process (src/cli/inspect.ts tsllmInspect, stdout and stderr captured): the summary lines of
// engines built here, worked out from what was built (tiny-llama's checkpoint: 21 bf16 tensors, 1,000,704 bytes),
// the fusion report equal to the one tsllm-compile printed, --json, --no-notes, and each way report.json can be
// missing or broken. (test/report.test.ts and test/cli-messages.test.ts run the binary as a child process;
// Stryker's coverage does not reach that.)
import * as fs from "node:fs";
import * as path from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { compileEngine } from "../src/compile.ts";
import { FusionReport } from "../src/report/index.ts";
import { Exit, importMain, runCaptured } from "./cli-main-helpers.ts";
import { LLAMA_MODEL, MIXTRAL_MODEL, TINY_LLAMA, tmpDir } from "./fixtures.ts";

const PASSES =
  "qkv-fusion, gate-up-fusion, attention-fusion, epilogue-fusion, add-norm-fusion, norm-chain-fusion, cse, dce, " +
  "quantize-weights, quantize-kv, memory-plan";

let tsllmInspect: (argv: readonly string[]) => Promise<void>;
let imported: { stdout: string; stderr: string; exitCode: typeof process.exitCode; missing: string };
let llama: string; // tiny-llama, fp32, limits 2 / 64 / 64 / 8
let summary: string; // what tsllm-compile printed as its fusion report
let random: string; // random weights, tp 2, fp16, fp8 KV cache, int8-wo, sm 89

beforeAll(async () => {
  // Importing the module runs tsllm-inspect on process.argv once: let it refuse a missing engine.
  const missing = path.join(tmpDir(), "missing");
  const r = await importMain(
    () => import("../src/cli/inspect.ts"),
    [process.execPath, "tsllm-inspect", missing],
  );
  tsllmInspect = r.module.tsllmInspect;
  // Checked in a test below: a failing hook would skip the tests, which Stryker reads as a surviving mutant.
  imported = { ...r, missing };
  llama = path.join(tmpDir(), "llama");
  const built = await compileEngine({
    modelFile: LLAMA_MODEL,
    checkpoint: TINY_LLAMA,
    sm: 90,
    dtype: "fp32",
    maxBatchSize: 2,
    maxSeqLen: 64,
    maxNumTokens: 64,
    tokensPerBlock: 8,
    out: llama,
  });
  summary = built.pipeline.summary!;
  random = path.join(tmpDir(), "random");
  await compileEngine({
    modelFile: LLAMA_MODEL,
    config: path.join(TINY_LLAMA, "config.json"),
    sm: 89,
    tp: 2,
    dtype: "fp16",
    kvCacheDtype: "fp8",
    quant: "int8-wo",
    out: random,
  });
});

const inspect = (...args: string[]) =>
  runCaptured(() => tsllmInspect([process.execPath, "tsllm-inspect", ...args]));

/** A copy of the llama engine, changed by `edit` (given the copy's folder). */
function copy(edit: (dir: string) => void): string {
  const dir = path.join(tmpDir(), "copy");
  fs.cpSync(llama, dir, { recursive: true });
  edit(dir);
  return dir;
}
const editJson = (file: string, edit: (j: Record<string, unknown>) => void) => {
  const j = JSON.parse(fs.readFileSync(file, "utf8"));
  edit(j);
  fs.writeFileSync(file, JSON.stringify(j));
};

/** The summary lines of the llama engine at `dir`; `arch` and `passes` as shown. */
const llamaHead = (dir: string, arch = "LlamaForCausalLM", passes = PASSES) =>
  [
    `engine ${dir}: ${arch}, 2 layers, hidden 128, vocab 512`,
    "  ranks 1 (tp 1), dtype fp32, kv cache fp32, quant none, sm 90",
    "  limits: max_batch_size 2, max_seq_len 64, max_num_tokens 64, tokens_per_block 8",
    // 21 tensors of 128-wide tiny-llama in fp32 (twice the bf16 checkpoint's 1,000,704 bytes), q/k/v and
    // gate/up fused (21 - 2·2 - 2 = 15), plus the rope table (16 floats, 64 bytes): 16 tensors, 2,001,472 bytes
    // = 1.91 MiB; the rank file, 2,013,952 bytes with its header and alignment, 1.92 MiB.
    "  weights: 16 tensors, 1.91 MiB over all ranks, 1.92 MiB on disk",
    `  passes: ${passes}`,
    "",
    "",
  ].join("\n");

describe("tsllm-inspect in-process", () => {
  it("the module runs tsllm-inspect on process.argv: a missing engine is one error line and exit code 1", () => {
    expect(imported.stderr).toBe(`error: ${imported.missing}: not an engine directory (no config.json)\n`);
    expect(imported.stdout).toBe("");
    expect(imported.exitCode).toBe(1);
  });

  it("an engine: the summary lines, then the fusion report tsllm-compile printed, then the drawing", async () => {
    expect(fs.statSync(path.join(llama, "rank0.engine")).size).toBe(2_013_952);
    const r = await inspect(llama);
    expect(r.error).toBeNull();
    expect(r.stderr).toBe("");
    expect(r.stdout).toBe(`${llamaHead(llama)}${summary}\ndrawing: ${path.join(llama, "report.html")}\n`);
    expect(summary).toMatch(/\nnotes:\n {2}add-norm-fusion: /);
  });

  it("--no-notes leaves out the notes section alone", async () => {
    const r = await inspect(llama, "--no-notes");
    expect(r.error).toBeNull();
    const [before, notes] = summary.split("\nnotes:\n");
    expect(notes).toMatch(/^ {2}\S/);
    expect(r.stdout).toBe(`${llamaHead(llama)}${before}\ndrawing: ${path.join(llama, "report.html")}\n`);
  });

  it("random weights over two ranks: the build's fields, the seeds' size on disk", async () => {
    const r = await inspect(random, "--no-notes");
    expect(r.error).toBeNull();
    const cfg = JSON.parse(fs.readFileSync(path.join(random, "config.json"), "utf8"));
    expect(cfg.build.random_weights).toBe(true);
    // The weights as the graph holds them: one per header entry of each rank, numel × dtype size.
    const { openEngine } = await import("../src/engine/reader.ts");
    const { DTYPE_BYTES, numel } = await import("../src/ir/types.ts");
    const { fmtBytes } = await import("../src/report/bytes.ts");
    let n = 0;
    let bytes = 0;
    for (const rank of openEngine(random).ranks)
      for (const w of rank.header.weights) {
        const v = rank.header.values.find((x) => x.id === w.value)!;
        n++;
        bytes += numel(v.shape) * DTYPE_BYTES[v.dtype];
      }
    const disk = ["rank0.engine", "rank1.engine"].reduce(
      (a, f) => a + fs.statSync(path.join(random, f)).size,
      0,
    );
    expect(disk).toBeLessThan(bytes);
    const lines = r.stdout.split("\n");
    expect(lines.slice(0, 6)).toEqual([
      `engine ${random}: LlamaForCausalLM, 2 layers, hidden 128, vocab 512`,
      "  ranks 2 (tp 2), dtype fp16, kv cache fp8, quant int8-wo, sm 89",
      `  limits: max_batch_size 256, max_seq_len 256, max_num_tokens 8192, tokens_per_block 32`,
      `  weights: ${n} tensors, ${fmtBytes(bytes)} over all ranks (random: stored as seeds, ${fmtBytes(disk)} on disk)`,
      `  passes: ${cfg.build.passes.join(", ")}`,
      "",
    ]);
    expect(lines[6]).toMatch(/^fusion report: 2 layers, tp 2 \(rank 0 shown\), fp16/);
  });

  it("a mixture of experts over expert-parallel rank groups says how the tp ranks divide", async () => {
    const ep = path.join(tmpDir(), "ep");
    await compileEngine({ modelFile: MIXTRAL_MODEL, sm: 90, tp: 4, moeEpSize: 2, out: ep });
    const r = await inspect(ep, "--no-notes");
    expect(r.error).toBeNull();
    expect(r.stdout.split("\n")[1]).toMatch(/^ {2}ranks 4 \(tp 4 = moe_ep_size 2 × moe_tp_size 2\), dtype /);
    const plain = await inspect(random, "--no-notes");
    expect(plain.stdout.split("\n")[1]).toMatch(/^ {2}ranks 2 \(tp 2\), dtype /);
  });

  it("--json: report.json as it is; refused when there is none", async () => {
    const r = await inspect(llama, "--json");
    expect(r.error).toBeNull();
    expect(r.stdout).toBe(fs.readFileSync(path.join(llama, "report.json"), "utf8"));
    const none = copy((d) => fs.rmSync(path.join(d, "report.json")));
    const n = await inspect(none, "--json");
    expect((n.error as Error).message).toBe(`${none}: no report.json in this engine`);
    expect(n.stdout).toBe("");
  });

  it("no report.json: the summary lines and a note; no report.html: no drawing line", async () => {
    const none = copy((d) => fs.rmSync(path.join(d, "report.json")));
    const r = await inspect(none);
    expect(r.error).toBeNull();
    expect(r.stdout).toBe(`${llamaHead(none)}(no report.json in this engine)\n`);
    const noHtml = copy((d) => fs.rmSync(path.join(d, "report.html")));
    expect((await inspect(noHtml)).stdout).toBe(`${llamaHead(noHtml)}${summary}\n`);
  });

  it("no architecture in config.json: 'model'; no passes: 'none'", async () => {
    const dir = copy((d) =>
      editJson(path.join(d, "config.json"), (j) => {
        delete (j.model as Record<string, unknown>).architecture;
        (j.build as Record<string, unknown>).passes = [];
      }),
    );
    const r = await inspect(dir, "--no-notes");
    expect(r.error).toBeNull();
    expect(r.stdout.startsWith(llamaHead(dir, "model", "none"))).toBe(true);
  });

  it("a report.json that is not JSON, or not a fusion report: one line naming the file and the place", async () => {
    const text = '{"version": 1,\n"model": ';
    let parseMessage = "";
    try {
      JSON.parse(text);
    } catch (e) {
      parseMessage = (e as Error).message;
    }
    const broken = copy((d) => fs.writeFileSync(path.join(d, "report.json"), text));
    const b = await inspect(broken);
    const reportPath = path.join(broken, "report.json");
    expect((b.error as Error).message).toBe(`${reportPath}: not valid JSON (${parseMessage.split("\n")[0]})`);
    // What is printed before: the summary lines, read from the engine.
    expect(b.stdout).toBe(llamaHead(broken));
    // --json refuses it the same way, printing nothing (it printed the half document and exited 0).
    const j = await inspect(broken, "--json");
    expect((j.error as Error).message).toBe(`${reportPath}: not valid JSON (${parseMessage.split("\n")[0]})`);
    expect(j.stdout).toBe("");

    const wrong = copy((d) =>
      editJson(path.join(d, "report.json"), (j) => {
        (j.passes as { name: unknown }[])[1].name = 5;
      }),
    );
    const parsed = FusionReport.safeParse(
      JSON.parse(fs.readFileSync(path.join(wrong, "report.json"), "utf8")),
    );
    expect(parsed.success).toBe(false);
    const issue = parsed.error!.issues[0];
    expect(issue.path).toEqual(["passes", 1, "name"]);
    const w = await inspect(wrong);
    expect((w.error as Error).message).toBe(
      `${path.join(wrong, "report.json")}: not a fusion report this tsllm reads (at "passes.1.name": ${issue.message})`,
    );
  });

  it("a usage error is commander's: one line, the --help hint, exit 1", async () => {
    const r = await inspect();
    expect(r.error).toBeInstanceOf(Exit);
    expect((r.error as Exit).code).toBe(1);
    expect(r.stderr).toBe(
      "error: missing required argument 'engine'\n(tsllm-inspect --help lists the flags)\n",
    );
  });
});
