// The compiled engines match Hugging Face's own logits (fixtures' golden.safetensors) through the
// reference executor: prefill plus teacher-forced decode, fp32 math, max |Δlogit| within
// FP32_GOLDEN_BOUND (measured 2.92e-6 tiny-llama, 6.72e-5 tiny-gptj).
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { openCheckpoint } from "../src/checkpoint/checkpoint.ts";
import { type TensorToWrite, writeSafetensors } from "../src/checkpoint/safetensors.ts";
import { ReferenceExecutor } from "../src/executor/reference.ts";
import { checkGolden, readGolden } from "../src/golden.ts";
import { buildFixture, FP32_GOLDEN_BOUND, TINY_GPTJ, TINY_LLAMA, tmpDir } from "./fixtures.ts";

for (const [which, dir] of [
  ["llama", TINY_LLAMA],
  ["gptj", TINY_GPTJ],
] as const) {
  describe(`tiny-${which}`, () => {
    it(`matches the transformers goldens over prefill and teacher-forced decode (≤ ${FP32_GOLDEN_BOUND[which]})`, async () => {
      const engine = await buildFixture(which, { disablePasses: [] });
      const golden = readGolden(path.join(dir, "golden.safetensors"));
      const report = checkGolden(ReferenceExecutor.load(engine), golden);
      expect(report.perPrompt.length).toBe(3);
      for (const p of report.perPrompt) expect(p.positions).toBeGreaterThan(1);
      console.log(`tiny-${which}: max |Δlogit| ${report.maxAbs.toExponential(2)}`);
      expect(report.maxAbs).toBeLessThanOrEqual(FP32_GOLDEN_BOUND[which]); // 2.92e-6 llama, 6.72e-5 gptj
    });

    it("three prompts packed in one step give the same logits as one at a time (bit-identical)", async () => {
      const engine = await buildFixture(which);
      const golden = readGolden(path.join(dir, "golden.safetensors"));
      const ex = ReferenceExecutor.load(engine);
      const one = golden.prompts.map(
        (p, i) => ex.step([{ seqId: i, tokens: p.inputIds, logits: "all" }]).get(i)!,
      );
      golden.prompts.forEach((_, i) => ex.release(i));
      const packed = ex.step(
        golden.prompts.map((p, i) => ({ seqId: 10 + i, tokens: p.inputIds, logits: "all" })),
      );
      let max = 0;
      one.forEach((rows, i) =>
        rows.forEach((row, r) => {
          const other = packed.get(10 + i)![r];
          for (let k = 0; k < row.length; k++) max = Math.max(max, Math.abs(row[k] - other[k]));
        }),
      );
      console.log(`tiny-${which} packed vs one at a time: max |Δlogit| ${max.toExponential(2)}`);
      // Measured 0 on both fixtures: the reference executor computes each token's row on its own, so
      // packing must not change a bit.
      expect(max).toBe(0);
    });
  });
}

describe("tiny-llama whose config.json names no dtype (older or hand-written configs)", () => {
  // transformers' dtype "auto" then takes the weights' dtype (bf16): RoPE inv_freq rounded to bf16, as in the
  // goldens. Assuming float16 rounded inv_freq to f16 (max |Δlogit| 2.6e-3 measured) and built an fp16 engine.
  const dir = tmpDir();
  for (const f of fs.readdirSync(TINY_LLAMA))
    if (f !== "config.json") fs.symlinkSync(path.join(TINY_LLAMA, f), path.join(dir, f));
  const cfg = JSON.parse(fs.readFileSync(path.join(TINY_LLAMA, "config.json"), "utf8"));
  delete cfg.dtype;
  fs.writeFileSync(path.join(dir, "config.json"), JSON.stringify(cfg));

  it(`takes the checkpoint's bf16, matching the goldens (≤ ${FP32_GOLDEN_BOUND.llama})`, async () => {
    const engine = await buildFixture("llama", { checkpoint: dir });
    const report = checkGolden(
      ReferenceExecutor.load(engine),
      readGolden(path.join(dir, "golden.safetensors")),
    );
    expect(report.maxAbs).toBeLessThanOrEqual(FP32_GOLDEN_BOUND.llama);
    const auto = await buildFixture("llama", { checkpoint: dir, dtype: "auto" });
    expect(JSON.parse(fs.readFileSync(path.join(auto, "config.json"), "utf8")).build.dtype).toBe("bf16");
  });
});

describe("tiny-gptj under tie_word_embeddings: lm_head.weight is transformer.wte.weight", () => {
  // transformers ties GPTJForCausalLM's lm_head.weight to wte (its bias stays its own) and ignores a stored
  // lm_head.weight. So zeros stored there under the tie must give the logits of an untied checkpoint whose
  // lm_head.weight is a copy of wte. The stored lm_head.weight was read instead (logits all = bias).
  function variant(tie: boolean, lmHead: (wte: TensorToWrite) => TensorToWrite): string {
    const dir = tmpDir();
    const cfg = JSON.parse(fs.readFileSync(path.join(TINY_GPTJ, "config.json"), "utf8"));
    fs.writeFileSync(path.join(dir, "config.json"), JSON.stringify({ ...cfg, tie_word_embeddings: tie }));
    const ck = openCheckpoint(TINY_GPTJ);
    const t: Record<string, TensorToWrite> = {};
    for (const n of ck.names()) t[n] = { dtype: ck.info(n).dtype, shape: ck.info(n).shape, data: ck.read(n) };
    ck.close();
    t["lm_head.weight"] = lmHead(t["transformer.wte.weight"]);
    writeSafetensors(path.join(dir, "model.safetensors"), t);
    return dir;
  }
  it("zeros stored as lm_head.weight under the tie give the untied logits of lm_head.weight = wte", async () => {
    const tied = variant(true, (w) => ({ ...w, data: new Uint8Array(w.data.byteLength) }));
    const copied = variant(false, (w) => w);
    const ids = readGolden(path.join(TINY_GPTJ, "golden.safetensors")).prompts[0].inputIds;
    const logits = async (dir: string) =>
      ReferenceExecutor.load(await buildFixture("gptj", { checkpoint: dir }))
        .step([{ seqId: 0, tokens: ids, logits: "all" }])
        .get(0)!;
    const [a, b] = [await logits(tied), await logits(copied)];
    expect(a.length).toBe(ids.length);
    a.forEach((row, i) => expect(Array.from(row)).toEqual(Array.from(b[i])));
  });
});
