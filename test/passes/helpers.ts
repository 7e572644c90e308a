// Graph-level test helpers: build a fixture's graph (no engine written), run pipeline passes on it,
// and compare logits of two graphs on the reference executor over the golden prompts (prefill plus
// teacher-forced decode steps, so the KV cache path is exercised).
import * as fs from "node:fs";
import * as path from "node:path";
import { expect } from "vitest";
import { PASSES, PassLog, passContext } from "../../passes/index.ts";
import type { Pass } from "../../passes/pass.ts";
import { type Checkpoint, openCheckpoint } from "../../src/checkpoint/checkpoint.ts";
import { Module } from "../../src/dsl/module.ts";
import { BuildConfig, valueDtypeOf } from "../../src/engine/format.ts";
import { ReferenceExecutor } from "../../src/executor/reference.ts";
import { type Golden, readGolden } from "../../src/golden.ts";
import type { Graph, Node } from "../../src/ir/types.ts";
import { loadModelFile } from "../../src/model-file.ts";
import { nodeLayers } from "../../src/report/figures.ts";
import { GPTJ_MODEL, LLAMA_MODEL, TINY_GPTJ, TINY_LLAMA } from "../fixtures.ts";

export type Which = "llama" | "gptj";
export const FIXTURES: Which[] = ["llama", "gptj"];

export interface Fixture {
  which: Which;
  graph: Graph;
  build: BuildConfig;
  ckpt: Checkpoint;
  golden: Golden;
}

export function testBuild(extra: Partial<BuildConfig> = {}): BuildConfig {
  return BuildConfig.parse({
    sm: 90,
    tp: 1,
    dtype: "fp32",
    kv_cache_dtype: "fp32",
    max_batch_size: 8,
    max_seq_len: 256,
    max_num_tokens: 256,
    tokens_per_block: 32,
    random_weights: false,
    seed: 0,
    ...extra,
  });
}

/** Builds a model file's graph for a checkpoint directory (in the build's dtype, fp32 by default; small limits). */
export async function graphOf(
  modelFile: string,
  dir: string,
  build = testBuild(),
  patch: Record<string, unknown> = {},
): Promise<Graph> {
  const model = await loadModelFile(modelFile);
  const json = { ...JSON.parse(fs.readFileSync(path.join(dir, "config.json"), "utf8")), ...patch };
  const cfg = model.parseConfig(json, dir);
  const m = new Module(
    valueDtypeOf(build.dtype),
    { maxBatchSize: build.max_batch_size, maxSeqLen: build.max_seq_len, maxNumTokens: build.max_num_tokens },
    0.02,
    String(json.torch_dtype ?? json.dtype ?? "float32"),
  );
  model.forward(m, cfg);
  return m.graph;
}

/**
 * Under `npm run mutation` (scripts/mutation.mjs sets TSLLM_MUTATION) every call computes afresh:
 * Stryker's per-test coverage credits the code a memoised result ran to the first test that computed
 * it, so a mutant would run only against that test and never against the later tests that check it.
 */
export const MEMOISE = !process.env.TSLLM_MUTATION;

const cache = new Map<Which, Fixture>();

export async function fixture(which: Which): Promise<Fixture> {
  let f = MEMOISE ? cache.get(which) : undefined;
  if (!f) {
    const dir = which === "llama" ? TINY_LLAMA : TINY_GPTJ;
    const build = testBuild();
    const graph = await graphOf(which === "llama" ? LLAMA_MODEL : GPTJ_MODEL, dir, build);
    f = {
      which,
      graph,
      build,
      ckpt: openCheckpoint(dir),
      golden: readGolden(path.join(dir, "golden.safetensors")),
    };
    cache.set(which, f);
  }
  return f;
}

/** One pass on g with a fresh log: a Pass, or a pass's own function (cse, dce: without bestEffortPass's guard). */
export function runPass(
  pass: Pass | Pass["run"],
  g: Graph,
  build = testBuild(),
): { out: Graph; log: PassLog } {
  const log = new PassLog();
  const ctx = passContext(build, log);
  return { out: typeof pass === "function" ? pass(g, ctx) : pass.run(g, ctx), log };
}

