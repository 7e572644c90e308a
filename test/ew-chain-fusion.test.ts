// Elementwise chains folded into GEMMs and norms (passes/epilogue-fusion.ts postChainPattern,
// passes/norm-chain-fusion.ts): a model file with such chains (test/chain-toy.ts) compiled with and without
// the fusions. The fused engine has fewer launches and less activation traffic in the fusion report, and its
// CPU reference result equals the unfused one; its ONNX export (chains lowered back to ONNX ops) matches too.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import * as ort from "onnxruntime-node";
import { afterAll, describe, expect, it } from "vitest";
import { compileEngine } from "../src/compile.ts";
import { ReferenceExecutor } from "../src/executor/reference.ts";
import type { FusionReport } from "../src/report/report.ts";
import { CFG, EXPECTED_MATCHES, writeChainToy } from "./chain-toy.ts";
import { OrtRanks } from "./onnx/ort-ranks.ts";

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tsllm-chain-"));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
const files = writeChainToy(dir);
const TOKENS = [3, 17, 42, 5, 9, 30, 11];
const UNFUSED = ["norm-chain-fusion"];

async function build(
  name: string,
  o: { disable?: string[]; dtype?: string; emit?: "onnx"; tp?: number } = {},
) {
  const out = path.join(dir, name);
  await compileEngine({
    modelFile: files.modelFile,
    config: files.config,
    randomWeights: true,
    seed: 5,
    sm: 90,
    dtype: o.dtype ?? "fp32",
    maxNumTokens: 64,
    maxSeqLen: 64,
    maxBatchSize: 2,
    disablePasses: o.disable,
    emit: o.emit,
    tp: o.tp,
    out,
    log: () => {},
  });
  return out;
}

/** Prefill 5 tokens, then 2 decode steps through the KV cache. */
function logits(engine: string): Float32Array[] {
  const ex = ReferenceExecutor.load(engine);
  return [
    ...ex.step([{ seqId: 1, tokens: TOKENS.slice(0, 5), logits: "all" }]).get(1)!,
    ...ex.step([{ seqId: 1, tokens: [TOKENS[5]], logits: "last" }]).get(1)!,
    ...ex.step([{ seqId: 1, tokens: [TOKENS[6]], logits: "last" }]).get(1)!,
  ];
}

const maxDiff = (a: Float32Array[], b: Float32Array[]) =>
  Math.max(...a.map((r, t) => Math.max(...r.map((v, i) => Math.abs(v - b[t][i])))));

const report = (engine: string) =>
  JSON.parse(fs.readFileSync(path.join(engine, "report.json"), "utf8")) as FusionReport;

/** The chain fusions undone: epilogue-fusion without its chain pattern is not a pipeline option, so the
 * unfused build disables norm-chain-fusion and keeps the lm_head / o_proj / down_proj chains apart by
 * disabling epilogue-fusion as well (its residual folds do the same arithmetic as the add ops). */
const UNFUSED_ALL = ["epilogue-fusion", ...UNFUSED];

