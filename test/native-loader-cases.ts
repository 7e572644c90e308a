// Deliberately corrupted rank files for the native loader's integrity checks (native/src/runtime/engine_file.cc):
// each case rewrites a copy of a valid rank file and names the error the loader must give. Used on the CPU by
// test/native-loader.test.ts (through native/tools/engine_check.cc, no GPU) and on the GPU by
// test-gpu/runtime.test.ts (through tsllm_load), with the content hash never consulted (as with --no-verify).
import * as fs from "node:fs";
import * as path from "node:path";
import { DATA_ALIGN, PREAMBLE_BYTES } from "../src/engine/format.ts";

// biome-ignore lint/suspicious/noExplicitAny: a header being tampered with is any JSON
type Header = any;

interface RankFile {
  header: Header;
  data: Buffer;
}

function readRank(file: string): RankFile {
  const buf = fs.readFileSync(file);
  const len = Number(buf.readBigUInt64LE(16));
  const header = JSON.parse(buf.subarray(PREAMBLE_BYTES, PREAMBLE_BYTES + len).toString("utf8"));
  const off = Math.ceil((PREAMBLE_BYTES + len) / DATA_ALIGN) * DATA_ALIGN;
  return { header, data: buf.subarray(off) };
}

/** A rank file with this header text and data section, laid out as the writer does (data at a 4096 boundary). */
function writeRank(file: string, json: string, data: Buffer): void {
  const text = Buffer.from(json, "utf8");
  const pre = Buffer.alloc(PREAMBLE_BYTES);
  pre.write("TSLLMENG", 0, "latin1");
  pre.writeUInt32LE(1, 8);
  pre.writeBigUInt64LE(BigInt(text.length), 16);
  const off = Math.ceil((PREAMBLE_BYTES + text.length) / DATA_ALIGN) * DATA_ALIGN;
  fs.writeFileSync(file, Buffer.concat([pre, text, Buffer.alloc(off - PREAMBLE_BYTES - text.length), data]));
}

const valueById = (h: Header, id: number) => h.values.find((v: Header) => v.id === id);
const nodeOf = (h: Header, op: string) => {
  const n = h.nodes.find((x: Header) => x.op === op);
  if (!n) throw new Error(`no ${op} node in the engine`);
  return n;
};

export interface CorruptCase {
  name: string;
  /** Returns the corrupted file's bytes layout: a header mutation, or raw bytes. */
  make(src: RankFile, out: string): void;
  error: RegExp;
}

const headerCase = (name: string, mutate: (h: Header) => void, error: RegExp): CorruptCase => ({
  name,
  make(src, out) {
    const h = structuredClone(src.header);
    mutate(h);
    writeRank(out, JSON.stringify(h), src.data);
  },
  error,
});

