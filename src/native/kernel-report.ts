// What the runtime ran, from its per-node kernel counters: printed by tsllm-run --verbose and tsllm-bench
// --verbose. The GEMV prologue fusion is decided inside the runtime (decode steps, M ≤ 4, where the tuner
// finds the fused gemv faster), so this is where it becomes visible.
import type { NodeStats } from "./binding.ts";

export function kernelReport(stats: readonly NodeStats[], maxPairs = 6): string[] {
  const sum = (k: keyof NodeStats) => stats.reduce((a, s) => a + (s[k] as number), 0);
  const lines = [
    `runtime kernels: linear launches cuBLASLt ${sum("cublaslt")}, gemv ${sum("gemv")}, gemv+rms_norm ${sum("gemvRms")}, ` +
      `gemv+gated_act ${sum("gemvGated")}; other launches ${sum("own")}`,
  ];
  const planned = stats.map((s, i) => [i, s] as const).filter(([, s]) => s.foldedInto >= 0);
  if (planned.length === 0) {
    lines.push("runtime prologue fusion: none planned (off, or no rms_norm / gated_act feeding only a linear)");
    return lines;
  }
  const byOp = new Map<string, number>();
  for (const [, s] of planned) byOp.set(s.op, (byOp.get(s.op) ?? 0) + 1);
  lines.push(
    `runtime prologue fusion (decode, M ≤ 4, where the tuned fused gemv is faster): ${[...byOp].map(([op, n]) => `${n} ${op}`).join(", ")} ` +
      `fold into their linear's gemv; ${sum("folded")} launches skipped so far`,
  );
  for (const [i, s] of planned.slice(0, maxPairs))
    lines.push(`  node ${i} ${s.op} ${s.name} -> node ${s.foldedInto} linear ${stats[s.foldedInto]?.name ?? "?"}: folded ${s.folded}, ran ${s.own}`);
  if (planned.length > maxPairs) lines.push(`  … ${planned.length - maxPairs} more`);
  return lines;
}
