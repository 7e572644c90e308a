// ToyGemmaForCausalLM: an architecture the repository does not know, as a model file's text (plain
// JavaScript that is also valid TypeScript), its config, deterministic random weights, and an fp64
// forward pass written independently from the architecture's definition (for test/model-files.test.ts;
// importable by GPU tests that want the same model and oracle).
import * as fs from "node:fs";
import * as path from "node:path";
import { writeSafetensors } from "../src/checkpoint/safetensors.ts";

// Plain JavaScript that is also valid TypeScript, so one text serves as toy.ts and toy.mjs.
export const MODEL = `import { causalLM, defineModel, gatedMlp, parseConfigJson, preNormDecoderLayer, selfAttention, stack, z } from "tsllm";

const ToyJson = z.looseObject({
  architectures: z.array(z.string()),
  vocab: z.number().int().positive(),
  width: z.number().int().positive(),
  ffn: z.number().int().positive(),
  depth: z.number().int().positive(),
  heads: z.number().int().positive(),
  kv_heads: z.number().int().positive(),
  eps: z.number().positive(),
  logit_cap: z.number().positive(),
  context: z.number().int().positive(),
});

export default defineModel({
  architectures: ["ToyGemmaForCausalLM"],
  parseConfig(json, source) {
    const raw = parseConfigJson(ToyJson, json, source);
    return {
      vocabSize: raw.vocab, hiddenSize: raw.width, intermediateSize: raw.ffn, numLayers: raw.depth,
      numHeads: raw.heads, numKvHeads: raw.kv_heads, headDim: raw.width / raw.heads, eps: raw.eps,
      logitCap: raw.logit_cap, maxPositionEmbeddings: raw.context,
    };
  },
  defaultConfig: {},
  forward(m, cfg) {
    const norm = (name) => m.RMSNorm(name, cfg.hiddenSize, cfg.eps, { weightOffset: 1 });
    const embed = m.Embedding("embed", cfg.vocabSize, cfg.hiddenSize);
    causalLM(m, {
      embed: (ids) => embed(ids).scale(Math.sqrt(cfg.hiddenSize)),
      layers: stack(cfg.numLayers, (i) =>
        preNormDecoderLayer({
          inputNorm: norm(\`layers.\${i}.norm1\`),
          attention: selfAttention(m, \`layers.\${i}.attn\`, { ...cfg, rope: { theta: 10000, style: "neox" } }),
          postAttentionNorm: norm(\`layers.\${i}.norm2\`),
          mlp: gatedMlp(m, \`layers.\${i}.mlp\`, { ...cfg, activation: "gelu_pytorch_tanh" }),
        }),
      ),
      norm: norm("final_norm"),
      lmHead: (h) => m.Linear("lm_head", cfg.hiddenSize, cfg.vocabSize, { weightName: "embed.weight" })(h).softcap(cfg.logitCap),
    });
  },
});
`;

export const CFG = {
  architectures: ["ToyGemmaForCausalLM"],
  vocab: 48,
  width: 32,
  ffn: 64,
  depth: 2,
  heads: 4,
  kv_heads: 2,
  eps: 1e-6,
  logit_cap: 3,
  context: 64,
};
export const D = CFG.width / CFG.heads;

// Deterministic random weights (fp32), written as the checkpoint the engine reads.
let seed = 12345;
const rand = () => {
  seed = (seed * 1103515245 + 12345) % 2 ** 31;
  return seed / 2 ** 31 - 0.5;
};
const W: Record<string, { shape: number[]; data: Float32Array }> = {};
const param = (name: string, shape: number[], scale: number) => {
  const data = Float32Array.from({ length: shape.reduce((a, b) => a * b) }, () => rand() * scale);
  W[name] = { shape, data };
};
param("embed.weight", [CFG.vocab, CFG.width], 0.5);
for (let i = 0; i < CFG.depth; i++) {
  const p = `layers.${i}`;
  param(`${p}.norm1.weight`, [CFG.width], 0.4);
  param(`${p}.attn.q_proj.weight`, [CFG.heads * D, CFG.width], 0.4);
  param(`${p}.attn.k_proj.weight`, [CFG.kv_heads * D, CFG.width], 0.4);
  param(`${p}.attn.v_proj.weight`, [CFG.kv_heads * D, CFG.width], 0.4);
  param(`${p}.attn.o_proj.weight`, [CFG.width, CFG.heads * D], 0.4);
  param(`${p}.norm2.weight`, [CFG.width], 0.4);
  param(`${p}.mlp.gate_proj.weight`, [CFG.ffn, CFG.width], 0.4);
  param(`${p}.mlp.up_proj.weight`, [CFG.ffn, CFG.width], 0.4);
  param(`${p}.mlp.down_proj.weight`, [CFG.width, CFG.ffn], 0.3);
}
param("final_norm.weight", [CFG.width], 0.4);