export const CORRUPT_CASES: CorruptCase[] = [
  {
    name: "truncated inside the weights",
    make(src, out) {
      writeRank(out, JSON.stringify(src.header), src.data.subarray(0, 100));
    },
    error: /weight .* lies past the end of the file .*truncated engine/,
  },
  {
    name: "truncated inside the header",
    make(src, out) {
      const json = JSON.stringify(src.header);
      writeRank(out, json, Buffer.alloc(0));
      const b = fs.readFileSync(out);
      fs.writeFileSync(out, b.subarray(0, PREAMBLE_BYTES + Math.floor(json.length / 2)));
    },
    error: /header length \d+ does not fit the file/,
  },
  headerCase(
    "weight offset past the end",
    (h) => (h.weights.find((w: Header) => w.nbytes > 0).offset = 2 ** 40),
    /lies past the end of the file/,
  ),
  headerCase(
    "negative weight offset",
    (h) => (h.weights.find((w: Header) => w.nbytes > 0).offset = -4096),
    /offset -4096 is outside/,
  ),
  headerCase(
    "weight nbytes smaller than its shape",
    (h) => (h.weights.find((w: Header) => w.nbytes > 0).nbytes -= 2),
    /has nbytes \d+, its shape and dtype make \d+/,
  ),
  headerCase(
    "arena offset past the arena",
    (h) => {
      const k = Object.keys(h.arena.offsets).find((id) => valueById(h, Number(id))?.kind !== "input")!;
      h.arena.offsets[k] = h.arena.bytes;
    },
    /overruns the arena/,
  ),
  headerCase(
    "unaligned arena offset",
    (h) => {
      const k = Object.keys(h.arena.offsets).find((id) => valueById(h, Number(id))?.kind !== "input")!;
      h.arena.offsets[k] += 2;
    },
    /is not 16-byte aligned/,
  ),
  headerCase(
    "attention layer outside the KV cache",
    (h) => (nodeOf(h, "fused_attention").attrs.layer = 99),
    /layer 99 is outside \[0, \d+\]/,
  ),
  headerCase(
    "num_heads that wraps a 32-bit int",
    (h) => (nodeOf(h, "fused_attention").attrs.num_heads = 2 ** 32 + 4),
    /num_heads 4294967300 is outside/,
  ),
  headerCase(
    "odd rotary_dim",
    (h) => (nodeOf(h, "fused_attention").attrs.rotary_dim -= 1),
    /rotary_dim \d+ is odd/,
  ),
  headerCase(
    "rms_norm eps out of range",
    (h) => (nodeOf(h, "rms_norm").attrs.eps = 5),
    /eps 5\.0+ is outside \[0, 1\)/,
  ),
  headerCase(
    "node input names an unknown value id",
    (h) => (h.nodes[1].inputs[0] = 987654),
    /refers to unknown value id 987654/,
  ),
  headerCase(
    "zero dim",
    (h) => {
      const w = h.values.find((v: Header) => v.kind === "weight" && v.shape.length === 2);
      w.shape[1] = 0;
    },
    /dim 0 is outside/,
  ),
  headerCase(
    "symbolic bound below max_num_tokens",
    (h) => {
      const v = h.values.find((x: Header) => x.shape.some((d: Header) => d?.sym === "num_tokens"));
      for (const d of v.shape) if (d?.sym === "num_tokens") d.max = 1;
    },
    /num_tokens bound 1 is outside/,
  ),
  headerCase(
    "linear output width differs from its weight",
    (h) => {
      const n = nodeOf(h, "linear");
      const o = valueById(h, n.outputs[0]);
      o.shape[o.shape.length - 1] += 8;
    },
    /must have last dim \d+/,
  ),
  headerCase(
    "gather_rows indexed by the token ids",
    (h) => (nodeOf(h, "gather_rows").inputs[1] = h.inputs.input_ids),
    /indices must be the logits_indices graph input/,
  ),
  headerCase(
    "negative embedding vocab_start",
    (h) => (nodeOf(h, "embedding").attrs.vocab_start = -1),
    /vocab_start -1 is outside/,
  ),
  headerCase(
    "limits beyond 2^24",
    (h) => (h.limits.max_num_tokens = 2 ** 40),
    /limits.max_num_tokens 1099511627776 is outside/,
  ),
  headerCase(
    "input_ids with a second dim",
    (h) => valueById(h, h.inputs.input_ids).shape.push(4),
    /graph input input_ids must have shape \[num_tokens\]/,
  ),
  // Elementwise chains folded into a linear / norm (src/ops/ew-chain.ts): attrs post / pre.
  headerCase(
    "a linear's post chain naming an op that is not unary",
    (h) => (nodeOf(h, "linear").attrs.post = { ops: ["softcap", "gelu"], args: [30, 0] }),
    /node \d+ \(linear\): post\.ops\[1\] "gelu" is not a unary op \(tanh, sigmoid, exp, scale, softcap\)/,
  ),
  headerCase(
    "a norm's pre chain with a softcap of cap 0",
    (h) => (nodeOf(h, "rms_norm").attrs.pre = { ops: ["softcap"], args: [0] }),
    /node \d+ \(rms_norm\): pre\.args\[0\] 0\.000000 must be a finite number > 0/,
  ),
  headerCase(
    "a chain longer than the runtime holds",
    (h) => (nodeOf(h, "linear").attrs.post = { ops: Array(5).fill("tanh"), args: Array(5).fill(0) }),
    /node \d+ \(linear\): post has 5 ops and 5 args \(the same number, at most 4\)/,
  ),
  {
    name: "header nested 100 deep",
    make(src, out) {
      const json = JSON.stringify(src.header);
      writeRank(out, `${json.slice(0, -1)},"x":${"[".repeat(100)}${"]".repeat(100)}}`, src.data);
    },
    error: /nesting too deep/,
  },
];

