/**
 * A strict safetensors reader (header only at open; each tensor read on demand)
 * and a small writer for tests and scripts.
 *
 * Format: u64 little-endian header length N, N bytes of JSON, then the data
 * section. The JSON maps tensor names to {dtype, shape, data_offsets:[begin,end]}
 * relative to the data section, plus an optional "__metadata__" string map.
 * We insist the tensors tile the data section exactly, so a truncated or
 * hand-edited file fails at open rather than yielding garbage weights later.
 */
import * as fs from "node:fs";
import { writeWhole } from "../fs-atomic.ts";
import { DTYPE_SIZES, type Dtype, isDtype } from "./dtype.ts";
import { CheckpointError } from "./errors.ts";

/** Headers beyond this are certainly corrupt (real ones are well under 1 MB). */
export const MAX_HEADER_BYTES = 100 * 1024 * 1024;
/** Largest single read; Linux returns at most ~2 GB per read() anyway. */
const READ_CHUNK = 1 << 30;

export interface TensorInfo {
  dtype: Dtype;
  shape: number[];
  byteLength: number;
  /** Absolute byte offset of the tensor's data in its file. */
  fileOffset: number;
}

export interface SafetensorsFile {
  readonly path: string;
  readonly metadata: Record<string, string>;
  /** Tensor names in file order (ascending data offset). */
  names(): string[];
  has(name: string): boolean;
  info(name: string): TensorInfo;
  /** The tensor's raw little-endian bytes, read from disk now. */
  read(name: string): Uint8Array;
  close(): void;
}

export interface TensorToWrite {
  dtype: Dtype;
  shape: number[];
  data: Uint8Array;
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function isNonNegInt(v: unknown): v is number {
  return typeof v === "number" && Number.isSafeInteger(v) && v >= 0;
}

function readFully(fd: number, path: string, target: Uint8Array, position: number, what: string): void {
  let done = 0;
  while (done < target.byteLength) {
    const len = Math.min(READ_CHUNK, target.byteLength - done);
    const n = fs.readSync(fd, target, done, len, position + done);
    if (n === 0) {
      throw new CheckpointError(
        path,
        `truncated while reading ${what}: expected ${target.byteLength} bytes at offset ${position}, got ${done}`,
      );
    }
    done += n;
  }
}

/** Validate one header entry and return its info (offsets still relative to the data section). */
function parseEntry(
  path: string,
  name: string,
  raw: unknown,
): { info: Omit<TensorInfo, "fileOffset">; begin: number; end: number } {
  const fail = (detail: string): never => {
    throw new CheckpointError(path, detail, name);
  };
  if (!isPlainObject(raw)) return fail("header entry is not an object");
  for (const k of Object.keys(raw)) {
    if (k !== "dtype" && k !== "shape" && k !== "data_offsets") fail(`unexpected header field "${k}"`);
  }
  const { dtype, shape, data_offsets: offsets } = raw;
  if (!isDtype(dtype)) {
    return fail(`unknown dtype ${JSON.stringify(dtype)} (known: ${Object.keys(DTYPE_SIZES).join(", ")})`);
  }
  if (!Array.isArray(shape) || !shape.every(isNonNegInt)) {
    return fail(`shape must be an array of non-negative integers, got ${JSON.stringify(shape)}`);
  }
  if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isNonNegInt)) {
    return fail(`data_offsets must be [begin, end] of non-negative integers, got ${JSON.stringify(offsets)}`);
  }
  const [begin, end] = offsets as [number, number];
  if (end < begin) fail(`data_offsets [${begin}, ${end}] end before begin`);
  const numel = shape.reduce((a: number, d: number) => a * d, 1);
  const byteLength = numel * DTYPE_SIZES[dtype];
  if (!Number.isSafeInteger(byteLength)) fail(`shape ${JSON.stringify(shape)} is too large`);
  if (end - begin !== byteLength) {
    fail(
      `size mismatch: dtype ${dtype} shape [${shape.join(", ")}] needs ${byteLength} bytes but data_offsets [${begin}, ${end}] span ${end - begin}`,
    );
  }
  return { info: { dtype, shape: [...shape], byteLength }, begin, end };
}

