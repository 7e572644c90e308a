// Opens an engine directory: checks the format version and content hash, parses each rank's header,
// and reads weights on demand.
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import {
  alignUp,
  DATA_ALIGN,
  EngineConfig,
  EngineHeader,
  FORMAT_VERSION,
  MAGIC,
  PREAMBLE_BYTES,
} from "./format.ts";

export class EngineError extends Error {
  override name = "EngineError";
}

export interface EngineRank {
  file: string;
  header: EngineHeader;
  dataOffset: number;
}

export interface Engine {
  dir: string;
  config: EngineConfig;
  ranks: EngineRank[];
}

export function openEngine(dir: string, opts: { verify?: boolean } = {}): Engine {
  const cfgPath = path.join(dir, "config.json");
  if (!fs.existsSync(cfgPath)) throw new EngineError(`${dir}: not an engine directory (no config.json)`);
  let raw: unknown;
  try {
    raw = JSON.parse(fs.readFileSync(cfgPath, "utf8"));
  } catch (e) {
    throw new EngineError(`${cfgPath}: invalid JSON: ${(e as Error).message}`);
  }
  const fv = (raw as { format_version?: unknown })?.format_version;
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
  const ranks = config.ranks.map((r) => {
    const file = path.join(dir, r.file);
    if (!fs.existsSync(file)) throw new EngineError(`${file}: missing rank file`);
    const size = fs.statSync(file).size;
    if (size !== r.bytes)
      throw new EngineError(`${file}: ${size} bytes, config.json says ${r.bytes} (truncated or replaced)`);
    if (opts.verify !== false) {
      const got = sha256File(file);
      if (got !== r.sha256)
        throw new EngineError(
          `${file}: content hash ${got.slice(0, 12)}… does not match config.json (${r.sha256.slice(0, 12)}…)`,
        );
    }
    return readRankHeader(file);
  });
  return { dir, config, ranks };
}

export function readRankHeader(file: string): EngineRank {
  const fd = fs.openSync(file, "r");
  try {
    const pre = Buffer.alloc(PREAMBLE_BYTES);
    fs.readSync(fd, pre, 0, PREAMBLE_BYTES, 0);
    if (pre.toString("latin1", 0, 8) !== MAGIC)
      throw new EngineError(`${file}: not a tsllm engine (bad magic)`);
    const version = pre.readUInt32LE(8);
    if (version !== FORMAT_VERSION)
      throw new EngineError(
        `${file}: engine format version ${version}, this tsllm reads version ${FORMAT_VERSION}; rebuild the engine`,
      );
    const len = Number(pre.readBigUInt64LE(16));
    const json = Buffer.alloc(len);
    fs.readSync(fd, json, 0, len, PREAMBLE_BYTES);
    const parsed = EngineHeader.safeParse(JSON.parse(json.toString("utf8")));
    if (!parsed.success) {
      const i = parsed.error.issues[0];
      throw new EngineError(`${file}: invalid engine header at "${i.path.join(".")}": ${i.message}`);
    }
    return { file, header: parsed.data, dataOffset: alignUp(PREAMBLE_BYTES + len, DATA_ALIGN) };
  } finally {
    fs.closeSync(fd);
  }
}

export function readWeightBytes(rank: EngineRank, offset: number, nbytes: number): Uint8Array {
  const fd = fs.openSync(rank.file, "r");
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

function sha256File(file: string): string {
  const h = createHash("sha256");
  const fd = fs.openSync(file, "r");
  const buf = Buffer.alloc(8 << 20);
  try {
    for (;;) {
      const n = fs.readSync(fd, buf, 0, buf.length, null);
      if (n === 0) break;
      h.update(buf.subarray(0, n));
    }
  } finally {
    fs.closeSync(fd);
  }
  return h.digest("hex");
}
