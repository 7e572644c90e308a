// One op table: every op of the registry (src/ops/) has a CUDA kernel (native/src/runtime/ops.def) and an ONNX
// lowering (src/onnx/lower.ts), or is listed in src/ops/without.ts with the reason; no table names an op the
// registry does not have; ops.def's input/output counts are the registry's. (The fusion report's entry is
// the registry's own `report` field, so it cannot go missing.) The compiler warns at build time when an engine
// will not run on the GPU.
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { gpuWarnings, nativeOps, OPS_DEF } from "../src/native/ops.ts";
import { LOWERINGS } from "../src/onnx/lower.ts";
import { listOps } from "../src/ops/index.ts";
import { NATIVE_WITHOUT_ATTRS, WITHOUT } from "../src/ops/without.ts";
import { buildFixture } from "./fixtures.ts";

/** What is wrong between the registry's op names and one table (with its explicit "does not have" list). */
function tableProblems(
  table: string,
  registry: readonly string[],
  has: ReadonlySet<string>,
  without: Readonly<Record<string, string>>,
): string[] {
  const p: string[] = [];
  const known = new Set(registry);
  for (const op of registry) {
    if (has.has(op) && op in without)
      p.push(`${table}: ${op} is in the table and also listed as not having one`);
    if (!has.has(op) && !(op in without))
      p.push(`${table}: registry op ${op} has no entry (add one or list it in src/ops/without.ts)`);
  }
  for (const op of has) if (!known.has(op)) p.push(`${table}: ${op} is not an op of the registry`);
  for (const op of Object.keys(without))
    if (!known.has(op)) p.push(`${table}: without-list names unknown op ${op}`);
  return p;
}

const registry = listOps().map((d) => d.name);
const tables = {
  native: new Set(nativeOps().keys()),
  onnx: new Set(Object.keys(LOWERINGS)),
} as const;

describe("op tables agree with the registry", () => {
  for (const [name, has] of Object.entries(tables))
    it(`${name}: every registry op has an entry or an explicit reason, and nothing else is listed`, () => {
      expect(tableProblems(name, registry, has, WITHOUT[name as keyof typeof WITHOUT])).toEqual([]);
    });

  it("removing any entry from any table is caught", () => {
    // The check above, run on each table with each of its entries removed in turn.
    let tried = 0;
    for (const [name, has] of Object.entries(tables))
      for (const op of has) {
        const less = new Set(has);
        less.delete(op);
        const p = tableProblems(name, registry, less, WITHOUT[name as keyof typeof WITHOUT]);
        expect(p).toEqual([
          `${name}: registry op ${op} has no entry (add one or list it in src/ops/without.ts)`,
        ]);
        tried++;
      }
    expect(tried).toBeGreaterThan(2 * 15);
  });

  it("ops.def input and output counts are the registry's", () => {
    for (const def of listOps()) {
      const n = nativeOps().get(def.name);
      if (!n) continue;
      const required = def.inputs.filter((i) => !i.endsWith("?")).length;
      expect({ op: def.name, min: n.minInputs, max: n.maxInputs }).toEqual({
        op: def.name,
        min: required,
        max: def.inputs.length,
      });
      if (typeof def.numOutputs === "number")
        expect([def.name, n.outputs]).toEqual([def.name, def.numOutputs]);
      else expect([def.name, n.outputs]).toEqual([def.name, -1]);
    }
  });
});

describe("tsllm-compile says when an engine will not run on the GPU", () => {
  it("fp32 builds and ops outside ops.def warn, one line each; fp16 and quantised (int8-wo, FP8 KV) builds do not", async () => {
    for (const extra of [{}, { quant: "int8-wo" }, { kvCacheDtype: "fp8" }]) {
      const lines: string[] = [];
      await buildFixture("llama", { dtype: "fp16", ...extra, log: (s) => lines.push(s) });
      expect([extra, lines.filter((l) => l.startsWith("warning:"))]).toEqual([extra, []]);
    }
    expect(gpuWarnings({ nodes: [] } as never, { dtype: "fp32", kv_cache_dtype: "fp32" })).toEqual([
      "dtype fp32: the CUDA runtime runs fp16 and bf16 engines",
    ]);
    expect(
      gpuWarnings({ nodes: [{ op: "no_such_op" }] } as never, { dtype: "fp16", kv_cache_dtype: "bf16" }),
    ).toEqual([
      "op no_such_op is not in the CUDA runtime",
      "kv-cache-dtype bf16: the CUDA runtime's KV cache holds the activation dtype or fp8",
    ]);
  });

  it("the list of attributes the runtime does not read names only ones its sources never parse; expert-parallel moe runs on the GPU", () => {
    const dir = path.join(path.dirname(OPS_DEF));
    const sources = fs
      .readdirSync(dir)
      .filter((f) => f.endsWith(".cc"))
      .map((f) => fs.readFileSync(path.join(dir, f), "utf8"))
      .join("\n");
    for (const key of Object.keys(NATIVE_WITHOUT_ATTRS))
      expect([key, sources.includes(`"${key.split(".")[1]}"`)]).toEqual([key, false]);
    // --moe-ep-size engines: the runtime reads expert_start / local_experts (engine_file.cc), so no warning.
    for (const attr of ["expert_start", "local_experts"]) expect(sources.includes(`"${attr}"`)).toBe(true);
    const moe = { op: "moe", attrs: { num_experts: 4, top_k: 2, expert_start: 2, local_experts: 2 } };
    expect(gpuWarnings({ nodes: [moe] } as never, { dtype: "fp16", kv_cache_dtype: "fp16" })).toEqual([]);
  });
});