/**
 * Open a safetensors file, reading and validating only its header.
 * The file stays open until `close()`; `read()` seeks to each tensor.
 */
export function openSafetensors(path: string): SafetensorsFile {
  // Only a regular file (or a link to one) is read. Linux opens a directory for reading and the first read then
  // fails with a bare EISDIR naming no file; opening a FIFO for reading waits for a writer, forever.
  const st = fs.statSync(path, { throwIfNoEntry: false });
  if (st?.isDirectory()) throw new CheckpointError(path, "is a directory, not a safetensors file");
  if (st && !st.isFile()) throw new CheckpointError(path, "is not a regular file (a FIFO, socket or device)");
  let fd: number;
  try {
    fd = fs.openSync(path, "r");
  } catch (e) {
    throw new CheckpointError(path, `cannot open: ${(e as Error).message}`);
  }
  try {
    return parseHeader(path, fd);
  } catch (e) {
    fs.closeSync(fd);
    throw e;
  }
}

function parseHeader(path: string, fd: number): SafetensorsFile {
  const fileSize = fs.fstatSync(fd).size;
  if (fileSize < 8) {
    throw new CheckpointError(
      path,
      `truncated: file is ${fileSize} bytes, too short for the 8-byte header length`,
    );
  }
  const lenBuf = new Uint8Array(8);
  readFully(fd, path, lenBuf, 0, "header length");
  const headerLen64 = new DataView(lenBuf.buffer).getBigUint64(0, true);
  if (headerLen64 > BigInt(MAX_HEADER_BYTES)) {
    throw new CheckpointError(
      path,
      `header length ${headerLen64} exceeds the ${MAX_HEADER_BYTES}-byte limit (corrupt file?)`,
    );
  }
  const headerLen = Number(headerLen64);
  if (headerLen > fileSize - 8) {
    throw new CheckpointError(
      path,
      `header length ${headerLen} is larger than the file allows (${fileSize - 8} bytes after the length prefix; truncated or corrupt)`,
    );
  }
  const headerBytes = new Uint8Array(headerLen);
  readFully(fd, path, headerBytes, 8, "header");

  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(headerBytes));
  } catch (e) {
    // JSON.parse quotes the offending text, which may hold newlines: keep the message one line.
    throw new CheckpointError(path, `header is not valid JSON: ${(e as Error).message.replace(/\s+/g, " ")}`);
  }
  if (!isPlainObject(header)) throw new CheckpointError(path, "header JSON is not an object");

  let metadata: Record<string, string> = {};
  const entries: { name: string; info: Omit<TensorInfo, "fileOffset">; begin: number; end: number }[] = [];
  for (const [name, raw] of Object.entries(header)) {
    if (name === "__metadata__") {
      if (!isPlainObject(raw)) throw new CheckpointError(path, "__metadata__ must be an object of strings");
      for (const [k, v] of Object.entries(raw)) {
        if (typeof v !== "string") {
          throw new CheckpointError(
            path,
            `__metadata__ value for "${k}" must be a string, got ${JSON.stringify(v)}`,
          );
        }
      }
      metadata = raw as Record<string, string>;
      continue;
    }
    entries.push({ name, ...parseEntry(path, name, raw) });
  }

  checkTiling(path, entries, fileSize - 8 - headerLen, fileSize, headerLen);

  const dataStart = 8 + headerLen;
  const infos = new Map<string, TensorInfo>();
  for (const e of entries) infos.set(e.name, { ...e.info, fileOffset: dataStart + e.begin });
  return new SafetensorsReader(path, fd, infos, metadata);
}

