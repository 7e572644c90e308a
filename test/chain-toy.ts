// ChainToyForCausalLM: a model file (imports "tsllm", as a user's would) whose elementwise ops sit next to
// GEMMs and norms, the places the fusion passes fold them in (ew-chain.ts): Gemma 2's final logit
// soft-capping after lm_head (here followed by a scale: a chain of two), Granite-style scaled branch outputs
// before the residual add (o_proj · 0.7, then the residual), a chain of two after down_proj, a scale after
// the input norm, a sigmoid before the post-attention norm and a softcap before the final norm. The scaled
// embedding has two readers (norm and residual stream) and stays its own kernel. For
// test/ew-chain-fusion.test.ts (CPU, ONNX) and test-gpu/elementwise-ops.test.ts (CUDA).
import * as fs from "node:fs";
import * as path from "node:path";

/**
 * A toy model file for tests of the DSL's elementwise ops: its own architecture name and config schema (vocab,
 * width, ffn, depth, heads, kv_heads, context), imports from "tsllm"; `forward` is the text of its forward(m, cfg)
 * body. Plain JavaScript that is also valid TypeScript.
 */
export function toyModelFile(architecture: string, forward: string): string {
  return `import { causalLM, defineModel, gatedMlp, parseConfigJson, preNormDecoderLayer, selfAttention, stack, z } from "tsllm";

const Json = z.looseObject({ architectures: z.array(z.string()), vocab: z.number(), width: z.number(), ffn: z.number(),
  depth: z.number(), heads: z.number(), kv_heads: z.number(), context: z.number() });

export default defineModel({
  architectures: ["${architecture}"],
  parseConfig(json, source) {
    const r = parseConfigJson(Json, json, source);
    return { vocabSize: r.vocab, hiddenSize: r.width, intermediateSize: r.ffn, numLayers: r.depth, numHeads: r.heads,
      numKvHeads: r.kv_heads, headDim: r.width / r.heads, eps: 1e-6, maxPositionEmbeddings: r.context };
  },
  defaultConfig: {},
  forward(m, cfg) {
${forward}
  },
});
`;
}

/** Its config.json (64 vocab, width 64, ffn 128, 2 layers, 4 heads, 2 KV heads). */
export const toyConfig = (architecture: string) => ({
  architectures: [architecture],
  vocab: 64,
  width: 64,
  ffn: 128,
  depth: 2,
  heads: 4,
  kv_heads: 2,
  context: 64,
});

export const MODEL = toyModelFile(
  "ChainToyForCausalLM",
  `    const norm = (name) => m.RMSNorm(name, cfg.hiddenSize, cfg.eps, { weightOffset: 1 });
    const embed = m.Embedding("embed", cfg.vocabSize, cfg.hiddenSize);
    const finalNorm = norm("final_norm");
    causalLM(m, {
      embed: (ids) => embed(ids).scale(Math.sqrt(cfg.hiddenSize)),
      layers: stack(cfg.numLayers, (i) => {
        const inputNorm = norm(\`layers.\${i}.norm1\`);
        const attn = selfAttention(m, \`layers.\${i}.attn\`, { ...cfg, rope: { theta: 10000, style: "neox" } });
        const postNorm = norm(\`layers.\${i}.norm2\`);
        const mlp = gatedMlp(m, \`layers.\${i}.mlp\`, { ...cfg, activation: "silu" });
        return preNormDecoderLayer({
          inputNorm: (x) => inputNorm(x).scale(1.5),
          attention: (x) => attn(x).scale(0.7),
          postAttentionNorm: (x) => postNorm(x.sigmoid()),
          mlp: (x) => mlp(x).scale(0.5).softcap(4),
        });
      }),
      norm: (x) => finalNorm(x.softcap(8)),
      lmHead: (h) => m.Linear("lm_head", cfg.hiddenSize, cfg.vocabSize)(h).softcap(3).scale(2),
    });`,
);

export const CFG = toyConfig("ChainToyForCausalLM");

/** Writes chain.ts and config.json into dir; returns their paths. */
export function writeChainToy(dir: string): { modelFile: string; config: string } {
  const modelFile = path.join(dir, "chain.ts");
  const config = path.join(dir, "config.json");
  fs.writeFileSync(modelFile, MODEL);
  fs.writeFileSync(config, JSON.stringify(CFG));
  return { modelFile, config };
}

/** The chain fusions the model offers, per pattern of the fusion report (2 layers). */
export const EXPECTED_MATCHES = {
  // o_proj · 0.7; down_proj · 0.5 → softcap 4; lm_head softcap 3 → scale 2: one match per op.
  "elementwise-epilogue": 2 * (1 + 2) + 2,
  // norm1 → · 1.5 in each layer.
  "norm-post": 2,
  // sigmoid → norm2 in each layer, softcap 8 → final norm.
  "norm-pre": 2 + 1,
};
