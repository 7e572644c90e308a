// Writes a real-format Hugging Face checkpoint (config.json, sharded safetensors + index) with random
// values, for build-speed tests of full-size models without a download. Tensor names and shapes come
// from the model file itself.
//   npx tsx scripts/make-random-checkpoint.ts models/llama.ts ../shared/configs/llama-2-7b.json /tmp/llama-2-7b-random [--dtype F16] [--shard-gb 5] [--jobs N]
// --jobs N writes the shards in N processes at once (generating the values is CPU-bound).
import * as fs from "node:fs";
import { spawn } from "node:child_process";
import * as path from "node:path";
import { fromFloat32 } from "../src/checkpoint/dtype.ts";
import { writeSafetensorsStreaming, type StreamEntry } from "../src/checkpoint/safetensors-stream.ts";
import { Module } from "../src/dsl/module.ts";
import { loadModelFile } from "../src/model-file.ts";
import { randomFill, weightSeed } from "../src/weights/random.ts";

const [modelFile, configFile, outDir, ...rest] = process.argv.slice(2);
if (!modelFile || !configFile || !outDir) {
  console.error("usage: make-random-checkpoint.ts <model.ts> <config.json> <out-dir> [--dtype F16|BF16] [--shard-gb N]");
  process.exit(1);
}
const flag = (k: string, d: string) => (rest.includes(k) ? rest[rest.indexOf(k) + 1] : d);
const dtype = flag("--dtype", "F16") as "F16" | "BF16";
const shardBytes = Number(flag("--shard-gb", "5")) * 1e9;
const jobs = Number(flag("--jobs", "1"));
// A child started by --jobs writes the shards i with i % n === k, given as --worker k/n.
const [workerK, workerN] = flag("--worker", "0/1").split("/").map(Number);

const model = await loadModelFile(modelFile);
const json = JSON.parse(fs.readFileSync(configFile, "utf8"));
const cfg = model.parseConfig(json, configFile);
const m = new Module("f16", { maxBatchSize: 1, maxSeqLen: 16, maxNumTokens: 16 });
model.forward(m, cfg);
const entries: (StreamEntry & { mean: number; scale: number })[] = [];
const seen = new Set<string>();
for (const v of m.graph.values.values()) {
  if (v.recipe?.kind !== "checkpoint") continue;
  for (const p of v.recipe.parts)
    if (!seen.has(p.name)) {
      seen.add(p.name);
      entries.push({ name: p.name, dtype, shape: p.shape, ...v.recipe.init });
    }
}
entries.sort((a, b) => a.name.localeCompare(b.name));

// Greedy sharding in name order, as save_pretrained does.
const shards: (typeof entries)[] = [[]];
let size = 0;
for (const e of entries) {
  const n = e.shape.reduce((a, b) => a * b, 1) * 2;
  if (size + n > shardBytes && shards[shards.length - 1].length) {
    shards.push([]);
    size = 0;
  }
  shards[shards.length - 1].push(e);
  size += n;
}
// Never over a folder that holds anything (a real checkpoint of the same name, say): a new or empty one only.
if (workerN === 1 && fs.existsSync(outDir) && (!fs.statSync(outDir).isDirectory() || fs.readdirSync(outDir).length > 0)) {
  console.error(`make-random-checkpoint: ${outDir} exists and is not an empty folder: name a new one`);
  process.exit(1);
}
fs.mkdirSync(outDir, { recursive: true });
const weightMap: Record<string, string> = {};
let total = 0;
const t0 = performance.now();
const shardFile = (i: number) =>
  `model-${String(i + 1).padStart(5, "0")}-of-${String(shards.length).padStart(5, "0")}.safetensors`;
const sizes = shards.map((g) => g.reduce((a, e) => a + e.shape.reduce((x, y) => x * y, 1) * 2, 0));
if (jobs > 1 && workerN === 1) {
  const self = process.argv.slice(1);
  const n = Math.min(jobs, shards.length);
  const children = Array.from({ length: n }, (_, k) =>
    new Promise<void>((resolve, reject) =>
      spawn(process.execPath, [...process.execArgv, ...self, "--worker", `${k}/${n}`], { stdio: "inherit" }).on(
        "exit",
        (code) => (code === 0 ? resolve() : reject(new Error(`shard writer ${k} exited with ${code}`))),
      ),
    ),
  );
  await Promise.all(children);
} else {
  shards.forEach((group, i) => {
    if (i % workerN !== workerK) return;
    const file = shardFile(i);
    writeSafetensorsStreaming(path.join(outDir, file), group, (e) => {
      const f = randomFill(e.shape.reduce((a, b) => a * b, 1), weightSeed(0, e.name), (e as (typeof entries)[number]).mean, (e as (typeof entries)[number]).scale);
      return fromFloat32(dtype, f);
    }, { format: "pt" });
    process.stdout.write(`${file}: ${group.length} tensors\n`);
  });
  if (workerN > 1) process.exit(0);
}
shards.forEach((group, i) => {
  total += sizes[i];
  for (const e of group) weightMap[e.name] = shardFile(i);
});
fs.writeFileSync(path.join(outDir, "model.safetensors.index.json"), JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }, null, 2));
fs.writeFileSync(path.join(outDir, "config.json"), JSON.stringify({ ...json, torch_dtype: dtype === "F16" ? "float16" : "bfloat16" }, null, 2));
process.stdout.write(`wrote ${outDir}: ${(total / 1e9).toFixed(2)} GB in ${((performance.now() - t0) / 1000).toFixed(1)} s\n`);