/** Tensors sorted by offset must cover [0, dataLen) exactly, with no gaps or overlaps. */
function checkTiling(
  path: string,
  entries: { name: string; begin: number; end: number }[],
  dataLen: number,
  fileSize: number,
  headerLen: number,
): void {
  entries.sort((a, b) => a.begin - b.begin || a.end - b.end);
  let cursor = 0;
  let prev: string | undefined;
  for (const e of entries) {
    if (e.begin !== cursor) {
      const span = `data_offsets [${e.begin}, ${e.end}]`;
      if (e.end > dataLen) {
        throw new CheckpointError(path, `${span} out of range of the ${dataLen}-byte data section`, e.name);
      }
      if (e.begin < cursor) {
        throw new CheckpointError(
          path,
          `${span} overlapping tensor "${prev}" (which ends at ${cursor})`,
          e.name,
        );
      }
      const after =
        prev === undefined ? "the start of the data section" : `tensor "${prev}" (ends at ${cursor})`;
      throw new CheckpointError(
        path,
        `gap of ${e.begin - cursor} bytes between ${after} and ${span}`,
        e.name,
      );
    }
    cursor = e.end;
    prev = e.name;
  }
  if (cursor > dataLen) {
    throw new CheckpointError(
      path,
      `truncated: header describes ${cursor} data bytes so the file should be ${8 + headerLen + cursor} bytes, but it is ${fileSize} bytes (tensor "${prev}" out of range)`,
    );
  }
  if (cursor < dataLen) {
    throw new CheckpointError(
      path,
      `gap: ${dataLen - cursor} trailing bytes after the last tensor are not covered by any tensor (data section ${dataLen} bytes, tensors end at ${cursor})`,
    );
  }
}

class SafetensorsReader implements SafetensorsFile {
  private fd: number | undefined;
  constructor(
    readonly path: string,
    fd: number,
    private readonly infos: Map<string, TensorInfo>,
    readonly metadata: Record<string, string>,
  ) {
    this.fd = fd;
  }

  names(): string[] {
    return [...this.infos.keys()];
  }

  has(name: string): boolean {
    return this.infos.has(name);
  }

  info(name: string): TensorInfo {
    const info = this.infos.get(name);
    if (!info) throw new CheckpointError(this.path, "no such tensor in this file", name);
    return { ...info, shape: [...info.shape] };
  }

  read(name: string): Uint8Array {
    const info = this.info(name);
    if (this.fd === undefined) throw new CheckpointError(this.path, "read after close", name);
    // A fresh ArrayBuffer (not a pooled Buffer) keeps the bytes aligned for typed-array views.
    const out = new Uint8Array(info.byteLength);
    readFully(this.fd, this.path, out, info.fileOffset, `tensor "${name}"`);
    return out;
  }

  close(): void {
    if (this.fd !== undefined) fs.closeSync(this.fd);
    this.fd = undefined;
  }
}

/**
 * Write a safetensors file (tensors in the given order, header padded to 8 bytes
 * as the reference implementation does). Written to `path.tmp` then renamed so
 * a reader never sees a half-written file.
 */
export function writeSafetensors(
  path: string,
  tensors: Record<string, TensorToWrite>,
  metadata?: Record<string, string>,
): void {
  const header: Record<string, unknown> = {};
  if (metadata && Object.keys(metadata).length > 0) header.__metadata__ = metadata;
  let offset = 0;
  for (const [name, t] of Object.entries(tensors)) {
    if (name === "__metadata__") throw new CheckpointError(path, "tensor name __metadata__ is reserved");
    if (!isDtype(t.dtype)) throw new CheckpointError(path, `unknown dtype ${JSON.stringify(t.dtype)}`, name);
    const need = t.shape.reduce((a, d) => a * d, 1) * DTYPE_SIZES[t.dtype];
    if (need !== t.data.byteLength) {
      throw new CheckpointError(
        path,
        `data is ${t.data.byteLength} bytes but dtype ${t.dtype} shape [${t.shape.join(", ")}] needs ${need}`,
        name,
      );
    }
    header[name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + need] };
    offset += need;
  }
  let json = JSON.stringify(header);
  json += " ".repeat((8 - (Buffer.byteLength(json) % 8)) % 8);
  const headerBytes = Buffer.from(json, "utf8");
  const lenBuf = Buffer.alloc(8);
  lenBuf.writeBigUInt64LE(BigInt(headerBytes.byteLength));

  writeWhole(path, (fd) => {
    fs.writeSync(fd, lenBuf);
    fs.writeSync(fd, headerBytes);
    for (const t of Object.values(tensors)) {
      let done = 0;
      while (done < t.data.byteLength) done += fs.writeSync(fd, t.data, done, t.data.byteLength - done);
    }
  });
}
