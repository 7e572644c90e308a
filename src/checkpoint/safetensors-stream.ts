// Streaming safetensors writer: the header is written first from names/dtypes/shapes, then each
// tensor is produced and written one at a time, so multi-GB checkpoints never sit in memory.
import * as fs from "node:fs";
import { writeWhole } from "../fs-atomic.ts";
import { type Dtype, dtypeSize } from "./dtype.ts";

export interface StreamEntry {
  name: string;
  dtype: Dtype;
  shape: number[];
}

export function writeSafetensorsStreaming(
  path: string,
  entries: StreamEntry[],
  produce: (e: StreamEntry) => Uint8Array,
  metadata: Record<string, string> = {},
): number {
  const header: Record<string, unknown> = { __metadata__: metadata };
  let off = 0;
  for (const e of entries) {
    const n = e.shape.reduce((a, b) => a * b, 1) * dtypeSize(e.dtype);
    header[e.name] = { dtype: e.dtype, shape: e.shape, data_offsets: [off, off + n] };
    off += n;
  }
  let json = JSON.stringify(header);
  json += " ".repeat((8 - (json.length % 8)) % 8);
  writeWhole(path, (fd) => {
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(Buffer.byteLength(json)));
    fs.writeSync(fd, len);
    fs.writeSync(fd, json);
    for (const e of entries) {
      const bytes = produce(e);
      const want = e.shape.reduce((a, b) => a * b, 1) * dtypeSize(e.dtype);
      if (bytes.length !== want)
        throw new Error(`${path}: tensor "${e.name}" produced ${bytes.length} bytes, expected ${want}`);
      let w = 0;
      while (w < bytes.length) w += fs.writeSync(fd, bytes, w, bytes.length - w);
    }
  });
  return off;
}