// ---- The independent reference: fp64, one sequence, written from the architecture's definition. ----
type Mat = Float64Array[];
const w = (name: string) => W[name].data;
const matvec = (name: string, x: Float64Array) => {
  const [n, k] = W[name].shape;
  const a = w(name);
  return Float64Array.from({ length: n }, (_, j) => {
    let s = 0;
    for (let i = 0; i < k; i++) s += a[j * k + i] * x[i];
    return s;
  });
};
const rmsNormOffset = (x: Float64Array, name: string) => {
  const ms = x.reduce((s, v) => s + v * v, 0) / x.length;
  const inv = 1 / Math.sqrt(ms + CFG.eps);
  return x.map((v, i) => v * inv * (1 + w(name)[i]));
};
const rope = (x: Float64Array, heads: number, pos: number) => {
  const out = Float64Array.from(x);
  for (let h = 0; h < heads; h++)
    for (let i = 0; i < D / 2; i++) {
      const a = pos / 10000 ** ((2 * i) / D);
      const x1 = x[h * D + i];
      const x2 = x[h * D + i + D / 2];
      out[h * D + i] = x1 * Math.cos(a) - x2 * Math.sin(a);
      out[h * D + i + D / 2] = x2 * Math.cos(a) + x1 * Math.sin(a);
    }
  return out;
};
const geluTanh = (x: number) => 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x ** 3)));

export function referenceLogits(tokens: number[]): Mat {
  let hs: Mat = tokens.map((t) =>
    Float64Array.from(
      w("embed.weight").subarray(t * CFG.width, (t + 1) * CFG.width),
      (v) => v * Math.sqrt(CFG.width),
    ),
  );
  for (let l = 0; l < CFG.depth; l++) {
    const p = `layers.${l}`;
    const xs = hs.map((h) => rmsNormOffset(h, `${p}.norm1.weight`));
    const q = xs.map((x, t) => rope(matvec(`${p}.attn.q_proj.weight`, x), CFG.heads, t));
    const k = xs.map((x, t) => rope(matvec(`${p}.attn.k_proj.weight`, x), CFG.kv_heads, t));
    const v = xs.map((x) => matvec(`${p}.attn.v_proj.weight`, x));
    const attn = q.map((qt, t) => {
      const out = new Float64Array(CFG.heads * D);
      for (let h = 0; h < CFG.heads; h++) {
        const kh = Math.floor(h / (CFG.heads / CFG.kv_heads));
        const scores = Array.from({ length: t + 1 }, (_, s) => {
          let dot = 0;
          for (let d = 0; d < D; d++) dot += qt[h * D + d] * k[s][kh * D + d];
          return dot / Math.sqrt(D);
        });
        const mx = Math.max(...scores);
        const e = scores.map((s) => Math.exp(s - mx));
        const z = e.reduce((a, b) => a + b);
        for (let s = 0; s <= t; s++)
          for (let d = 0; d < D; d++) out[h * D + d] += (e[s] / z) * v[s][kh * D + d];
      }
      return out;
    });
    hs = hs.map((h, t) => h.map((x, i) => x + matvec(`${p}.attn.o_proj.weight`, attn[t])[i]));
    hs = hs.map((h) => {
      const y = rmsNormOffset(h, `${p}.norm2.weight`);
      const g = matvec(`${p}.mlp.gate_proj.weight`, y);
      const u = matvec(`${p}.mlp.up_proj.weight`, y);
      const down = matvec(
        `${p}.mlp.down_proj.weight`,
        g.map((gv, i) => geluTanh(gv) * u[i]),
      );
      return h.map((x, i) => x + down[i]);
    });
  }
  return hs.map((h) =>
    matvec("embed.weight", rmsNormOffset(h, "final_norm.weight")).map(
      (z) => CFG.logit_cap * Math.tanh(z / CFG.logit_cap),
    ),
  );
}

/** Writes toy.ts, toy.mjs and the checkpoint (ckpt/config.json + model.safetensors) into dir. */
export function writeToyModel(dir: string): void {
  fs.writeFileSync(path.join(dir, "toy.ts"), MODEL);
  fs.writeFileSync(path.join(dir, "toy.mjs"), MODEL);
  fs.mkdirSync(path.join(dir, "ckpt"), { recursive: true });
  fs.writeFileSync(path.join(dir, "ckpt/config.json"), JSON.stringify(CFG));
  writeSafetensors(
    path.join(dir, "ckpt/model.safetensors"),
    Object.fromEntries(
      Object.entries(W).map(([k, t]) => [
        k,
        { dtype: "F32", shape: t.shape, data: new Uint8Array(t.data.buffer) },
      ]),
    ),
  );
}