describe("elementwise chains fused into GEMM epilogues and norms", () => {
  it("fp32: the fused engine's reference logits equal the unfused engine's; the report shows the fusions", async () => {
    const fused = await build("fused");
    const plain = await build("plain", { disable: UNFUSED_ALL });
    const a = logits(fused);
    const b = logits(plain);
    const d = maxDiff(a, b);
    const spread = Math.max(...b.map((r) => Math.max(...r) - Math.min(...r)));
    console.log(`chain toy fp32: fused vs unfused reference max |Δlogit| ${d} (logit spread ${spread})`);
    expect(spread).toBeGreaterThan(0.5); // logits softcapped to ±6, not flat
    // Same fp32 arithmetic step by step (ew-chain.ts applies one op at a time, rounding as unfused): 0 measured.
    expect(d).toBe(0);

    const r = report(fused);
    const pass = (name: string) => r.passes.find((p) => p.name === name)!;
    expect(pass("epilogue-fusion").patterns["elementwise-epilogue"]).toBe(
      EXPECTED_MATCHES["elementwise-epilogue"],
    );
    expect(pass("norm-chain-fusion").patterns).toEqual({
      "norm-post": EXPECTED_MATCHES["norm-post"],
      "norm-pre": EXPECTED_MATCHES["norm-pre"],
    });
    // Each folded op is a launch gone and its output's write + read gone.
    const u = report(plain);
    const folded = Object.values(EXPECTED_MATCHES).reduce((x, y) => x + y);
    console.log(
      `chain toy report: launches ${u.after.launches} unfused (epilogue-fusion, norm-chain-fusion off) → ${r.after.launches} fused; ` +
        `traffic ${u.after.trafficPerToken} → ${r.after.trafficPerToken} B/token`,
    );
    expect(r.after.launches).toBeLessThanOrEqual(u.after.launches - folded);
    const bytes = 2 * 4 * (CFG.width * (2 * 1 + 2 * 2 + 2) + 2 * CFG.vocab); // each folded op: fp32 [1, width] written + read
    expect(u.after.trafficPerToken - r.after.trafficPerToken).toBeGreaterThanOrEqual(bytes);
    // The drawn layer names the chains.
    const labels = r.drawing.after.nodes.map((n) => n.label);
    expect(labels).toContain("linear (scale 0.7, +residual)");
    expect(labels).toContain("linear (scale 0.5 → softcap 4, +residual)");
    expect(labels).toContain("rms_norm (norm → scale 1.5)");
    expect(labels).toContain("rms_norm (sigmoid → norm)");
  });

  it("--tp 2: the lm_head chain moves before the logits' all_gather; fp32 logits equal the unfused tp 2 engine's", async () => {
    const tp2 = await build("fused-tp2", { tp: 2 });
    const pass = report(tp2).passes.find((p) => p.name === "epilogue-fusion")!;
    // lm_head's softcap and scale; o_proj / down_proj are row-parallel there, their chains follow an all_reduce
    // (a sum: only a scale would commute with it) and stay standalone ops.
    expect(pass.patterns["elementwise-epilogue"]).toBe(2);
    // (Random weights are drawn per rank's slice, so the tp 2 engines are compared with each other.)
    const d = maxDiff(logits(tp2), logits(await build("plain-tp2", { tp: 2, disable: UNFUSED_ALL })));
    console.log(`chain toy fp32 tp 2 fused vs unfused: max |Δlogit| ${d}`);
    expect(d).toBe(0);
  });

  it("fp16: the fused engine rounds once where the unfused rounds per op, and stays within 5e-3", async () => {
    const d = maxDiff(
      logits(await build("fused16", { dtype: "fp16" })),
      logits(await build("plain16", { dtype: "fp16", disable: UNFUSED_ALL })),
    );
    console.log(`chain toy fp16: fused vs unfused reference max |Δlogit| ${d}`);
    expect(d).toBeGreaterThan(0); // fewer roundings: not the same numbers
    expect(d).toBeLessThanOrEqual(5e-3);
  });

  it("the fused engine's ONNX export (chains lowered back to ONNX ops) matches its reference logits", async () => {
    const out = await build("onnx", { emit: "onnx" });
    const ranks = await OrtRanks.load(out);
    const i64 = (xs: number[]) => new ort.Tensor("int64", BigInt64Array.from(xs.map(BigInt)), [1, xs.length]);
    const feeds: Record<string, ort.Tensor> = {
      input_ids: i64(TOKENS),
      position_ids: i64(TOKENS.map((_, i) => i)),
    };
    for (let l = 0; l < CFG.depth; l++)
      for (const kv of ["key", "value"])
        feeds[`past_key_values.${l}.${kv}`] = new ort.Tensor("float32", new Float32Array(0), [
          1,
          CFG.kv_heads,
          0,
          CFG.width / CFG.heads,
        ]);
    const got = (await ranks.run([feeds]))[0].logits.data as Float32Array;
    const ex = ReferenceExecutor.load(await build("fused-ref"));
    const want = ex.step([{ seqId: 1, tokens: TOKENS, logits: "all" }]).get(1)!;
    let d = 0;
    want.forEach((row, t) => row.forEach((v, i) => (d = Math.max(d, Math.abs(got[t * CFG.vocab + i] - v)))));
    console.log(`chain toy ONNX Runtime vs reference: max |Δlogit| ${d}`);
    expect(d).toBeLessThanOrEqual(2e-5);
  });
});