/** A block built by hand (`build(o)`), edited, then `pass` run on its graph: the block and runPass's result. */
export function runBuilt<O, B extends { g: Graph }>(
  pass: Pass | Pass["run"],
  build: (o: O) => B,
  o: O,
  edit: (b: B) => void = () => {},
): B & { out: Graph; log: PassLog } {
  const b = build(o);
  edit(b);
  return { ...b, ...runPass(pass, b.g) };
}

/** The ops of a graph's nodes, in order. */
export const ops = (g: Graph): string[] => g.nodes.map((n) => n.op);

/** The pass left the graph's ops as they were, matched nothing, did not fail, and noted exactly `notes`. */
export function expectLeftAlone(r: { g: Graph; out: Graph; log: PassLog }, notes: string[]): void {
  expect(r.log.matches).toEqual([]);
  expect(r.log.failed).toBeUndefined();
  expect(ops(r.out)).toEqual(ops(r.g));
  expect(r.log.notes).toEqual(notes);
}

/** The node writing value `id`, if any. */
export function writer(g: Graph, id: number | null): Node | undefined {
  return g.nodes.find((n) => id !== null && n.outputs.includes(id));
}

/** Runs the named pipeline passes in pipeline order, recording each pass's log. */
export function runPasses(
  g: Graph,
  names: string[],
  build = testBuild(),
): { graph: Graph; logs: Record<string, PassLog> } {
  for (const n of names) if (!PASSES.some((p) => p.name === n)) throw new Error(`no pass ${n}`);
  const logs: Record<string, PassLog> = {};
  for (const p of PASSES) {
    if (!names.includes(p.name)) continue;
    const log = new PassLog();
    g = p.run(g, passContext(build, log));
    logs[p.name] = log;
  }
  return { graph: g, logs };
}

/** The pipeline's pass names before `name`. */
export function passesBefore(name: string): string[] {
  const names = PASSES.map((p) => p.name);
  const i = names.indexOf(name);
  if (i < 0) throw new Error(`no pass ${name}`);
  return names.slice(0, i);
}

/** Logits of every golden prompt position: prefill, then teacher-forced decode one token a step. */
export function goldenLogits(f: Fixture, g: Graph | Graph[], maxDecode = 4, build = f.build): Float32Array[] {
  const ex = ReferenceExecutor.fromGraphs(Array.isArray(g) ? g : [g], build, f.ckpt);
  const out: Float32Array[] = [];
  f.golden.prompts.forEach((p, i) => {
    const seq = 100 + i;
    out.push(...ex.step([{ seqId: seq, tokens: p.inputIds.slice(0, p.promptLen), logits: "all" }]).get(seq)!);
    const end = Math.min(p.inputIds.length, p.promptLen + maxDecode);
    for (let pos = p.promptLen; pos < end; pos++)
      out.push(...ex.step([{ seqId: seq, tokens: [p.inputIds[pos]], logits: "last" }]).get(seq)!);
  });
  return out;
}

export function maxAbsDiff(a: Float32Array[], b: Float32Array[]): number {
  if (a.length !== b.length) return Infinity;
  let m = 0;
  a.forEach((row, i) => {
    for (let k = 0; k < row.length; k++) m = Math.max(m, Math.abs(row[k] - b[i][k]));
  });
  return m;
}

/** Op counts over the whole graph. */
export function opCounts(g: Graph, nodes: Node[] = g.nodes): Record<string, number> {
  const c: Record<string, number> = {};
  for (const n of nodes) c[n.op] = (c[n.op] ?? 0) + 1;
  return c;
}

/** Nodes of decoder layer `layer`, as the fusion report assigns them. */
export function layerNodes(g: Graph, layer: number): Node[] {
  const layers = nodeLayers(g);
  return g.nodes.filter((_, i) => layers[i] === layer);
}

export const VARIANTS_MODEL = path.join(
  path.dirname(new URL(import.meta.url).pathname),
  "models/variants.ts",
);

/** A test variant over tiny-llama's weights (see models/variants.ts), as a fixture. */
export async function variantFixture(variant: "geglu" | "unusual"): Promise<Fixture> {
  const base = await fixture("llama");
  const graph = await graphOf(VARIANTS_MODEL, TINY_LLAMA, base.build, { variant });
  return { ...base, graph };
}