/** Writes every case's corrupted copy of `rankFile` into `dir`; returns [case, file] pairs. */
// quant_linear / FP8 KV cache attributes, applied to an int4-wo group-32 engine with an FP8 KV cache.
const quantNode = (h: Header) => nodeOf(h, "quant_linear");
export const QUANT_CORRUPT_CASES: CorruptCase[] = [
  headerCase(
    "unknown quantisation scheme",
    (h) => (quantNode(h).attrs.quant = "int3-wo"),
    /node \d+ \(quant_linear\): quant "int3-wo" is not implemented by this runtime \(fp8, int8-wo, int4-wo\)/,
  ),
  headerCase(
    "group size not dividing K",
    (h) => (quantNode(h).attrs.group_size = 48),
    /node \d+ \(quant_linear\): group_size 48 must be even and divide K=128/,
  ),
  headerCase(
    "weights of another scheme's dtype",
    (h) => (valueById(h, quantNode(h).inputs[1]).dtype = "i8"),
    /node \d+ \(quant_linear\): value \d+ \(.*\) is i8, this op needs u8/,
  ),
  headerCase(
    "compute dtype other than the engine's",
    (h) => (quantNode(h).attrs.compute_dtype = "bf16"),
    /node \d+ \(quant_linear\): compute_dtype bf16 differs from the engine dtype fp16/,
  ),
  headerCase(
    "a non-positive FP8 KV scale",
    (h) => (nodeOf(h, "fused_attention").attrs.v_scale = 0),
    /node \d+ \(fused_attention\): k_scale \/ v_scale must be positive and finite/,
  ),
  headerCase(
    "an attention node that disagrees with the FP8 cache",
    (h) => (nodeOf(h, "fused_attention").attrs.kv_cache_dtype = "fp16"),
    /node \d+ \(fused_attention\): kv_cache_dtype "fp16" but the engine's kv_cache.dtype is fp8_e4m3/,
  ),
];

export function writeCorruptRanks(
  rankFile: string,
  dir: string,
  cases = CORRUPT_CASES,
): [CorruptCase, string][] {
  const src = readRank(rankFile);
  fs.mkdirSync(dir, { recursive: true });
  return cases.map((c, i) => {
    const out = path.join(dir, `case${i}.engine`);
    c.make(src, out);
    return [c, out] as [CorruptCase, string];
  });
}

// moe attributes and expert weights, applied to a tiny-mixtral engine (4 experts of I = 192, H = 128, top-2).
const moeNode = (h: Header) => nodeOf(h, "moe");
export const MOE_CORRUPT_CASES: CorruptCase[] = [
  headerCase(
    "top_k greater than num_experts",
    (h) => (moeNode(h).attrs.top_k = 5),
    /node \d+ \(moe\): top_k 5 is outside \[1, 4\]/,
  ),
  headerCase(
    "router logits of another expert count",
    (h) => (moeNode(h).attrs.num_experts = 8),
    /node \d+ \(moe\): value \d+ \(.*gate.*\) must have last dim 8/,
  ),
  headerCase(
    "a down projection of the wrong shape",
    (h) => (valueById(h, moeNode(h).inputs[4]).shape = [256, 384]), // same bytes, another layout
    /node \d+ \(moe\): w2 .*experts\.w2\.weight must be \[512, 192\] \(4 local experts stacked\)/,
  ),
  headerCase(
    "expert-parallel experts past num_experts",
    (h) => Object.assign(moeNode(h).attrs, { expert_start: 3, local_experts: 2 }),
    /node \d+ \(moe\): local_experts 2 is outside \[1, 1\]/,
  ),
  headerCase(
    "quantised experts",
    (h) => (moeNode(h).attrs.quant = "int8-wo"),
    /node \d+ \(moe\): quantised experts \(quant int8-wo\) are not implemented by the CUDA runtime yet/,
  ),
];
