// Quantised builds: legality errors (one line, no engine left), streaming (each source read once per
// weight + scales pair), and random-weight engines in the quantised layout.
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { quantizeWeights } from "../../passes/quantize-weights.ts";
import { openCheckpoint } from "../../src/checkpoint/checkpoint.ts";
import { compileEngine } from "../../src/compile.ts";
import { openEngine } from "../../src/engine/reader.ts";
import { ReferenceExecutor } from "../../src/executor/reference.ts";
import { materializeWeight } from "../../src/weights/materialize.ts";
import { LLAMA_MODEL, TINY_LLAMA, tinyLlamaBuild, tinyLlamaGraph, tmpDir } from "../fixtures.ts";

async function buildError(o: Record<string, unknown>): Promise<string> {
  const dir = tmpDir();
  const out = path.join(dir, "engine");
  const msg = await compileEngine({ modelFile: LLAMA_MODEL, checkpoint: TINY_LLAMA, sm: 90, out, ...o }).then(
    () => "built",
    (e: Error) => e.message,
  );
  expect(fs.readdirSync(dir)).toEqual([]);
  return msg;
}

describe("quantisation legality", () => {
  it.each([
    [
      { quant: "fp8", sm: 80 },
      "--quant fp8 needs --sm 89 or newer (FP8 tensor cores: Ada, Hopper); --sm 80 has none",
    ],
    [
      { kvCacheDtype: "fp8", sm: 86 },
      "--kv-cache-dtype fp8 needs --sm 89 or newer (FP8 conversions: Ada, Hopper); --sm 86 has none",
    ],
    [
      { quant: "int4-wo", groupSize: 48 },
      "--group-size 48: does not divide the input dim 128 of model.layers.0.self_attn.qkv_proj.weight",
    ],
    [
      { quant: "int4-wo", groupSize: 64, tp: 2 },
      "--group-size 64: does not divide the input dim 176 of model.layers.0.mlp.down_proj.weight (per rank at --tp 2)",
    ],
  ])("%o", async (o, want) => {
    expect(await buildError(o)).toBe(want);
  });

  it("fp8 at sm 89 builds", async () => {
    const out = path.join(tmpDir(), "e");
    await compileEngine({ modelFile: LLAMA_MODEL, checkpoint: TINY_LLAMA, sm: 89, quant: "fp8", out });
    expect(fs.existsSync(path.join(out, "rank0.engine"))).toBe(true);
  });
});

describe("quantisation while streaming", () => {
  it("reads a quantised weight's source once for its values and scales (adjacent ids)", async () => {
    const g = quantizeWeights(await tinyLlamaGraph(), tinyLlamaBuild({ quant: "int8-wo" }));
    const node = g.nodes.find((n) => n.op === "quant_linear")!;
    const [values, scales] = [node.inputs[1]!, node.inputs[2]!].map((id) => g.values.get(id)!);
    expect(scales.id).toBe(values.id + 1);
    const ckpt = openCheckpoint(TINY_LLAMA);
    const reads: string[] = [];
    const counting = new Proxy(ckpt, {
      get: (t, k) =>
        k === "read"
          ? (name: string) => {
              reads.push(name);
              return t.read(name);
            }
          : Reflect.get(t, k),
    });
    const q = materializeWeight(values, counting);
    const s = materializeWeight(scales, counting);
    ckpt.close();
    expect(reads).toEqual([values.recipe!.kind === "checkpoint" ? values.recipe!.parts[0].name : ""]);
    expect(q.length).toBe(128 * 128);
    expect(s.length).toBe(128 * 4);
  });
});

describe("random-weight quantised engines", () => {
  for (const quant of ["fp8", "int8-wo", "int4-wo"] as const)
    it(`${quant}: seeds in the quantised layout, finite logits`, async () => {
      const out = path.join(tmpDir(), "e");
      const group = quant === "int4-wo" ? { groupSize: 32 } : {};
      await compileEngine({ modelFile: LLAMA_MODEL, sm: 90, quant, ...group, dtype: "fp16", out });
      const h = openEngine(out).ranks[0].header;
      const byId = new Map(h.values.map((v) => [v.id, v]));
      const q = h.nodes.find((n) => n.op === "quant_linear")!;
      const w = h.weights.find((x) => x.value === q.inputs[1])!;
      const s = h.weights.find((x) => x.value === q.inputs[2])!;
      expect(w.nbytes).toBe(0);
      expect(w.random!.scale).toBe(quant === "int4-wo" ? 128 : quant === "fp8" ? 448 : 127);
      expect(s.random!.scale).toBe(0);
      expect(byId.get(q.inputs[2]!)!.dtype).toBe("f32");
      const ex = ReferenceExecutor.load(out);
      const logits = ex.step([{ seqId: 0, tokens: [1, 2, 3], logits: "last" }]).get(0)![0];
      expect(logits.every(Number.isFinite)).toBe(true);
      const std = Math.sqrt(logits.reduce((a, v) => a + v * v, 0) / logits.length);
      expect(std).toBeGreaterThan(0.01);
    });
});
