// A model file written outside the repository — in a temporary folder with no package.json, importing
// the DSL as "tsllm" — for an architecture the repository does not know ("ToyGemmaForCausalLM", with
// its own config schema), compiled by the tsllm-compile CLI and checked against an fp64 forward pass
// written independently here from the same random weights (a safetensors checkpoint). The model uses
// a scaled embedding, RMSNorm with a weight offset (1 + w), a tanh-GELU gated MLP and soft-capped
// logits. The same file as .mjs compiles too; syntax and runtime errors name the file and line.
import { execFile } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { promisify } from "node:util";
import * as ort from "onnxruntime-node";
import { afterAll, describe, expect, it } from "vitest";
import { ReferenceExecutor } from "../src/executor/reference.ts";
import { REPO } from "./fixtures.ts";
import { OrtRanks } from "./onnx/ort-ranks.ts";
import { CFG, D, MODEL, referenceLogits, writeToyModel } from "./toy-gemma.ts";

const run = promisify(execFile);
const COMPILE = path.join(REPO, "bin/tsllm-compile.mjs");
const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tsllm-model-"));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

async function compile(modelFile: string, out: string, ...extra: string[]) {
  return run(
    process.execPath,
    [
      COMPILE,
      modelFile,
      ...extra,
      "--checkpoint",
      path.join(dir, "ckpt"),
      "--dtype",
      "fp32",
      "--sm",
      "90",
      "--max-seq-len",
      "64",
      "--max-num-tokens",
      "64",
      "--max-batch-size",
      "2",
      "-o",
      out,
    ],
    { cwd: dir },
  );
}

describe("a model file from outside the repository", () => {
  writeToyModel(dir);

  for (const file of ["toy.ts", "toy.mjs"])
    it(`${file} (no package.json nearby, imports "tsllm") matches an independent fp64 forward`, async () => {
      expect(fs.existsSync(path.join(dir, "package.json"))).toBe(false);
      const out = path.join(dir, `engine-${file}`);
      await compile(file, out);
      const tokens = [3, 17, 42, 5, 9, 30, 11];
      const ex = ReferenceExecutor.load(out);
      // Prefill 5 tokens, then 2 decode steps through the KV cache.
      const got = [
        ...ex.step([{ seqId: 1, tokens: tokens.slice(0, 5), logits: "all" }]).get(1)!,
        ...ex.step([{ seqId: 1, tokens: [tokens[5]], logits: "last" }]).get(1)!,
        ...ex.step([{ seqId: 1, tokens: [tokens[6]], logits: "last" }]).get(1)!,
      ];
      const want = referenceLogits(tokens);
      let maxAbs = 0;
      want.forEach((row, t) => row.forEach((v, i) => (maxAbs = Math.max(maxAbs, Math.abs(got[t][i] - v)))));
      // fp32 engine vs fp64 reference, logits soft-capped to ±3: measured 2.5e-7 (without the norm
      // offset it is 2.7, so the bound separates right from wrong by far).
      expect(maxAbs).toBeLessThanOrEqual(2e-6);
    });

  it("its --emit onnx export runs in ONNX Runtime with the same logits", async () => {
    const out = path.join(dir, "onnx");
    await compile("toy.ts", out, "--emit", "onnx");
    const ranks = await OrtRanks.load(out);
    const tokens = [3, 17, 42, 5, 9, 30, 11];
    const i64 = (xs: number[]) => new ort.Tensor("int64", BigInt64Array.from(xs.map(BigInt)), [1, xs.length]);
    const feeds: Record<string, ort.Tensor> = {
      input_ids: i64(tokens),
      position_ids: i64(tokens.map((_, i) => i)),
    };
    for (let l = 0; l < CFG.depth; l++)
      for (const kv of ["key", "value"])
        feeds[`past_key_values.${l}.${kv}`] = new ort.Tensor("float32", new Float32Array(0), [
          1,
          CFG.kv_heads,
          0,
          D,
        ]);
    const logits = (await ranks.run([feeds]))[0].logits.data as Float32Array;
    let maxAbs = 0;
    referenceLogits(tokens).forEach((row, t) =>
      row.forEach((v, i) => (maxAbs = Math.max(maxAbs, Math.abs(logits[t * CFG.vocab + i] - v)))),
    );
    // Lowerings of scale, softcap, the 1+w norms and the GeGLU gate: measured 5.7e-7.
    expect(maxAbs).toBeLessThanOrEqual(2e-6);
  });

  it("a syntax error names the file, line and column", async () => {
    fs.writeFileSync(path.join(dir, "broken.ts"), MODEL.replace("causalLM(m, {", "causalLM(m, {{"));
    const err = await compile("broken.ts", path.join(dir, "e1")).catch((e) => e);
    expect(err.code).not.toBe(0);
    expect(err.stderr.trim()).toMatch(
      /^error: broken\.ts: cannot load model file: broken\.ts:\d+:\d+: Expected identifier but found "\{"$/,
    );
  });

  it("an error in forward() names the model file's line", async () => {
    fs.writeFileSync(
      path.join(dir, "wrong.mjs"),
      MODEL.replace('m.Linear("lm_head", cfg.hiddenSize,', 'm.Linear("lm_head", cfg.hiddenSize + 1,'),
    );
    const err = await compile("wrong.mjs", path.join(dir, "e2")).catch((e) => e);
    expect(err.stderr.trim()).toMatch(
      /^error: wrong\.mjs: forward\(\): linear: input features is 32, expected 33 \(at wrong\.mjs:\d+:\d+\)$/,
    );
    expect(fs.existsSync(path.join(dir, "e2"))).toBe(false);
  });
});
