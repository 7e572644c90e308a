// tsllm-bench prepare-dataset → throughput --device cpu end to end, and the trtllm-bench dataset format
// (TensorRT-LLM prepare_dataset.py's lines, its "prompt" form through the engine's tokenizer).
import { spawn, spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { readDataset } from "../../src/serving/dataset.ts";
import { TextTokenizer } from "../../src/text/tokenizer.ts";
import { buildFixture, REPO, TINY_LLAMA, tmpDir } from "../fixtures.ts";

const BENCH = path.join(REPO, "bin/tsllm-bench.mjs");
const bench = (args: string[]) => spawnSync(process.execPath, [BENCH, ...args], { encoding: "utf8" });
let dir: string;
let work: string;

beforeAll(async () => {
  dir = await buildFixture("llama", { maxSeqLen: 256, maxNumTokens: 64, tokensPerBlock: 8 });
  work = tmpDir();
});

describe("tsllm-bench prepare-dataset", () => {
  it("writes token-norm-dist lines; zero stdev gives equal lengths; a seed repeats", () => {
    const args = [
      "prepare-dataset",
      dir,
      "--num-requests",
      "5",
      "--input-mean",
      "12",
      "--output-mean",
      "7",
      "--seed",
      "4",
    ];
    const a = bench(args);
    expect(a.status, a.stderr).toBe(0);
    expect(bench(args).stdout).toBe(a.stdout);
    const lines = a.stdout
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l));
    expect(lines.map((l) => l.task_id)).toEqual([0, 1, 2, 3, 4]);
    for (const l of lines) {
      expect(Object.keys(l)).toEqual(["task_id", "input_ids", "output_tokens"]);
      expect(l.input_ids.length).toBe(12);
      expect(l.output_tokens).toBe(7);
      expect(l.input_ids.every((t: number) => Number.isInteger(t) && t >= 0 && t < 512)).toBe(true);
    }
    const spread = bench([...args, "--input-stdev", "4", "--output-stdev", "2"])
      .stdout.trim()
      .split("\n")
      .map((l) => JSON.parse(l));
    expect(new Set(spread.map((l) => l.input_ids.length)).size).toBeGreaterThan(1);
  });

  // Ctrl-C during the write of a large --output used to leave the half-written hidden sibling (.NAME.tmp-PID-…)
  // behind, one per interrupted run (the signal's default action ends the process in the middle of the write).
  it("a SIGINT while --output is written leaves no half-written sibling; the file is the old one or whole", async () => {
    const box = tmpDir();
    const out = path.join(box, "big.jsonl");
    fs.writeFileSync(out, '{"task_id":0,"input_ids":[1],"output_tokens":1}\n');
    const args = ["prepare-dataset", dir, "--num-requests", "200000", "--input-mean", "128"];
    const child = spawn(process.execPath, [BENCH, ...args, "--output-mean", "4", "--output", out], {
      stdio: "ignore",
    });
    const exited = new Promise<{ code: number | null; signal: string | null }>((res) =>
      child.on("exit", (code, signal) => res({ code, signal })),
    );
    let seen = false;
    for (let i = 0; i < 20000 && !seen && child.exitCode === null; i++) {
      seen = fs.readdirSync(box).some((n) => n.startsWith(".big.jsonl.tmp-"));
      if (!seen) await new Promise((r) => setTimeout(r, 1));
    }
    expect(seen).toBe(true);
    child.kill("SIGINT");
    expect(await exited).toEqual({ code: null, signal: "SIGINT" });
    expect(
      fs.readdirSync(box),
      JSON.stringify(fs.readdirSync(box).map((n) => [n, fs.statSync(path.join(box, n)).size])),
    ).toEqual(["big.jsonl"]);
    const text = fs.readFileSync(out, "utf8");
    expect(text.endsWith("\n")).toBe(true);
    const lines = text.trimEnd().split("\n");
    expect([1, 200000]).toContain(lines.length);
    expect(() => JSON.parse(lines.at(-1)!)).not.toThrow();
  });

  it("refuses a bad option with one line and writes nothing", () => {
    const out = path.join(work, "never.jsonl");
    const r = bench([
      "prepare-dataset",
      dir,
      "--num-requests",
      "0",
      "--input-mean",
      "12",
      "--output-mean",
      "7",
      "--output",
      out,
    ]);
    expect(r.status).not.toBe(0);
    expect(r.stderr.split("\n")[0]).toMatch(/^error: .*Allowed: --num-requests ≥ 1\.$/);
    expect(fs.existsSync(out)).toBe(false);
  });

  it("--output replaces an earlier dataset, refuses any other file without --force", () => {
    const out = path.join(work, "d.jsonl");
    const args = (n: string, ...extra: string[]) => [
      "prepare-dataset",
      dir,
      "--num-requests",
      n,
      "--input-mean",
      "4",
      "--output-mean",
      "2",
      "--output",
      out,
      ...extra,
    ];
    expect(bench(args("2")).status).toBe(0);
    expect(bench(args("3")).status).toBe(0);
    expect(readDataset(out)).toHaveLength(3);
    fs.writeFileSync(out, "my corpus\n");
    const r = bench(args("2"));
    expect(r.status).toBe(1);
    expect(r.stderr).toBe(
      `error: --output ${out}: exists and is not a dataset written earlier; pass --force to replace it, or name another file\n`,
    );
    expect(fs.readFileSync(out, "utf8")).toBe("my corpus\n");
    expect(bench(args("2", "--force")).status).toBe(0);
    expect(readDataset(out)).toHaveLength(2);
  });
});

