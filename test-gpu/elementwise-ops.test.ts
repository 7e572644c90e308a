// The DSL's elementwise ops and norm variants on the GPU (native/src/kernels/elementwise.cu, norms.cu): a model
// file written outside the repository (imports "tsllm") that uses sub, div, tanh, sigmoid, exp, scale, softcap
// and RMSNorm with a weight offset, compiled with random fp16 weights; the CUDA runtime's logits against the CPU
// reference executor's on the same engine, and the kernel counters proving each of those nodes ran its own
// kernel on the GPU. Then the same ops folded into GEMMs and norms (test/chain-toy.ts: the gemv's in-register
// chain at decode, cuBLASLt alpha + linear_epilogue at prefill, norms with pre / post chains), fused and unfused.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { compileEngine } from "../src/compile.ts";
import { ReferenceExecutor } from "../src/executor/reference.ts";
import { CudaEngine } from "../src/native/binding.ts";
import { CudaExecutor } from "../src/native/executor.ts";
import { toyConfig, toyModelFile, writeChainToy } from "../test/chain-toy.ts";
import { maxAbsDiff } from "./helpers.ts";

const MODEL = toyModelFile(
  "ElementwiseToyForCausalLM",
  `    const norm = (name) => m.RMSNorm(name, cfg.hiddenSize, cfg.eps, { weightOffset: 1 });
    const embed = m.Embedding("embed", cfg.vocabSize, cfg.hiddenSize);
    causalLM(m, {
      // e + (tanh(e) - sigmoid(e)) / exp(e): every new elementwise op once, all finite.
      embed: (ids) => {
        const e = embed(ids).scale(Math.sqrt(cfg.hiddenSize));
        return e.add(e.tanh().sub(e.sigmoid()).div(e.exp()));
      },
      layers: stack(cfg.numLayers, (i) =>
        preNormDecoderLayer({
          inputNorm: norm(\`layers.\${i}.norm1\`),
          attention: selfAttention(m, \`layers.\${i}.attn\`, { ...cfg, rope: { theta: 10000, style: "neox" } }),
          postAttentionNorm: norm(\`layers.\${i}.norm2\`),
          mlp: gatedMlp(m, \`layers.\${i}.mlp\`, { ...cfg, activation: "gelu_pytorch_tanh" }),
        }),
      ),
      norm: norm("final_norm"),
      lmHead: (h) => m.Linear("lm_head", cfg.hiddenSize, cfg.vocabSize)(h).softcap(3),
    });`,
);

const CFG = toyConfig("ElementwiseToyForCausalLM");
const TOKENS = [3, 17, 42, 5, 9, 30, 11, 60];

// The engine at `out` on the GPU and in the reference executor: a 6-token prefill with logits for every row
// (M = 6: cuBLASLt, alpha and linear_epilogue), then two decode steps (M = 1: the gemv); the largest |Δlogit| and
// the reference's largest per-row logit spread (so a flat output cannot pass). The caller closes `cuda`.
function cudaVsReference(out: string) {
  const engine = CudaEngine.load(out, { cudaGraphs: true });
  const cuda = new CudaExecutor(engine);
  const ref = ReferenceExecutor.load(out);
  const rows = (ex: CudaExecutor | ReferenceExecutor) => [
    ...ex.step([{ seqId: 1, tokens: TOKENS.slice(0, 6), logits: "all" }]).get(1)!,
    ...ex.step([{ seqId: 1, tokens: [TOKENS[6]], logits: "last" }]).get(1)!,
    ...ex.step([{ seqId: 1, tokens: [TOKENS[7]], logits: "last" }]).get(1)!,
  ];
  const a = rows(cuda);
  const b = rows(ref);
  const max = Math.max(...a.map((r, i) => maxAbsDiff(r, b[i])));
  const spread = Math.max(...b.map((r) => Math.max(...r) - Math.min(...r)));
  return { engine, cuda, max, spread };
}

describe("elementwise ops and norm weight offset on the GPU", () => {
  for (const dtype of ["fp16", "bf16"] as const)
    it(`${dtype}: CUDA matches the reference executor (≤ 0.05) and every new op ran its kernel`, async () => {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tsllm-ew-"));
      fs.writeFileSync(path.join(dir, "toy.ts"), MODEL);
      fs.writeFileSync(path.join(dir, "config.json"), JSON.stringify(CFG));
      const out = path.join(dir, "engine");
      await compileEngine({
        modelFile: path.join(dir, "toy.ts"),
        config: path.join(dir, "config.json"),
        randomWeights: true,
        seed: 3,
        sm: 80,
        dtype,
        maxNumTokens: 64,
        maxSeqLen: 64,
        maxBatchSize: 2,
        out,
      });
      const { engine, cuda, max, spread } = cudaVsReference(out);
      console.log(`${dtype} elementwise toy: CUDA vs reference max |Δlogit| ${max} (logit spread ${spread})`);
      expect(spread).toBeGreaterThan(0.1); // the logits are not flat: the comparison can fail
      expect(max).toBeLessThanOrEqual(0.05);
      const stats = engine.nodeStats();
      // softcap follows lm_head: epilogue-fusion folds it into that linear (the chain test below runs it unfused).
      expect(stats.some((st) => st.op === "softcap")).toBe(false);
      for (const op of ["sub", "div", "tanh", "sigmoid", "exp", "scale", "rms_norm"]) {
        const nodes = stats.filter((s) => s.op === op || (op === "rms_norm" && s.op === "add_rms_norm"));
        expect({ op, ran: nodes.length > 0 && nodes.every((s) => s.own > 0) }).toEqual({ op, ran: true });
      }
      cuda.close();
    });
});

describe("elementwise chains folded into GEMM epilogues and norms on the GPU", () => {
  for (const dtype of ["fp16", "bf16"] as const)
    it(`${dtype}: fused and unfused engines each match the reference executor (≤ 0.05); the fused one has no standalone chain op`, async () => {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tsllm-chain-gpu-"));
      const files = writeChainToy(dir);
      const results: Record<string, number> = {};
      for (const [name, disablePasses] of [
        ["fused", []],
        ["unfused", ["epilogue-fusion", "norm-chain-fusion"]],
      ] as const) {
        const out = path.join(dir, name);
        await compileEngine({
          ...files,
          randomWeights: true,
          seed: 5,
          sm: 80,
          dtype,
          maxNumTokens: 64,
          maxSeqLen: 64,
          maxBatchSize: 2,
          disablePasses: [...disablePasses],
          out,
          log: () => {},
        });
        // Prefill (M = 6: cuBLASLt, alpha and linear_epilogue), then decode steps (M = 1: the gemv's chain).
        const { engine, cuda, max, spread } = cudaVsReference(out);
        console.log(
          `${dtype} chain toy ${name}: CUDA vs reference max |Δlogit| ${max} (logit spread ${spread})`,
        );
        expect(spread).toBeGreaterThan(0.5);
        expect(max).toBeLessThanOrEqual(0.05);
        const stats = engine.nodeStats();
        const standalone = stats.filter(
          (st) => ["scale", "softcap", "sigmoid"].includes(st.op) && st.own > 0,
        );
        // Unfused: 2 layers × (scale after norm1, sigmoid, o_proj scale, down scale + softcap) + final softcap,
        // lm_head softcap + scale, and the embedding's scale; fused: only the embedding's scale (two readers).
        expect([name, standalone.length]).toEqual([name, name === "fused" ? 1 : 2 * 5 + 1 + 2 + 1]);
        results[name] = max;
        cuda.close();
      }
    });
});
