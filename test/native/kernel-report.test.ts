// The runtime's kernel report (src/native/kernel-report.ts, tsllm-run / tsllm-bench --verbose) from hand-built
// per-node counters: the totals line sums every node's counters; rms_norm / gated_act nodes folded into a linear's
// gemv are listed with their linear (the first maxPairs), their skipped launches summed; add / add_rms_norm nodes
// folded into a moe's combine kernel are reported apart and never counted as gemv fusion.
import { describe, expect, it } from "vitest";
import type { NodeStats } from "../../src/native/binding.ts";
import { kernelReport } from "../../src/native/kernel-report.ts";

const ZERO = {
  foldedInto: -1,
  own: 0,
  folded: 0,
  cublaslt: 0,
  gemv: 0,
  gemvRms: 0,
  gemvGated: 0,
  fp8Fmha: 0,
  fp8Act: 0,
};
const node = (op: string, name: string, s: Partial<NodeStats> = {}): NodeStats => ({
  op,
  name,
  ...ZERO,
  ...s,
});

describe("kernelReport", () => {
  it("sums each counter over the nodes; no fold planned", () => {
    const stats = [
      node("rms_norm", "n0", { own: 3, fp8Act: 2 }),
      node("linear", "w.qkv", { cublaslt: 1, gemv: 2, gemvRms: 4 }),
      node("attention", "a0", { own: 5, fp8Fmha: 6 }),
      node("linear", "w.gate_up", { cublaslt: 10, gemv: 20, gemvGated: 7 }),
      node("gated_act", "g0", { own: 8, fp8Act: 9 }),
    ];
    expect(kernelReport(stats)).toEqual([
      "runtime kernels: linear launches cuBLASLt 11, gemv 22, gemv+rms_norm 4, gemv+gated_act 7; attention context " +
        "steps through the FP8 context FMHA 6; norm / gated_act launches writing FP8 rows for the next FP8 GEMM 11; " +
        "other launches 16",
      "runtime gemv fusion: none planned (off, or no rms_norm / gated_act next to a linear it could fold into)",
    ]);
    expect(kernelReport([])[1]).toBe(
      "runtime gemv fusion: none planned (off, or no rms_norm / gated_act next to a linear it could fold into)",
    );
  });

  it("lists the planned folds by op, the launches they skipped, and each pair up to maxPairs", () => {
    const stats = [
      node("rms_norm", "n0", { foldedInto: 1, folded: 5, own: 1 }),
      node("linear", "w.qkv"),
      node("linear", "w.gate_up"),
      node("gated_act", "g0", { foldedInto: 2, folded: 7, own: 2 }),
      node("rms_norm", "n1", { foldedInto: 5, folded: 11, own: 0 }),
      node("linear", "w.o"),
    ];
    const fold =
      "runtime gemv fusion (decode, M ≤ 4, where the tuned fused gemv is faster): 2 rms_norm, 1 gated_act fold into a " +
      "linear's gemv (rms_norm into the linear it feeds, or into the last block of the linear writing its input; " +
      "gated_act into the gate_up linear before it); 23 launches skipped so far";
    const all = kernelReport(stats);
    expect(all.slice(1)).toEqual([
      fold,
      "  node 0 rms_norm n0 -> node 1 linear w.qkv: folded 5, ran 1",
      "  node 3 gated_act g0 -> node 2 linear w.gate_up: folded 7, ran 2",
      "  node 4 rms_norm n1 -> node 5 linear w.o: folded 11, ran 0",
    ]);
    // maxPairs: the rest counted in one line; exactly maxPairs pairs: no such line.
    expect(kernelReport(stats, 2).slice(2)).toEqual([
      "  node 0 rms_norm n0 -> node 1 linear w.qkv: folded 5, ran 1",
      "  node 3 gated_act g0 -> node 2 linear w.gate_up: folded 7, ran 2",
      "  … 1 more",
    ]);
    expect(kernelReport(stats, 3)).toEqual(all);
    // The default is 6 pairs.
    const many = Array.from({ length: 8 }, (_, i) => [
      node("rms_norm", `n${i}`, { foldedInto: 2 * i + 1, folded: 1 }),
      node("linear", `w${i}`),
    ]).flat();
    const lines = kernelReport(many);
    expect(lines).toHaveLength(2 + 6 + 1);
    expect(lines[7]).toBe("  node 10 rms_norm n5 -> node 11 linear w5: folded 1, ran 0");
    expect(lines[8]).toBe("  … 2 more");
  });

  it("a norm folded into the linear before it (node 0) counts as planned", () => {
    const lines = kernelReport([
      node("linear", "w.o"),
      node("rms_norm", "n1", { foldedInto: 0, folded: 3, own: 1 }),
    ]);
    expect(lines[1]).toMatch(/: 1 rms_norm fold into .* 3 launches skipped so far$/);
    expect(lines[2]).toBe("  node 1 rms_norm n1 -> node 0 linear w.o: folded 3, ran 1");
  });

  it("a fold into a node that is not there names the linear '?'", () => {
    const lines = kernelReport([node("rms_norm", "n0", { foldedInto: 4, folded: 1 })]);
    expect(lines[2]).toBe("  node 0 rms_norm n0 -> node 4 linear ?: folded 1, ran 0");
  });

  it("adds folded into a moe's combine kernel: their own line, by op, never in the gemv fusion's", () => {
    // The line named the first node's op for all of them ("2 add_rms_norm" for an add_rms_norm and an add).
    const stats = [
      node("moe", "experts.0", { own: 4 }),
      node("add_rms_norm", "r0", { foldedInto: 0, folded: 9 }),
      node("moe", "experts.1", { own: 4 }),
      node("add", "r1", { foldedInto: 2, folded: 3 }),
    ];
    expect(kernelReport(stats).slice(1)).toEqual([
      "runtime moe fusion: 1 add_rms_norm, 1 add node(s) run inside the preceding moe's combine kernel; 12 launches skipped so far",
      "runtime gemv fusion: none planned (off, or no rms_norm / gated_act next to a linear it could fold into)",
    ]);
    // With a gemv fold beside them: only the gemv fold's launches are counted as skipped by the gemv fusion.
    const mixed = [...stats, node("rms_norm", "n0", { foldedInto: 5, folded: 2 }), node("linear", "w.qkv")];
    expect(kernelReport(mixed).slice(1, 3)).toEqual([
      "runtime moe fusion: 1 add_rms_norm, 1 add node(s) run inside the preceding moe's combine kernel; 12 launches skipped so far",
      "runtime gemv fusion (decode, M ≤ 4, where the tuned fused gemv is faster): 1 rms_norm fold into a linear's gemv " +
        "(rms_norm into the linear it feeds, or into the last block of the linear writing its input; gated_act into the " +
        "gate_up linear before it); 2 launches skipped so far",
    ]);
  });
});