describe("trtllm-bench dataset lines", () => {
  it("loads TensorRT-LLM prepare_dataset.py output unchanged (extra fields ignored) and the prompt form", () => {
    const file = path.join(work, "trt.jsonl");
    fs.writeFileSync(
      file,
      '{"task_id": 0, "input_ids": [128000, 2028, 374], "output_tokens": 128}\n' +
        '{"task_id": 1, "input_ids": [5, 6], "output_tokens": 3, "lora_request": {"lora_name": "lora_1", "lora_int_id": 1, "lora_path": "loras/1"}}\n' +
        '{"task_id": 2, "prompt": "Hello world", "output_tokens": 4}\n',
    );
    const tok = TextTokenizer.load(TINY_LLAMA);
    const d = readDataset(file, { encode: (t) => tok.encode(t) });
    expect(d[0]).toEqual({ taskId: 0, inputIds: [128000, 2028, 374], outputTokens: 128, line: 1 });
    expect(d[1]).toEqual({ taskId: 1, inputIds: [5, 6], outputTokens: 3, line: 2 });
    expect(d[2].inputIds).toEqual(tok.encode("Hello world"));
    expect(() => readDataset(file, { vocabSize: 512 })).toThrow(
      `${file}:1: token id 128000 outside the engine's vocabulary (0..511)`,
    );
    expect(() => readDataset(file)).toThrow(`${file}:3: a "prompt" line needs a tokenizer`);
    fs.writeFileSync(file, '{"task_id": 0, "input_ids": [1], "output_tokens": 0}\n');
    expect(() => readDataset(file)).toThrow(`${file}:1: "output_tokens" must be an integer >= 1, got 0`);
  });
});

