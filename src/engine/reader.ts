// Opens an engine directory: checks the format version, each rank file's size and header (nothing
// else is read), and streams weights with the content hash checked in the same pass (streamRankWeights).
import * as fs from "node:fs";
import * as path from "node:path";
import { DTYPE_BYTES } from "../ir/types.ts";
import {
  alignUp,
  DATA_ALIGN,
  EngineConfig,
  EngineHeader,
  FORMAT_VERSION,
  MAGIC,
  PREAMBLE_BYTES,
} from "./format.ts";
import { HASH_CHUNK_BYTES, type RankEntry, verifierFor } from "./hash.ts";

export class EngineError extends Error {
  override name = "EngineError";
}

export interface EngineRank {
  file: string;
  header: EngineHeader;
  dataOffset: number;
  /** config.json's entry (size and content hash); absent for in-memory ranks. */
  entry?: RankEntry;
}

export interface Engine {
  dir: string;
  config: EngineConfig;
  ranks: EngineRank[];
}

/** Checks config.json, each rank file's size and header. Content hashes are checked while weights stream. */
export function openEngine(dir: string): Engine {
  // "" joins to the current folder's config.json: an unset variable ("$ENGINE") would load whatever sits there.
  if (dir.trim() === "") throw new EngineError('engine directory "": an empty path (an unset variable?)');
  const cfgPath = path.join(dir, "config.json");
  if (!fs.existsSync(cfgPath)) {
    if (fs.existsSync(path.join(dir, "onnx.json")))
      throw new EngineError(
        `${dir}: an ONNX export (onnx.json), not an engine; load it with ONNX Runtime, or build an engine without --emit onnx`,
      );
    throw new EngineError(`${dir}: not an engine directory (no config.json)`);
  }
  if (!fs.statSync(cfgPath).isFile()) throw new EngineError(`${cfgPath}: not a file`);
  let raw: unknown;
  try {
    raw = JSON.parse(fs.readFileSync(cfgPath, "utf8"));
  } catch (e) {
    throw new EngineError(`${cfgPath}: invalid JSON: ${(e as Error).message.split("\n")[0]}`);
  }
  if (typeof raw !== "object" || raw === null || Array.isArray(raw))
    throw new EngineError(`${cfgPath}: not an engine config (not a JSON object)`);
  const fv = (raw as { format_version?: unknown }).format_version;
  if (fv === undefined && ("architectures" in raw || "model_type" in raw))
    throw new EngineError(
      `${dir}: a Hugging Face model folder, not an engine; build one first: tsllm-compile MODEL.ts --checkpoint ${dir} --sm N -o ENGINE`,
    );
  if (typeof fv !== "number")
    throw new EngineError(
      `${cfgPath}: not an engine config (format_version ${fv === undefined ? "missing" : `${JSON.stringify(fv)}, not a number`})`,
    );
  if (fv !== FORMAT_VERSION)
    throw new EngineError(
      `${cfgPath}: engine format version ${String(fv)}, this tsllm reads version ${FORMAT_VERSION}; rebuild the engine`,
    );
  const parsed = EngineConfig.safeParse(raw);
  if (!parsed.success) {
    const i = parsed.error.issues[0];
    throw new EngineError(`${cfgPath}: invalid engine config at "${i.path.join(".")}": ${i.message}`);
  }
  const config = parsed.data;
  // The executors run config.ranks as the tp ranks in order: a list of another length would all_reduce
  // too few (or too many) partial sums and run without an error.
  if (config.ranks.length !== config.build.tp)
    throw new EngineError(`${cfgPath}: lists ${config.ranks.length} rank files for tp ${config.build.tp}`);
  // File names were checked by the schema (plain names), so every path below stays inside `dir`.
  const ranks = config.ranks.map((r, i) => {
    const file = path.join(dir, r.file);
    if (!fs.existsSync(file)) throw new EngineError(`${file}: missing rank file`);
    const st = fs.statSync(file);
    if (!st.isFile()) throw new EngineError(`${file}: not a file`);
    const size = st.size;
    if (size !== r.bytes)
      throw new EngineError(`${file}: ${size} bytes, config.json says ${r.bytes} (truncated or replaced)`);
    const rank = { ...readRankHeader(file), entry: r };
    // Each header says which rank it is: a rank file swapped with (or copied over) another rank's has the
    // right size, and only the content hash, which --no-verify skips, would catch it; it then ran with
    // every rank's weights misplaced and printed wrong tokens.
    const h = rank.header;
    if (h.rank !== i || h.tp !== config.build.tp)
      throw new EngineError(
        `${file}: the header says rank ${h.rank} of tp ${h.tp}, config.json lists it as rank ${i} of tp ${config.build.tp} (rank files swapped or from another engine)`,
      );
    return rank;
  });
  return { dir, config, ranks };
}

