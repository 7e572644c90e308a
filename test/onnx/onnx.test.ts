// ONNX exports (--emit onnx) run in ONNX Runtime and match the transformers goldens over prefill and
// teacher-forced decode, feeding each step's present.N.key/value back as past_key_values.N.*.
import * as fs from "node:fs";
import * as path from "node:path";
import * as ort from "onnxruntime-node";
import { describe, expect, it } from "vitest";
import { compileEngine } from "../../src/compile.ts";
import { readGolden } from "../../src/golden.ts";
import { onnx } from "../../src/onnx/builder.ts";
import {
  buildFixture,
  FP32_GOLDEN_BOUND,
  LLAMA_MODEL,
  MIXTRAL_MODEL,
  TINY_GPTJ,
  TINY_LLAMA,
  TINY_MIXTRAL,
  tmpDir,
} from "../fixtures.ts";
import { OrtRanks } from "./ort-ranks.ts";

const i64 = (xs: number[]) => new ort.Tensor("int64", BigInt64Array.from(xs.map(BigInt)), [1, xs.length]);

/** Max |Δlogit| and top-1 agreement of an ONNX directory against a golden file. */
async function checkOnnxGolden(dir: string, goldenFile: string) {
  const ranks = await OrtRanks.load(dir);
  const { num_layers: L, kv_heads_per_rank: H, head_dim: D } = ranks.config;
  const golden = readGolden(goldenFile);
  let maxAbs = 0;
  let agree = 0;
  let positions = 0;
  const argmax = (a: Float32Array) => a.reduce((b, v, i) => (v > a[b] ? i : b), 0);
  for (const p of golden.prompts) {
    let past = Array.from({ length: ranks.tp }, () => {
      const f: Record<string, ort.Tensor> = {};
      for (let l = 0; l < L; l++)
        for (const kv of ["key", "value"])
          f[`past_key_values.${l}.${kv}`] = new ort.Tensor("float32", new Float32Array(0), [1, H, 0, D]);
      return f;
    });
    const step = async (start: number, end: number) => {
      const ids = p.inputIds.slice(start, end);
      const pos = ids.map((_, i) => start + i);
      const outs = await ranks.run(
        past.map((pf) => ({ ...pf, input_ids: i64(ids), position_ids: i64(pos) })),
      );
      past = outs.map((o) => {
        const f: Record<string, ort.Tensor> = {};
        for (let l = 0; l < L; l++)
          for (const kv of ["key", "value"]) f[`past_key_values.${l}.${kv}`] = o[`present.${l}.${kv}`];
        return f;
      });
      const logits = outs[0].logits.data as Float32Array;
      for (let t = 0; t < ids.length; t++) {
        const row = logits.subarray(t * p.vocab, (t + 1) * p.vocab);
        const want = p.logits.subarray((start + t) * p.vocab, (start + t + 1) * p.vocab);
        for (let v = 0; v < p.vocab; v++) maxAbs = Math.max(maxAbs, Math.abs(row[v] - want[v]));
        agree += argmax(row) === argmax(want) ? 1 : 0;
        positions++;
      }
    };
    await step(0, p.promptLen);
    for (let t = p.promptLen; t < p.inputIds.length; t++) await step(t, t + 1);
  }
  return { maxAbs, agree, positions };
}