describe("tsllm-bench throughput --device cpu", () => {
  it("runs a prepared dataset end to end and writes the JSON report", () => {
    const ds = path.join(work, "ds.jsonl");
    expect(
      bench([
        "prepare-dataset",
        dir,
        "--num-requests",
        "12",
        "--input-mean",
        "30",
        "--input-stdev",
        "20",
        "--output-mean",
        "6",
        "--output-stdev",
        "3",
        "--output",
        ds,
      ]).status,
    ).toBe(0);
    const entries = readDataset(ds);
    // The CPU run at max batch 4, report to `json`, with extra flags.
    const throughput = (json: string, ...extra: string[]) =>
      bench([
        "throughput",
        dir,
        "--dataset",
        ds,
        "--device",
        "cpu",
        "--max-batch-size",
        "4",
        ...extra,
        "--json",
        json,
      ]);
    const json = path.join(work, "report.json");
    const r = throughput(json);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/total output throughput +[\d.]+ tok\/s/);
    expect(r.stdout).toMatch(/time to first token +mean [\d.]+ +p50 [\d.]+ +p90 [\d.]+ +p99 [\d.]+/);
    const rep = JSON.parse(fs.readFileSync(json, "utf8"));
    expect(rep.tsllm_bench).toBe("throughput");
    expect(rep.num_requests).toBe(12);
    expect(rep.finish_reasons).toEqual({ length: 12 });
    expect(rep.total_output_tokens).toBe(entries.reduce((a, e) => a + e.outputTokens, 0));
    expect(rep.total_input_tokens).toBe(entries.reduce((a, e) => a + e.inputIds.length, 0));
    expect(rep.limits.maxBatchSize).toBe(4);
    expect(rep.output_throughput_tok_s).toBeCloseTo(rep.total_output_tokens / rep.total_time_s, 6);
    expect(rep.ttft_ms.p50).toBeLessThanOrEqual(rep.e2e_ms.p50);
    expect(rep.kv_blocks_peak_used).toBeGreaterThan(0);
    expect(rep.steps.mean_decode_batch).toBeLessThanOrEqual(4);
    expect(rep.engine_warmup).toBeNull(); // (on cpu only when asked: the reference executor has nothing to warm)
    expect(r.stdout).not.toMatch(/warm-up/);

    // --engine-warmup: the batch manager's warm-up runs first, untimed, and the run's own figures stay its own.
    const json2 = path.join(work, "report-warm.json");
    const w = throughput(json2, "--engine-warmup");
    expect(w.status, w.stderr).toBe(0);
    expect(w.stdout).toMatch(/^warm-up +batches 1, 2, 3, 4: \d+ steps in \d+ ms, untimed$/m);
    const rep2 = JSON.parse(fs.readFileSync(json2, "utf8"));
    expect(rep2.engine_warmup.batch_sizes).toEqual([1, 2, 3, 4]);
    expect(rep2.engine_warmup.steps).toBeGreaterThanOrEqual(12); // a context and two decode steps a size
    expect([rep2.num_requests, rep2.total_output_tokens, rep2.total_input_tokens]).toEqual([
      rep.num_requests,
      rep.total_output_tokens,
      rep.total_input_tokens,
    ]);
    expect(rep2.steps.count).toBe(rep.steps.count);

    // Its own earlier report is replaced; any other file is refused at once (nothing run), unless --force.
    expect(throughput(json).status).toBe(0);
    const notes = path.join(work, "notes.json");
    fs.writeFileSync(notes, '{"mine": true}\n');
    const refused = throughput(notes);
    expect(refused.status).toBe(1);
    expect(refused.stderr).toBe(
      `error: --json ${notes}: exists and is not a tsllm-bench throughput report written earlier; pass --force to replace it, or name another file\n`,
    );
    expect(refused.stdout).toBe("");
    expect(fs.readFileSync(notes, "utf8")).toBe('{"mine": true}\n');
    const forced = throughput(notes, "--force");
    expect(forced.status, forced.stderr).toBe(0);
    expect(JSON.parse(fs.readFileSync(notes, "utf8")).tsllm_bench).toBe("throughput");
  });

  // It named the task id only ("request x"), not the line as every other refusal of a dataset line does.
  it("a request over max_seq_len stops the run before it starts, naming its line and task", () => {
    const ds = path.join(work, "long.jsonl");
    fs.writeFileSync(
      ds,
      `${JSON.stringify({ task_id: "ok", input_ids: [1, 2], output_tokens: 2 })}\n\n` +
        `${JSON.stringify({ task_id: "x", input_ids: Array(250).fill(1), output_tokens: 10 })}\n`,
    );
    const r = bench(["throughput", dir, "--dataset", ds, "--device", "cpu"]);
    expect(r.status).not.toBe(0);
    expect(r.stdout).toBe("");
    expect(r.stderr).toBe(
      `error: ${ds}:3: request x: prompt of 250 tokens + output_tokens 10 = 260 exceeds max_seq_len 256 (raise --max-seq-len)\n`,
    );
  });

  // It was refused only at its submit: after every request before it had run (here the warm-up and two requests
  // one at a time), without its line, as "max_new_tokens" (the dataset's field is output_tokens).
  it("a request the KV pool can never hold stops the run before it starts, naming its line and task", () => {
    const ds = path.join(work, "big.jsonl");
    const ok = JSON.stringify({ task_id: "ok", input_ids: [1, 2], output_tokens: 2 });
    fs.writeFileSync(
      ds,
      `${ok}\n${ok}\n${JSON.stringify({ task_id: "y", input_ids: Array(30).fill(1), output_tokens: 4 })}\n`,
    );
    const args = ["throughput", dir, "--dataset", ds, "--device", "cpu", "--concurrency", "1"];
    const r = bench([...args, "--kv-blocks", "4"]);
    expect(r.status).not.toBe(0);
    expect(r.stdout).toBe("");
    // 30 + 4 - 1 = 33 tokens: 5 blocks of 8 (the last token is never cached); 4 blocks hold 32.
    expect(r.stderr).toBe(
      `error: ${ds}:3: request y: prompt of 30 tokens + output_tokens 4 needs 5 KV blocks of 8 tokens, the pool has 4 (raise --kv-blocks or --kv-cache-free-gpu-mem-fraction)\n`,
    );
    const fits = bench([...args, "--kv-blocks", "5", "--warmup", "0"]);
    expect(fits.status, fits.stderr).toBe(0);
    expect(fits.stdout).toMatch(/requests +3 \(length 3\)/);
  });
});
