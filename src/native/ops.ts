// The ops the CUDA runtime implements, read from native/src/runtime/ops.def: the one list the native op enum,
// parsing, messages and launch table are generated from. The compiler uses it to say at build time when an
// engine will not run on the GPU; test/op-tables.test.ts checks it against the op registry.
import * as fs from "node:fs";
import { fileURLToPath } from "node:url";
import type { Graph } from "../ir/types.ts";
import { NATIVE_WITHOUT_ATTRS, WITHOUT } from "../ops/without.ts";

export const OPS_DEF = fileURLToPath(new URL("../../native/src/runtime/ops.def", import.meta.url));

export interface NativeOp {
  /** The enum name in C++ (Op::Linear). */
  cname: string;
  minInputs: number;
  maxInputs: number;
  /** Fixed output count, or -1 when the attrs give it (split). */
  outputs: number;
}

let cached: Map<string, NativeOp> | null = null;

/** Registry op name → its line in ops.def. */
export function nativeOps(): Map<string, NativeOp> {
  if (cached) return cached;
  const m = new Map<string, NativeOp>();
  const re = /^TSLLM_OP\(\s*(\w+)\s*,\s*"(\w+)"\s*,\s*(-?\d+)\s*,\s*(-?\d+)\s*,\s*(-?\d+)\s*\)\s*$/;
  for (const raw of fs.readFileSync(OPS_DEF, "utf8").split("\n")) {
    // Indented entries count, as they do for the C preprocessor that reads the same file.
    const line = raw.trim();
    if (!line.startsWith("TSLLM_OP(")) continue;
    const g = re.exec(line);
    if (!g) throw new Error(`${OPS_DEF}: cannot parse "${line}"`);
    m.set(g[2], { cname: g[1], minInputs: Number(g[3]), maxInputs: Number(g[4]), outputs: Number(g[5]) });
  }
  cached = m;
  return m;
}

/** Ops of `g` the CUDA runtime does not implement (sorted, each once). */
export function opsMissingOnGpu(g: Graph): string[] {
  const have = nativeOps();
  return [...new Set(g.nodes.map((n) => n.op).filter((op) => !have.has(op)))].sort();
}

/**
 * Why an engine built from `g` will not load in the CUDA runtime (empty when it will, as far as the build can
 * tell): ops outside ops.def, attributes it does not read, and the activation / KV-cache dtypes it refuses. The CPU reference
 * executor still runs such an engine, so the compiler warns instead of failing.
 */
export function gpuWarnings(g: Graph, build: { dtype: string; kv_cache_dtype: string }): string[] {
  const w: string[] = [];
  for (const op of opsMissingOnGpu(g))
    w.push(`op ${op} is not in the CUDA runtime${WITHOUT.native[op] ? ` (${WITHOUT.native[op]})` : ""}`);
  for (const [key, why] of Object.entries(NATIVE_WITHOUT_ATTRS)) {
    const [op, attr] = key.split(".");
    if (g.nodes.some((n) => n.op === op && n.attrs?.[attr] !== undefined))
      w.push(`op ${op} with attribute ${attr} is not run by the CUDA runtime (${why})`);
  }
  const quantMoe = g.nodes.find((n) => n.op === "moe" && (n.attrs.quant ?? "none") !== "none");
  if (quantMoe)
    w.push(
      `op moe with ${String(quantMoe.attrs.quant)} experts: the CUDA runtime's moe kernels take fp16 / bf16 experts only`,
    );
  if (build.dtype !== "fp16" && build.dtype !== "bf16")
    w.push(`dtype ${build.dtype}: the CUDA runtime runs fp16 and bf16 engines`);
  if (build.kv_cache_dtype !== build.dtype && build.kv_cache_dtype !== "fp8")
    w.push(
      `kv-cache-dtype ${build.kv_cache_dtype}: the CUDA runtime's KV cache holds the activation dtype or fp8`,
    );
  return w;
}
