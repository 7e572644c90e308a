// What the runtime ran, from its per-node kernel counters: printed by tsllm-run --verbose and tsllm-bench
// --verbose. The GEMV prologue fusion is decided inside the runtime (decode steps, M ≤ 4, where the tuner
// finds the fused gemv faster), so this is where it becomes visible.
import type { NodeStats } from "./binding.ts";

export function kernelReport(stats: readonly NodeStats[], maxPairs = 6): string[] {
  const sum = (k: keyof NodeStats) => stats.reduce((a, s) => a + (s[k] as number), 0);
  const lines = [
    `runtime kernels: linear launches cuBLASLt ${sum("cublaslt")}, gemv ${sum("gemv")}, gemv+rms_norm ${sum("gemvRms")}, ` +
      `gemv+gated_act ${sum("gemvGated")}; attention context steps through the FP8 context FMHA ${sum("fp8Fmha")}; ` +
      `norm / gated_act launches writing FP8 rows for the next FP8 GEMM ${sum("fp8Act")}; other launches ${sum("own")}`,
  ];
  const folded = stats.map((s, i) => [i, s] as const).filter(([, s]) => s.foldedInto >= 0);
  // The moe combine kernel does the add / add_rms_norm right after a moe node (every step, any batch).
  const byOp = (nodes: (readonly [number, NodeStats])[]) => {
    const m = new Map<string, number>();
    for (const [, s] of nodes) m.set(s.op, (m.get(s.op) ?? 0) + 1);
    return [...m].map(([op, n]) => `${n} ${op}`).join(", ");
  };
  const intoMoe = folded.filter(([, s]) => stats[s.foldedInto]?.op === "moe");
  if (intoMoe.length > 0) {
    const n = intoMoe.reduce((a, [, s]) => a + s.folded, 0);
    lines.push(
      `runtime moe fusion: ${byOp(intoMoe)} node(s) run inside the preceding moe's combine kernel; ${n} launches skipped so far`,
    );
  }
  const planned = folded.filter(([, s]) => stats[s.foldedInto]?.op !== "moe");
  if (planned.length === 0) {
    lines.push(
      "runtime gemv fusion: none planned (off, or no rms_norm / gated_act next to a linear it could fold into)",
    );
    return lines;
  }
  // foldedInto after the node: a prologue of the linear it feeds; before it: the gate_up gemv's epilogue (gated_act)
  // or the norm tail of the linear writing the rms_norm's input.
  lines.push(
    `runtime gemv fusion (decode, M ≤ 4, where the tuned fused gemv is faster): ${byOp(planned)} ` +
      `fold into a linear's gemv (rms_norm into the linear it feeds, or into the last block of the linear writing ` +
      `its input; gated_act into the gate_up linear before it); ` +
      `${planned.reduce((a, [, s]) => a + s.folded, 0)} launches skipped so far`,
  );
  for (const [i, s] of planned.slice(0, maxPairs))
    lines.push(
      `  node ${i} ${s.op} ${s.name} -> node ${s.foldedInto} linear ${stats[s.foldedInto]?.name ?? "?"}: folded ${s.folded}, ran ${s.own}`,
    );
  if (planned.length > maxPairs) lines.push(`  … ${planned.length - maxPairs} more`);
  return lines;
}