/**
 * Reads and checks a rank file's header. The file is untrusted (it is loaded with --no-verify too, and by
 * a server): every length and offset is checked against the file's size before it sizes an allocation
 * or a read, and every value id the program uses must exist.
 */
export function readRankHeader(file: string): EngineRank {
  const fd = fs.openSync(file, "r");
  try {
    const st = fs.fstatSync(fd);
    if (!st.isFile()) throw new EngineError(`${file}: not a file`);
    const size = st.size;
    if (size < PREAMBLE_BYTES)
      throw new EngineError(
        `${file}: truncated: ${size} bytes, shorter than the ${PREAMBLE_BYTES}-byte preamble`,
      );
    const pre = Buffer.alloc(PREAMBLE_BYTES);
    readFully(fd, pre, 0, file);
    if (pre.toString("latin1", 0, 8) !== MAGIC)
      throw new EngineError(`${file}: not a tsllm engine (bad magic)`);
    const version = pre.readUInt32LE(8);
    if (version !== FORMAT_VERSION)
      throw new EngineError(
        `${file}: engine format version ${version}, this tsllm reads version ${FORMAT_VERSION}; rebuild the engine`,
      );
    const len64 = pre.readBigUInt64LE(16);
    if (len64 > BigInt(size - PREAMBLE_BYTES))
      throw new EngineError(`${file}: header length ${len64} is past the end of the file (${size} bytes)`);
    const len = Number(len64);
    const json = Buffer.alloc(len);
    readFully(fd, json, PREAMBLE_BYTES, file);
    let raw: unknown;
    try {
      raw = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(json));
    } catch (e) {
      throw new EngineError(`${file}: corrupt engine header (${(e as Error).message.split("\n")[0]})`);
    }
    const parsed = EngineHeader.safeParse(raw);
    if (!parsed.success) {
      const i = parsed.error.issues[0];
      throw new EngineError(`${file}: invalid engine header at "${i.path.join(".")}": ${i.message}`);
    }
    const dataOffset = alignUp(PREAMBLE_BYTES + len, DATA_ALIGN);
    checkHeader(parsed.data, file, Math.max(0, size - dataOffset));
    return { file, header: parsed.data, dataOffset };
  } finally {
    fs.closeSync(fd);
  }
}

function readFully(fd: number, buf: Uint8Array, pos: number, file: string): void {
  let got = 0;
  while (got < buf.length) {
    const n = fs.readSync(fd, buf, got, buf.length - got, pos + got);
    if (n === 0) throw new EngineError(`${file}: truncated`);
    got += n;
  }
}

/** The weights whose bytes the file holds, in offset order. */
function storedWeights(h: EngineHeader): EngineHeader["weights"] {
  return h.weights.filter((w) => !w.random && w.nbytes > 0).sort((a, b) => a.offset - b.offset);
}