describe("ONNX export", () => {
  for (const [which, dir, tp] of [
    ["llama", TINY_LLAMA, 1],
    ["gptj", TINY_GPTJ, 1],
    ["llama", TINY_LLAMA, 2],
    ["gptj", TINY_GPTJ, 2],
  ] as const)
    it(`tiny-${which} tp ${tp}: ONNX Runtime matches the goldens (≤ ${FP32_GOLDEN_BOUND[which]}) through present → past`, async () => {
      const out = await buildFixture(which, { emit: "onnx", tp });
      const files = fs.readdirSync(out).sort();
      expect(files).toEqual(
        expect.arrayContaining([
          "onnx.json",
          ...Array.from({ length: tp }, (_, r) => [`rank${r}.onnx`, `rank${r}.onnx.data`]).flat(),
        ]),
      );
      const r = await checkOnnxGolden(out, path.join(dir, "golden.safetensors"));
      console.log(
        `ONNX tiny-${which} tp ${tp}: max |Δlogit| ${r.maxAbs.toExponential(2)}, top-1 ${r.agree}/${r.positions}`,
      );
      expect(r.positions).toBeGreaterThan(50);
      // measured: llama tp 1 2.32e-6, tp 2 2.15e-6; gptj tp 1 6.68e-5, tp 2 6.68e-5
      expect(r.maxAbs).toBeLessThanOrEqual(FP32_GOLDEN_BOUND[which]);
      expect(r.agree).toBe(r.positions);
    });

  for (const [tp, ep] of [
    [1, 1],
    [2, 1],
    [2, 2],
  ])
    it(`tiny-mixtral tp ${tp} moe-ep-size ${ep}: the moe op lowered densely (all experts, masked by the routing weights) matches the goldens (≤ 1e-5)`, async () => {
      const dir = TINY_MIXTRAL;
      const out = path.join(tmpDir(), "onnx");
      await compileEngine({
        modelFile: MIXTRAL_MODEL,
        checkpoint: dir,
        sm: 90,
        dtype: "fp32",
        maxNumTokens: 256,
        maxSeqLen: 256,
        maxBatchSize: 8,
        emit: "onnx",
        tp,
        moeEpSize: ep,
        out,
      });
      // Was "": mixtral.ts's config carries no architecture of its own (compile records the built one).
      expect(JSON.parse(fs.readFileSync(path.join(out, "onnx.json"), "utf8")).model.architecture).toBe(
        "MixtralForCausalLM",
      );
      const r = await checkOnnxGolden(out, path.join(dir, "golden.safetensors"));
      console.log(
        `ONNX tiny-mixtral tp ${tp} moe-ep-size ${ep}: max |Δlogit| ${r.maxAbs.toExponential(2)}, top-1 ${r.agree}/${r.positions}`,
      );
      expect(r.positions).toBeGreaterThan(50);
      // measured: 1.91e-6 at tp 1 and tp 2, 1.79e-6 at tp 2 moe-ep-size 2
      expect(r.maxAbs).toBeLessThanOrEqual(1e-5);
      expect(r.agree).toBe(r.positions);
    });

  it("standard opset-17 ops only (collectives only at tp > 1), weights as external data", async () => {
    for (const tp of [1, 2]) {
      const out = await buildFixture("llama", { emit: "onnx", tp });
      const m = onnx.ModelProto.decode(fs.readFileSync(path.join(out, "rank0.onnx")));
      expect(Number(m.opsetImport?.find((o) => !o.domain)?.version)).toBe(17);
      const domains = new Set(m.graph!.node!.map((n) => n.domain || ""));
      expect([...domains].sort()).toEqual(tp === 1 ? [""] : ["", "com.microsoft"]);
      const weights = m.graph!.initializer!.filter((t) => t.name!.endsWith(".weight"));
      expect(weights.length).toBeGreaterThan(10);
      for (const t of weights) {
        expect(t.dataLocation).toBe(onnx.TensorProto.DataLocation.EXTERNAL);
        expect(t.rawData?.length ?? 0).toBe(0);
      }
      // The model file itself is small; the weights are in rank0.onnx.data.
      expect(fs.statSync(path.join(out, "rank0.onnx")).size).toBeLessThan(100_000);
      expect(fs.statSync(path.join(out, "rank0.onnx.data")).size).toBeGreaterThan(900_000 / tp);
    }
  });

  it("a quantised build cannot be exported yet: one clear line, no directory left", async () => {
    const dir = tmpDir();
    const err = await compileEngine({
      modelFile: LLAMA_MODEL,
      checkpoint: TINY_LLAMA,
      sm: 90,
      quant: "int8-wo",
      emit: "onnx",
      out: path.join(dir, "onnx"),
    }).then(
      () => "built",
      (e: Error) => e.message,
    );
    expect(err).toBe(
      "--emit onnx: quantised builds (--quant int8-wo) are not exported yet; export with --quant none",
    );
    expect(fs.readdirSync(dir)).toEqual([]);
  });
});
