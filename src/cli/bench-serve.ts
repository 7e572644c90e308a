// tsllm-bench serve: online serving benchmark against a running OpenAI-compatible server (like
// `vllm bench serve`): prompts from a dataset or random ids, Poisson arrivals or bounded concurrency.
import type { Command } from "commander";
import { filesIn } from "../engine/output-dir.ts";
import { formatServeBench, runServeBench, type ServeBenchOptions } from "../server/bench-client.ts";
import { type DatasetEntry, readDataset, STDIN_DATASET, tokenNormDist } from "../serving/dataset.ts";
import { requireTokenizer } from "../text/engine-files.ts";
import { float, int, main, NUMPY_SEED, nonEmpty } from "./common.ts";
import { FORCE_HELP, jsonReport } from "./output-file.ts";
import { progress } from "./progress.ts";

function parseGoodput(specs: string[]): ServeBenchOptions["goodput"] {
  const out: NonNullable<ServeBenchOptions["goodput"]> = {};
  for (const s of specs) {
    const m = /^(ttft|tpot|e2el):(\d+(?:\.\d+)?)$/.exec(s);
    if (!m) throw new Error(`--goodput ${s}: expected ttft:MS, tpot:MS or e2el:MS`);
    out[m[1] as "ttft" | "tpot" | "e2el"] = Number(m[2]);
  }
  return out;
}

async function serverModel(
  url: string,
  apiKey?: string,
): Promise<{ id: string; vocab_size?: number; max_model_len?: number }> {
  let res: Response;
  try {
    res = await fetch(`${url.replace(/\/+$/, "")}/v1/models`, {
      headers: apiKey ? { authorization: `Bearer ${apiKey}` } : {},
    });
  } catch (e) {
    throw new Error(`--url ${url}: cannot reach the server (${(e as Error).message})`);
  }
  if (!res.ok) throw new Error(`--url ${url}: GET /v1/models answered HTTP ${res.status}`);
  const j = (await res.json()) as { data?: { id: string }[] };
  if (!j.data?.length) throw new Error(`--url ${url}: GET /v1/models lists no model`);
  return j.data[0];
}

export function addServeBenchCommand(program: Command): void {
  program
    .command("serve")
    .description(
      "Online serving benchmark (like vllm bench serve): streamed /v1/completions requests to a running " +
        "server (tsllm-serve or any OpenAI-compatible one) at --request-rate (Poisson) and/or " +
        "--max-concurrency; prints TTFT, TPOT, inter-token and end-to-end latency (mean, p50, p90, p99), " +
        "request and token throughput, and goodput for the --goodput SLOs. Requests ignore eos, so each " +
        "generates exactly its output length.",
    )
    .requiredOption("--url <url>", "server base URL, e.g. http://127.0.0.1:8000")
    .option("--model <name>", "model name (default: the first the server lists)")
    .option(
      "--dataset <file>",
      "trtllm-bench JSONL dataset (tsllm-bench prepare-dataset); default: random prompts",
      nonEmpty("--dataset"),
    )
    .option(
      "--tokenizer <dir>",
      'engine or model folder whose tokenizer encodes a dataset\'s "prompt" lines',
      nonEmpty("--tokenizer"),
    )
    .option(
      "--num-prompts <n>",
      "random prompts to send (or the first N of the dataset)",
      int("--num-prompts", { min: 1 }),
      100,
    )
    .option(
      "--random-input-len <n>",
      "random prompt length in tokens",
      int("--random-input-len", { min: 1 }),
      128,
    )
    .option(
      "--random-output-len <n>",
      "tokens to generate per random prompt",
      int("--random-output-len", { min: 1 }),
      128,
    )
    .option("--request-rate <r>", "requests per second, Poisson arrivals (inf: all at once)", "inf")
    .option("--max-concurrency <n>", "most requests in flight", int("--max-concurrency", { min: 1 }))
    .option("--goodput <slo...>", "SLOs in ms for goodput: ttft:MS tpot:MS e2el:MS")
    .option("--warmup <n>", "requests sent (and waited for) before timing", int("--warmup", { min: 0 }), 1)
    .option("--seed <n>", "random prompts and arrival times", int("--seed", NUMPY_SEED), 0)
    .option("--api-key <key>", "Bearer key (default: $TSLLM_API_KEY)")
    .option("--json <file>", "also write the report as JSON", nonEmpty("--json"))
    .option("--force", FORCE_HELP)
    .action((o) =>
      main(async () => {
        const json = jsonReport(o, "serve", [
          ...(o.dataset && o.dataset !== STDIN_DATASET ? [o.dataset] : []),
          ...(o.tokenizer ? filesIn(o.tokenizer) : []),
        ]);
        const rate = o.requestRate === "inf" ? Infinity : float("--request-rate")(o.requestRate);
        if (!(rate > 0)) throw new Error(`--request-rate must be > 0 or inf, got ${o.requestRate}`);
        const apiKey = o.apiKey ?? process.env.TSLLM_API_KEY;
        const served = await serverModel(o.url, apiKey);
        const model = o.model ?? served.id;
        let entries: DatasetEntry[];
        if (o.dataset) {
          const tok = o.tokenizer ? requireTokenizer(o.tokenizer, "--tokenizer") : null;
          entries = readDataset(o.dataset, {
            encode: tok ? (t) => tok.encode(t) : undefined,
            vocabSize: served.vocab_size,
          }).slice(0, o.numPrompts);
        } else {
          if (!served.vocab_size)
            throw new Error(`--url ${o.url}: the server does not say its vocab_size; give --dataset FILE`);
          entries = tokenNormDist({
            numRequests: o.numPrompts,
            inputMean: o.randomInputLen,
            inputStdev: 0,
            outputMean: o.randomOutputLen,
            outputStdev: 0,
            seed: o.seed,
            vocabSize: served.vocab_size,
          });
        }
        const opts: ServeBenchOptions = {
          url: o.url,
          model,
          apiKey,
          requestRate: rate,
          maxConcurrency: o.maxConcurrency,
          seed: o.seed,
          goodput: o.goodput ? parseGoodput(o.goodput) : undefined,
        };
        process.stdout.write(
          `${entries.length} requests to ${o.url} (model "${model}") at ${Number.isFinite(rate) ? `${rate} req/s (Poisson)` : "inf req/s"}` +
            `${o.maxConcurrency ? `, at most ${o.maxConcurrency} in flight` : ""}\n`,
        );
        if (o.warmup > 0) {
          const w = await runServeBench(entries.slice(0, o.warmup), { ...opts, requestRate: Infinity });
          if (w.report.failed_requests) throw new Error(`warm-up request failed: ${w.report.first_error}`);
        }
        // progress(): on a terminal a bar that a failure or Ctrl-C takes down (a bare cli-progress bar left its redraw
        // timer running: the process never ended after its error line), off one a line every few seconds.
        const bar = progress("requests", entries.length, { unit: { name: "req" } });
        const { report } = await runServeBench(entries, { ...opts, onProgress: (d) => bar.update(d) });
        bar.stop();
        process.stdout.write(formatServeBench(report));
        json?.write(report);
        if (report.successful_requests === 0)
          throw new Error(`every request failed (first: ${report.first_error})`);
      }),
    );
}
