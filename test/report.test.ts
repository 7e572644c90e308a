// The fusion report of real model shapes (random weights: only seeds are written, so full-size builds
// are fast), tsllm-inspect, and the pipeline's debugging flags.
import { execFileSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { PASSES } from "../passes/index.ts";
import { compileEngine } from "../src/compile.ts";
import { openEngine } from "../src/engine/reader.ts";
import { ReferenceExecutor } from "../src/executor/reference.ts";
import { checkGolden } from "../src/golden.ts";
import { runPipeline } from "../src/pipeline.ts";
import { FusionReport, formatReport } from "../src/report/index.ts";
import { FP32_GOLDEN_BOUND, GPTJ_MODEL, LLAMA_MODEL, REPO, SHARED, tmpDir } from "./fixtures.ts";
import { FIXTURES, fixture } from "./passes/helpers.ts";

async function build(
  model: string,
  config: string,
  extra: Parameters<typeof compileEngine>[0] extends infer O ? Partial<O> : never = {},
) {
  const out = path.join(tmpDir(), "engine");
  const res = await compileEngine({
    modelFile: model,
    config: path.join(SHARED, "configs", config),
    randomWeights: true,
    sm: 90,
    out,
    ...extra,
  });
  const report = FusionReport.parse(JSON.parse(fs.readFileSync(path.join(out, "report.json"), "utf8")));
  return { out, res, report };
}

// The byte figures of the printed report (traffic, intermediates, arena), exactly as tsllm-compile and
// tsllm-inspect print them: the numbers, their units and the rounding (src/report/bytes.ts, fmtBytes).
const figures = (text: string) =>
  text
    .split("\n")
    .filter((l) => /^(activation traffic per token|intermediate tensors per token|activation arena)/.test(l));

describe("fusion report", () => {
  it("Llama 2 7B: 16 → at most 8 kernel launches per decoder layer, bytes saved, arena planned", async () => {
    const { out, res, report } = await build(LLAMA_MODEL, "llama-2-7b.json");
    expect(report.before.launchesPerLayer).toBe(16);
    expect(report.after.launchesPerLayer).toBeLessThanOrEqual(8);
    expect(report.after.layers).toBe(32);
    expect(report.after.layerOps).toEqual({
      rms_norm: 2,
      linear: 4,
      fused_attention: 1,
      gated_act: 1,
    });
    expect(report.after.launches).toBeLessThan(report.before.launches);
    expect(report.savedBytesPerToken).toBeGreaterThan(0);
    // Per layer: q,k,v (rope in/out) and gate/up/silu/mul intermediates no longer round-trip.
    expect(report.savedLayerBytesPerToken).toBeGreaterThan(100 * 1024);
    expect(report.arena.planned).toBe(true);
    expect(report.arena.bytes).toBeLessThan(report.arena.naiveBytes / 10);
    const byName = Object.fromEntries(report.passes.map((p) => [p.name, p]));
    for (const n of ["qkv-fusion", "gate-up-fusion", "attention-fusion"]) expect(byName[n].matches).toBe(32);
    expect(byName["epilogue-fusion"].matches).toBe(64);
    expect(byName["qkv-fusion"].where).toEqual(["model.layers.{0..31}.self_attn"]);
    // The terminal table and the files in the engine directory.
    expect(res.pipeline.summary).toMatch(/kernel launches per decoder layer\s+16 → 8/);
    expect(figures(formatReport(report))).toEqual([
      "activation traffic per token         12.7 MiB → 8.64 MiB   saved 4.09 MiB/token (131 KiB per layer) no longer written and read back",
      "intermediate tensors per token            516 → 260        5.77 MiB → 4.10 MiB written",
      "activation arena                      580 MiB (liveness plan) vs naive sum 32.8 GiB (57.9× smaller; unfused naive 46.2 GiB)",
    ]);
    expect(fs.existsSync(path.join(out, "report.html"))).toBe(true);
    const h = openEngine(out).ranks[0].header;
    expect(Object.keys(h.arena.offsets)).toHaveLength(h.nodes.reduce((a, n) => a + n.outputs.length, 0));
    expect(h.arena.bytes).toBe(report.arena.bytes);
    const kernels = new Set(h.nodes.map((n) => n.op));
    for (const op of kernels)
      expect(["embedding", "rms_norm", "linear", "fused_attention", "gated_act", "gather_rows"]).toContain(
        op,
      );
  });

  it("GPT-J 6B: 13 → 6 launches per layer (parallel attention + MLP with residuals in the GEMMs)", async () => {
    const { report } = await build(GPTJ_MODEL, "gpt-j-6b.json");
    expect(report.before.launchesPerLayer).toBe(13);
    expect(report.after.launchesPerLayer).toBe(6);
    expect(report.after.layerOps).toEqual({ layer_norm: 1, linear: 4, fused_attention: 1 });
    expect(figures(formatReport(report))).toEqual([
      "activation traffic per token         9.33 MiB → 5.39 MiB   saved 3.94 MiB/token (144 KiB per layer) no longer written and read back",
      "intermediate tensors per token            368 → 172        4.28 MiB → 2.53 MiB written",
      "activation arena                      852 MiB (liveness plan) vs naive sum 20.2 GiB (24.3× smaller; unfused naive 34.2 GiB)",
    ]);
  });

  it("tsllm-inspect prints the engine summary and the report again", async () => {
    const { out } = await build(LLAMA_MODEL, "llama-3.1-8b.json");
    const text = execFileSync(process.execPath, [path.join(REPO, "bin/tsllm-inspect.mjs"), out], {
      encoding: "utf8",
    });
    expect(text).toMatch(/LlamaForCausalLM, 32 layers/);
    expect(text).toMatch(/ranks 1 \(tp 1\), dtype bf16/);
    expect(text).toMatch(/max_num_tokens 8192/);
    expect(text).toMatch(/weights: \d+ tensors, 1[45](\.\d+)? GiB/);
    expect(text).toMatch(/qkv-fusion\s+32/);
    expect(text).toMatch(/kernel launches per decoder layer\s+16 → 8/);
    expect(figures(text)).toEqual([
      "activation traffic per token         13.4 MiB → 9.29 MiB   saved 4.13 MiB/token (132 KiB per layer) no longer written and read back",
      "intermediate tensors per token            516 → 260        6.21 MiB → 4.52 MiB written",
      "activation arena                     2.02 GiB (liveness plan) vs naive sum 36.1 GiB (17.9× smaller; unfused naive 49.6 GiB)",
    ]);
  });

  it("--disable-pass and --dump-ir-after: the report marks the pass disabled, the IR is printed", async () => {
    const logs: string[] = [];
    const { report } = await build(LLAMA_MODEL, "llama-2-7b.json", {
      disablePasses: ["attention-fusion"],
      dumpIrAfter: ["qkv-fusion"],
      log: (s) => logs.push(s),
    });
    const p = report.passes.find((x) => x.name === "attention-fusion")!;
    expect(p.status).toBe("disabled");
    expect(report.after.launchesPerLayer).toBe(11); // split, 2 × rope and attention instead of one
    const dump = logs.find((l) => l.startsWith("--- IR after qkv-fusion ---"))!;
    expect(dump).toMatch(/@model\.layers\.0\.self_attn\.qkv_proj\.weight/);
  });
});

describe("the pipeline with any one pass disabled still matches the goldens (FP32_GOLDEN_BOUND)", () => {
  // measured, over the passes: llama 2.86e-6 – 2.92e-6, gptj 6.71e-5 – 6.72e-5
  for (const which of FIXTURES)
    it(`tiny-${which} (≤ ${FP32_GOLDEN_BOUND[which]})`, async () => {
      const f = await fixture(which);
      const worst = { name: "", maxAbs: 0 };
      for (const name of PASSES.map((p) => p.name)) {
        const { ranks } = runPipeline(f.graph, f.build, { disable: [name], dumpAfter: [] });
        const r = checkGolden(ReferenceExecutor.fromGraphs(ranks, f.build, f.ckpt), f.golden);
        if (r.maxAbs >= worst.maxAbs) Object.assign(worst, { name, maxAbs: r.maxAbs });
        expect({ name, ok: r.maxAbs <= FP32_GOLDEN_BOUND[which] }).toEqual({ name, ok: true });
      }
      console.log(
        `tiny-${which}, one pass disabled: worst max |Δlogit| ${worst.maxAbs.toExponential(2)} (${worst.name})`,
      );
    });
});
