// Shapes that cannot be divided across ranks are one clear line naming the dimension, and no engine
// directory is left behind; a tp engine's rank files out of place are refused naming the file.
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { compileEngine } from "../../src/compile.ts";
import { EngineError } from "../../src/engine/reader.ts";
import { generate } from "../../src/executor/generate.ts";
import { ReferenceExecutor } from "../../src/executor/reference.ts";
import { buildFixture, LLAMA_MODEL, tmpDir } from "../fixtures.ts";
import { thrown } from "../thrown.ts";

const base = {
  architectures: ["LlamaForCausalLM"],
  vocab_size: 512,
  hidden_size: 192,
  intermediate_size: 352,
  num_hidden_layers: 1,
  num_attention_heads: 6,
  num_key_value_heads: 2,
  head_dim: 32,
  rms_norm_eps: 1e-5,
  max_position_embeddings: 64,
};

async function buildError(cfg: Record<string, unknown>, tp: number): Promise<string> {
  const dir = tmpDir();
  const config = path.join(dir, "config.json");
  fs.writeFileSync(config, JSON.stringify({ ...base, ...cfg }));
  const out = path.join(dir, "engine");
  const msg = await compileEngine({ modelFile: LLAMA_MODEL, config, sm: 90, tp, out }).then(
    () => "built",
    (e: Error) => e.message,
  );
  expect(fs.readdirSync(dir)).toEqual(["config.json"]); // no engine, no temporary directory
  return msg;
}

describe("tensor-parallel errors", () => {
  it.each([
    [{}, 4, "--tp 4: num_attention_heads 6 is not divisible by 4"],
    [
      { num_attention_heads: 4, hidden_size: 128, vocab_size: 501 },
      2,
      "--tp 2: vocab_size 501 is not divisible by 2",
    ],
    [
      { num_key_value_heads: 3 },
      2,
      "--tp 2: num_key_value_heads 3 neither divides nor is divisible by 2 (KV heads can be split or replicated, not both)",
    ],
    [
      { num_attention_heads: 4, hidden_size: 128, intermediate_size: 350 },
      4,
      "--tp 4: out features 350 of model.layers.0.mlp.gate_proj.weight is not divisible by 4",
    ],
  ])("%o at tp %i", async (cfg, tp, want) => {
    expect(await buildError(cfg, tp)).toBe(want);
  });
});

describe("tensor-parallel engine files", () => {
  it("rank files swapped: refused naming the file, --no-verify too (it ran with misplaced weights)", async () => {
    const engine = await buildFixture("llama", { tp: 2 });
    const tokens = (verify: boolean) =>
      generate(ReferenceExecutor.load(engine, { verify }), [[1, 450, 96]], { maxNewTokens: 4 })[0];
    expect(tokens(false)).toHaveLength(4);
    const [r0, r1] = ["rank0.engine", "rank1.engine"].map((f) => path.join(engine, f));
    fs.renameSync(r0, `${r0}.tmp`);
    fs.renameSync(r1, r0);
    fs.renameSync(`${r0}.tmp`, r1);
    const why = `${r0}: the header says rank 1 of tp 2, config.json lists it as rank 0 of tp 2 (rank files swapped or from another engine)`;
    for (const verify of [true, false]) expect(thrown(() => tokens(verify), EngineError).message).toBe(why);
  });
});