/** What readers rely on: value ids resolve, weights are weights with their bytes inside the file. */
function checkHeader(h: EngineHeader, file: string, dataBytes: number): void {
  const values = new Map(h.values.map((v) => [v.id, v]));
  const bad = (what: string) => new EngineError(`${file}: invalid engine header: ${what}`);
  const known = (id: number | null, where: string) => {
    if (id !== null && !values.has(id)) throw bad(`${where} names value ${id}, which is not declared`);
  };
  for (const [k, id] of Object.entries(h.inputs)) known(id, `input "${k}"`);
  for (const [k, id] of Object.entries(h.outputs)) known(id, `output "${k}"`);
  h.nodes.forEach((n, i) => {
    for (const id of n.inputs) known(id, `node ${i} (${n.op})`);
    for (const id of n.outputs) known(id, `node ${i} (${n.op})`);
  });
  for (const w of h.weights) {
    const v = values.get(w.value);
    if (v?.kind !== "weight") throw bad(`weight entry names value ${w.value}, which is not a weight`);
    if (w.random) continue;
    const want = v.shape.reduce<number>(
      (a, d) => a * (typeof d === "number" ? d : d.max),
      DTYPE_BYTES[v.dtype],
    );
    if (w.nbytes !== want)
      throw bad(`weight "${v.name}" has ${w.nbytes} bytes, its shape and dtype need ${want}`);
    if (w.offset + w.nbytes > dataBytes)
      throw bad(`weight "${v.name}" (${w.nbytes} bytes at ${w.offset}) is past the end of the file`);
  }
  // The loading pass (streamRankWeights) assembles the stored weights in offset order, each from its own bytes.
  const stored = storedWeights(h);
  const at = (w: EngineHeader["weights"][number]) =>
    `"${values.get(w.value)!.name}" (${w.nbytes} bytes at ${w.offset})`;
  for (let i = 1; i < stored.length; i++)
    if (stored[i].offset < stored[i - 1].offset + stored[i - 1].nbytes)
      throw bad(`weights ${at(stored[i - 1])} and ${at(stored[i])} overlap`);
}

export function readWeightBytes(rank: EngineRank, offset: number, nbytes: number): Uint8Array {
  const fd = fs.openSync(rank.file, "r");
  if (offset + nbytes > fs.fstatSync(fd).size - rank.dataOffset) {
    fs.closeSync(fd);
    throw new EngineError(`${rank.file}: truncated weight data`);
  }
  try {
    const buf = new Uint8Array(nbytes);
    let got = 0;
    while (got < nbytes) {
      const n = fs.readSync(fd, buf, got, nbytes - got, rank.dataOffset + offset + got);
      if (n === 0) throw new EngineError(`${rank.file}: truncated weight data`);
      got += n;
    }
    return buf;
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * Reads a rank file once, start to end, in large chunks: hashes every byte (unless verify is false) and
 * hands each stored weight's bytes to `visit` as soon as they are complete. The hash is checked after
 * the last byte; on a mismatch this throws naming the file, so callers must not use what they were
 * given until it returns.
 */
export function streamRankWeights(
  rank: EngineRank,
  visit: (w: EngineHeader["weights"][number], bytes: Uint8Array) => void,
  o: { verify?: boolean; onBytes?: (done: number, total: number) => void } = {},
): void {
  const verifier = o.verify !== false && rank.entry ? verifierFor(rank.entry) : null;
  const stored = storedWeights(rank.header);
  const fd = fs.openSync(rank.file, "r");
  try {
    const size = fs.fstatSync(fd).size;
    const buf = new Uint8Array(HASH_CHUNK_BYTES);
    let wi = 0;
    let cur: Uint8Array | null = null; // the weight being assembled
    for (let pos = 0; pos < size; ) {
      const n = fs.readSync(fd, buf, 0, Math.min(buf.length, size - pos), pos);
      if (n === 0) throw new EngineError(`${rank.file}: truncated at byte ${pos} of ${size}`);
      const chunk = buf.subarray(0, n);
      verifier?.update(chunk);
      // Copy the parts of this chunk that belong to weights (in offset order; weights do not overlap).
      for (;;) {
        const w = stored[wi];
        if (!w) break;
        const start = rank.dataOffset + w.offset;
        const end = start + w.nbytes;
        if (start >= pos + n) break;
        const a = Math.max(start, pos);
        const b = Math.min(end, pos + n);
        cur ??= new Uint8Array(w.nbytes);
        cur.set(chunk.subarray(a - pos, b - pos), a - start);
        if (b < end) break;
        visit(w, cur);
        cur = null;
        wi++;
      }
      pos += n;
      o.onBytes?.(pos, size);
    }
    if (wi < stored.length) throw new EngineError(`${rank.file}: truncated weight data`);
  } finally {
    fs.closeSync(fd);
  }
  verifier?.check((m) => new EngineError(`${rank.file}: ${m}`));
}

/** Checks every rank file's content hash (one pass each) without keeping any weights. */
export function verifyEngine(engine: Engine): void {
  for (const r of engine.ranks) streamRankWeights({ ...r, header: { ...r.header, weights: [] } }, () => {});
}
