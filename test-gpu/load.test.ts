// Loading with the content hash fused into the upload pass (native/src/runtime/upload.cc, file_pass.cc): a
// real-format engine of several hash chunks loads verified on several reader threads, read with O_DIRECT or
// through the page cache to the same weights, a byte flipped in the last MB of its rank file is caught with
// the file named (both ways of reading), --no-verify still loads it, and the verified upload gives the same
// logits as the unverified one and as the CPU reference executor.
import { execFileSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { compileEngine } from "../src/compile.ts";
import { HASH_CHUNK_BYTES } from "../src/engine/hash.ts";
import { openEngine } from "../src/engine/reader.ts";
import { ReferenceExecutor } from "../src/executor/reference.ts";
import { describeLoadPhases } from "../src/native/binding.ts";
import { openCudaExecutor } from "../src/native/executor.ts";
import { maxAbsDiff, REPO } from "./helpers.ts";

// Llama-shaped, small enough to build in seconds, large enough for 3+ hash chunks (embedding and lm_head
// alone are 2 x 32000 x 256 bf16 = 32.8 MB).
const CONFIG = {
  architectures: ["LlamaForCausalLM"],
  hidden_size: 256,
  intermediate_size: 688,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  num_hidden_layers: 2,
  vocab_size: 32000,
  max_position_embeddings: 512,
  rms_norm_eps: 1e-5,
  rope_theta: 10000,
  tie_word_embeddings: false,
  torch_dtype: "bfloat16",
};

async function build(): Promise<string> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tsllm-gpu-load-"));
  fs.writeFileSync(path.join(dir, "config.json"), JSON.stringify(CONFIG));
  const ckpt = path.join(dir, "ckpt");
  execFileSync(
    process.execPath,
    [path.join(REPO, "node_modules/tsx/dist/cli.mjs"), path.join(REPO, "scripts/make-random-checkpoint.ts"),
      path.join(REPO, "models/llama.ts"), path.join(dir, "config.json"), ckpt, "--dtype", "BF16"],
    { stdio: "pipe" },
  );
  const out = path.join(dir, "engine");
  await compileEngine({ modelFile: path.join(REPO, "models/llama.ts"), checkpoint: ckpt, sm: 80, maxNumTokens: 64, maxSeqLen: 64, maxBatchSize: 2, out });
  return out;
}

describe("fused verified load", () => {
  it("verifies a multi-chunk engine in the upload pass, catches a flip in the last MB naming the file", async () => {
    const dir = await build();
    const file = path.join(dir, "rank0.engine");
    const size = fs.statSync(file).size;
    expect(size).toBeGreaterThan(2 * HASH_CHUNK_BYTES);
    const seq = [{ seqId: 1, tokens: [1, 2, 3, 4], logits: "last" as const }];
    const verified = openCudaExecutor(dir);
    const a = verified.step(seq).get(1)![0];
    console.log("verified load", JSON.stringify(verified.engine.loadStats.seconds), "s for", size, "bytes");
    const phases = verified.engine.loadStats.phases!;
    console.log(describeLoadPhases(phases));
    expect(phases.directBytes + phases.cachedBytes).toBe(size);
    verified.close();
    const ref = ReferenceExecutor.load(dir).step(seq).get(1)![0];
    expect(maxAbsDiff(a, ref)).toBeLessThan(0.05); // bf16 engine vs fp32 math on the same weights
    // Every chunk through O_DIRECT (straight into the pinned buffers), then every chunk through the page cache:
    // both verified (the hash is taken of the very buffers that are uploaded), so the weights are the same;
    // the logits agree up to the GEMM algorithms each load's autotuning picks.
    for (const mode of ["1", "0"]) {
      process.env.TSLLM_LOAD_DIRECT = mode;
      try {
        const ex = openCudaExecutor(dir);
        const p = ex.engine.loadStats.phases!;
        console.log(`TSLLM_LOAD_DIRECT=${mode}: ${describeLoadPhases(p)}`);
        if (mode === "0") expect(p.directBytes).toBe(0);
        else if (p.direct) expect(p.directBytes).toBe(size);
        expect(maxAbsDiff(ex.step(seq).get(1)![0], a)).toBeLessThan(0.05);
        ex.close();
      } finally {
        delete process.env.TSLLM_LOAD_DIRECT;
      }
    }

    const b = fs.readFileSync(file);
    b[size - 123_457] ^= 0x10;
    fs.writeFileSync(file, b);
    expect(() => openEngine(dir)).not.toThrow(); // size and header still fine
    const named = new RegExp(`${file.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}: content hash .* does not match config\\.json`);
    expect(() => openCudaExecutor(dir)).toThrow(named);
    process.env.TSLLM_LOAD_DIRECT = "1"; // the flip read by O_DIRECT is caught too
    try {
      expect(() => openCudaExecutor(dir)).toThrow(named);
    } finally {
      delete process.env.TSLLM_LOAD_DIRECT;
    }
    const unverified = openCudaExecutor(dir, { verify: false });
    expect(unverified.step(seq).get(1)![0].length).toBe(32000);
    unverified.close();
  }, 300_000);
});
