// Streams an engine to disk: header first, then each weight materialised and written one at a time
// (host memory stays around the largest single weight). Everything goes to a temporary directory that
// is moved into place only when complete (output-dir.ts), so a failed or interrupted build leaves the
// old target as it was and nothing else behind.
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import type { Checkpoint } from "../checkpoint/checkpoint.ts";
import type { ModelFacts } from "../dsl/model.ts";
import { materializeWeight } from "../weights/materialize.ts";
import {
  alignUp,
  type BuildConfig,
  DATA_ALIGN,
  type EngineConfig,
  FORMAT_VERSION,
  MAGIC,
  PREAMBLE_BYTES,
} from "./format.ts";
import { buildHeader, isRandomStored, type RankProgram } from "./header.ts";
import { OutputDir, yieldToSignals } from "./output-dir.ts";

export interface WriteEngineOptions {
  outDir: string;
  /** Replace an output that is not a tsllm engine (output-dir.ts says what is never replaced). */
  force?: boolean;
  /** Paths the build reads; the output may not contain them. */
  inputs?: string[];
  ranks: RankProgram[];
  build: BuildConfig;
  model: Record<string, unknown>;
  facts: ModelFacts;
  checkpoint: Checkpoint | null;
  /** Extra files for the engine directory (report.json, report.html, tokenizer files). */
  extraFiles?: Record<string, string>;
  /** Recorded in config.json: the tokenizer files among extraFiles. */
  tokenizer?: EngineConfig["tokenizer"];
  /** Called after each weight with bytes written so far and the total. */
  onProgress?: (done: number, total: number, name: string) => void;
}

class HashingWriter {
  private hash = createHash("sha256");
  bytes = 0;
  constructor(private fd: number) {}
  write(buf: Uint8Array): void {
    let off = 0;
    while (off < buf.length) off += fs.writeSync(this.fd, buf, off, buf.length - off);
    this.hash.update(buf);
    this.bytes += buf.length;
  }
  padTo(n: number): void {
    if (n > this.bytes) this.write(new Uint8Array(n - this.bytes));
  }
  digest(): string {
    return this.hash.digest("hex");
  }
}

export async function writeEngine(o: WriteEngineOptions): Promise<EngineConfig> {
  const out = new OutputDir(o.outDir, { force: o.force, inputs: o.inputs });
  const tmp = out.tmp;
  try {
    const headers = o.ranks.map((r) => buildHeader(r, o.build));
    const total = headers.reduce((a, h) => a + h.weights.reduce((s, w) => s + w.nbytes, 0), 0);
    let done = 0;
    const ranks: EngineConfig["ranks"] = [];
    for (const [i, r] of o.ranks.entries()) {
      const header = headers[i];
      const file = `rank${r.rank}.engine`;
      const fd = fs.openSync(path.join(tmp, file), "w");
      try {
        const w = new HashingWriter(fd);
        const json = Buffer.from(JSON.stringify(header));
        const pre = Buffer.alloc(PREAMBLE_BYTES);
        pre.write(MAGIC, 0, "latin1");
        pre.writeUInt32LE(FORMAT_VERSION, 8);
        pre.writeUInt32LE(0, 12);
        pre.writeBigUInt64LE(BigInt(json.length), 16);
        w.write(pre);
        w.write(json);
        const dataOffset = alignUp(PREAMBLE_BYTES + json.length, DATA_ALIGN);
        w.padTo(dataOffset);
        for (const entry of header.weights) {
          const v = r.graph.values.get(entry.value)!;
          if (entry.random || isRandomStored(v, o.build)) continue;
          const bytes = materializeWeight(v, o.checkpoint);
          if (bytes.length !== entry.nbytes)
            throw new Error(`weight ${v.name}: ${bytes.length} bytes, header says ${entry.nbytes}`);
          w.padTo(dataOffset + entry.offset);
          w.write(bytes);
          done += bytes.length;
          o.onProgress?.(done, total, v.name);
          await yieldToSignals();
        }
        ranks.push({ file, bytes: w.bytes, sha256: w.digest() });
      } finally {
        fs.closeSync(fd);
      }
    }
    const config: EngineConfig = {
      format_version: FORMAT_VERSION,
      model: o.model,
      facts: o.facts,
      build: o.build,
      ranks,
      ...(o.tokenizer ? { tokenizer: o.tokenizer } : {}),
    };
    fs.writeFileSync(path.join(tmp, "config.json"), `${JSON.stringify(config, null, 2)}\n`);
    for (const [name, text] of Object.entries(o.extraFiles ?? {}))
      fs.writeFileSync(path.join(tmp, name), text);
    out.commit();
    return config;
  } finally {
    out.discard();
  }
}
