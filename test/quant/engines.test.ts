// Quantised engines of both fixtures against the transformers goldens, through the reference executor
// (which computes the kernels' numerics: src/ops/quant-linear.ts). Bounds, and why:
//   int8-wo ≤ 0.1   per-channel int8 weights: step amax/127, RMS error ≈ 0.4% of a weight's std.
//   fp8     ≤ 0.5   E4M3 keeps 3 mantissa bits: every weight *and* every activation entering a GEMM
//                   carries up to 2^-4 relative rounding error (≈ 2% RMS) — about 6× int8-wo's weight
//                   error on each operand. Measured: weights alone 0.32 (llama), both 0.44 (llama), 0.20
//                   (gptj). The suggested 0.25 holds for gptj, not for tiny-llama's random weights.
//   int4-wo ≤ 1.25  group 32: step amax(32)/7 is ≈ 17× int8-wo's amax(row)/127, so ≈ 17 × int8-wo's
//                   measured 0.07 ≈ 1.2 (measured 1.03 llama, 0.57 gptj). These random-weight models
//                   have logit std ≈ 0.7 and small top-1 margins, so top-1 agreement drops accordingly.
//   fp8 KV cache ≤ 0.2  (per-tensor scale 1.0): K/V of past steps rounded to E4M3.
// Top-1 agreement over all golden positions is printed and held above what was measured, with margin.
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { openEngine } from "../../src/engine/reader.ts";
import { ReferenceExecutor } from "../../src/executor/reference.ts";
import { checkGolden, readGolden } from "../../src/golden.ts";
import { buildFixture, TINY_GPTJ, TINY_LLAMA } from "../fixtures.ts";

const cases = [
  { quant: "int8-wo", bound: 0.1, top1: 0.9 },
  { quant: "fp8", bound: 0.5, top1: 0.75 },
  { quant: "int4-wo", groupSize: 32, bound: 1.25, top1: 0.45 },
  { quant: "none", kvCacheDtype: "fp8", bound: 0.2, top1: 0.95 },
] as const;

describe("quantised engines vs the goldens", () => {
  for (const [which, dir] of [
    ["llama", TINY_LLAMA],
    ["gptj", TINY_GPTJ],
  ] as const)
    for (const c of cases) {
      const what = `${c.quant}${"groupSize" in c ? ` group ${c.groupSize}` : ""}${"kvCacheDtype" in c ? ` kv ${c.kvCacheDtype}` : ""}`;
      it(`tiny-${which} ${what}: max |Δlogit| ≤ ${c.bound}`, async () => {
        const engine = await buildFixture(which, {
          quant: c.quant,
          groupSize: "groupSize" in c ? c.groupSize : undefined,
          kvCacheDtype: "kvCacheDtype" in c ? c.kvCacheDtype : undefined,
        });
        const report = checkGolden(
          ReferenceExecutor.load(engine),
          readGolden(path.join(dir, "golden.safetensors")),
        );
        const agree = report.perPrompt.reduce((a, p) => a + p.top1Agree, 0);
        const positions = report.perPrompt.reduce((a, p) => a + p.positions, 0);
        console.log(
          `tiny-${which} ${what}: max |Δlogit| ${report.maxAbs.toFixed(4)}, top-1 ${agree}/${positions}`,
        );
        expect(report.maxAbs).toBeLessThanOrEqual(c.bound);
        expect(agree / positions).toBeGreaterThanOrEqual(c.top1);

        const h = openEngine(engine).ranks[0].header;
        if (c.quant !== "none") {
          const dtypes = new Map(h.values.map((v) => [v.id, v.dtype]));
          const q = h.nodes.filter((n) => n.op === "quant_linear");
          expect(q.length).toBe(8); // per layer: fused qkv, o, gate/up (or fc_in), down (fc_out)
          const want = { fp8: "fp8e4m3", "int8-wo": "i8", "int4-wo": "u8" }[c.quant];
          for (const n of q) expect(dtypes.get(n.inputs[1]!)).toBe(want);
          expect(h.nodes.filter((n) => n.op === "linear").length).toBe(1); // lm_head
        } else expect(h.kv_cache.dtype).toBe("fp8");
      });
    }

  it("tp 2 and quantisation compose (tiny-llama int8-wo --tp 2 ≤ 0.1)", async () => {
    const engine = await buildFixture("llama", { quant: "int8-wo", tp: 2 });
    const report = checkGolden(
      ReferenceExecutor.load(engine),
      readGolden(path.join(TINY_LLAMA, "golden.safetensors")),
    );
    console.log(`tiny-llama int8-wo tp 2: max |Δlogit| ${report.maxAbs.toFixed(4)}`);
    expect(report.maxAbs).toBeLessThanOrEqual(0.1);
  });
});
