// The fusion report as a terminal table (tsllm-compile prints it; tsllm-inspect prints it again).

import { fmtBytes } from "./bytes.ts";
import type { FusionReport } from "./report.ts";

const pad = (s: string | number, n: number) => String(s).padEnd(n);
const lpad = (s: string | number, n: number) => String(s).padStart(n);
const ratio = (a: number, b: number) => (b > 0 ? `${(a / b).toFixed(1)}×` : "–");

export function formatReport(r: FusionReport, o: { notes?: boolean } = {}): string {
  const b = r.build;
  const lines: string[] = [];
  lines.push(
    `fusion report: ${r.model.numLayers} layers, tp ${b.tp} (rank 0 shown), ${b.dtype}, sm ${b.sm}, ` +
      `limits ${b.max_batch_size} seqs / ${b.max_num_tokens} tokens / ${b.max_seq_len} positions`,
  );
  lines.push(`${pad("pass", 18)}${lpad("matches", 8)}  ${pad("ops", 13)}where`);
  for (const p of r.passes) {
    const ops = p.status === "disabled" ? "disabled" : `${p.opsBefore} → ${p.opsAfter}`;
    const pats = Object.entries(p.patterns);
    const what =
      p.status === "failed"
        ? "FAILED, graph left unchanged (see notes)"
        : p.status === "disabled"
          ? ""
          : [pats.length > 1 ? `${pats.map(([k, v]) => `${k} ×${v}`).join(", ")}:` : "", p.where.join(", ")]
              .filter(Boolean)
              .join(" ");
    lines.push(`${pad(p.name, 18)}${lpad(p.matches ?? "–", 8)}  ${pad(ops, 13)}${what}`);
  }
  const row = (name: string, before: string, after: string, extra = "") =>
    lines.push(`${pad(name, 34)}${lpad(before, 11)} → ${pad(after, 11)}${extra}`);
  lines.push("");
  row(
    "kernel launches per decoder layer",
    String(r.before.launchesPerLayer),
    String(r.after.launchesPerLayer),
  );
  row("kernel launches per token (step)", String(r.before.launches), String(r.after.launches));
  row(
    "activation traffic per token",
    fmtBytes(r.before.trafficPerToken),
    fmtBytes(r.after.trafficPerToken),
    `saved ${fmtBytes(r.savedBytesPerToken)}/token (${fmtBytes(r.savedLayerBytesPerToken)} per layer) no longer written and read back`,
  );
  row(
    "intermediate tensors per token",
    `${r.before.activations}`,
    `${r.after.activations}`,
    `${fmtBytes(r.before.activationBytesPerToken)} → ${fmtBytes(r.after.activationBytesPerToken)} written`,
  );
  const a = r.arena;
  lines.push(
    `${pad("activation arena", 34)}${lpad(fmtBytes(a.bytes), 11)} ${a.planned ? "(liveness plan)" : "(no plan: naive)"}` +
      ` vs naive sum ${fmtBytes(a.naiveBytes)} (${ratio(a.naiveBytes, a.bytes)} smaller; unfused naive ${fmtBytes(a.unfusedNaiveBytes)})`,
  );
  lines.push(
    "runtime fusion (CUDA, not counted above): decode steps of ≤ 4 tokens fold an rms_norm (no weight offset or " +
      "folded elementwise ops) or gated_act whose output feeds only a linear (no activation or elementwise chain) " +
      "into that linear's gemv when the tuned fused kernel is faster (tsllm-run / tsllm-bench --verbose list the " +
      "folded nodes); an add or add_rms_norm right after a moe node runs inside the moe's combine kernel",
  );
  const notes = r.passes.flatMap((p) => p.notes.map((n) => `${p.name}: ${n}`));
  if (o.notes !== false && notes.length) {
    lines.push("notes:");
    for (const n of notes.slice(0, 20)) lines.push(`  ${n}`);
    if (notes.length > 20) lines.push(`  … ${notes.length - 20} more in report.json`);
  }
  return lines.join("\n");
}
