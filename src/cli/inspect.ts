// tsllm-inspect: a short summary of an engine directory and its fusion report (from report.json).
import * as fs from "node:fs";
import * as path from "node:path";
import { openEngine } from "../engine/reader.ts";
import { DTYPE_BYTES, numel } from "../ir/types.ts";
import { FusionReport, fmtBytes, formatReport, REPORT_HTML, REPORT_JSON } from "../report/index.ts";
import { command, main } from "./common.ts";

const program = command(
  "tsllm-inspect",
  "Print an engine's build summary and its fusion report (report.json) again.",
)
  .argument("<engine>", "engine directory")
  .option("--json", "print report.json as it is")
  .option("--no-notes", "leave out the passes' notes");

/** tsllm-inspect on `argv` (as process.argv: node, script, then the arguments). */
export async function tsllmInspect(argv: readonly string[]): Promise<void> {
  program.parse(argv);
  const [dir] = program.args;
  const o = program.opts();
  const reportPath = path.join(dir, REPORT_JSON);
  if (o.json) {
    if (!fs.existsSync(reportPath)) throw new Error(`${dir}: no ${REPORT_JSON} in this engine`);
    // As it is, but only when it is JSON: a truncated report.json was printed with exit 0 (what reads --json
    // got half a document), while the table refused the same file.
    const text = fs.readFileSync(reportPath, "utf8");
    parseReportJson(reportPath, text);
    process.stdout.write(text);
    return;
  }
  const engine = openEngine(dir);
  const { build, facts } = engine.config;
  const arch = String((engine.config.model as { architecture?: unknown }).architecture ?? "model");
  let weightBytes = 0;
  let weights = 0;
  for (const r of engine.ranks) {
    const values = new Map(r.header.values.map((v) => [v.id, v]));
    for (const w of r.header.weights) {
      const v = values.get(w.value)!;
      weightBytes += numel(v.shape) * DTYPE_BYTES[v.dtype];
      weights++;
    }
  }
  const onDisk = engine.config.ranks.reduce((a, r) => a + r.bytes, 0);
  // Expert parallelism lays the ranks out differently (each group holds whole experts): without it a tp 4,
  // moe_ep_size 2 engine read exactly as a plain tp 4 one.
  const ep =
    build.moe_ep_size > 1
      ? ` = moe_ep_size ${build.moe_ep_size} × moe_tp_size ${build.tp / build.moe_ep_size}`
      : "";
  const lines = [
    `engine ${dir}: ${arch}, ${facts.numLayers} layers, hidden ${facts.hiddenSize}, vocab ${facts.vocabSize}`,
    `  ranks ${engine.ranks.length} (tp ${build.tp}${ep}), dtype ${build.dtype}, kv cache ${build.kv_cache_dtype}, quant ${build.quant}, sm ${build.sm}`,
    `  limits: max_batch_size ${build.max_batch_size}, max_seq_len ${build.max_seq_len}, max_num_tokens ${build.max_num_tokens}, tokens_per_block ${build.tokens_per_block}`,
    `  weights: ${weights} tensors, ${fmtBytes(weightBytes)} over all ranks` +
      (build.random_weights
        ? ` (random: stored as seeds, ${fmtBytes(onDisk)} on disk)`
        : `, ${fmtBytes(onDisk)} on disk`),
    `  passes: ${build.passes.join(", ") || "none"}`,
  ];
  process.stdout.write(`${lines.join("\n")}\n\n`);
  if (!fs.existsSync(reportPath)) {
    process.stdout.write(`(no ${REPORT_JSON} in this engine)\n`);
    return;
  }
  const json = parseReportJson(reportPath, fs.readFileSync(reportPath, "utf8"));
  const parsed = FusionReport.safeParse(json);
  if (!parsed.success) {
    const i = parsed.error.issues[0];
    throw new Error(
      `${reportPath}: not a fusion report this tsllm reads (at "${i.path.join(".")}": ${i.message})`,
    );
  }
  process.stdout.write(`${formatReport(parsed.data, { notes: o.notes })}\n`);
  if (fs.existsSync(path.join(dir, REPORT_HTML)))
    process.stdout.write(`drawing: ${path.join(dir, REPORT_HTML)}\n`);
}

function parseReportJson(reportPath: string, text: string): unknown {
  try {
    return JSON.parse(text);
  } catch (e) {
    // JSON.parse's message alone ("Unexpected end of JSON input") does not say which file is broken.
    throw new Error(`${reportPath}: not valid JSON (${(e as Error).message.split("\n")[0]})`);
  }
}

await main(() => tsllmInspect(process.argv));
