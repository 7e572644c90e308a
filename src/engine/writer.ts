// Writes an engine in one pass over the checkpoint: every checkpoint tensor is read once (ahead, in
// parallel, src/weights/prefetch.ts), every engine byte written once (large positional writes on
// libuv's thread pool, src/engine/rank-file.ts) and hashed meanwhile on worker threads; all ranks of a
// tp > 1 build are written in the same pass, each source tensor serving every rank's slice. Host memory
// stays bounded by HELD_BYTES plus the largest tensor. Everything goes to a temporary directory
// that is moved into place only when complete (output-dir.ts), so a failed or interrupted build leaves
// the old target as it was and nothing else behind.
import * as fs from "node:fs";
import * as path from "node:path";
import type { Checkpoint } from "../checkpoint/checkpoint.ts";
import type { ModelFacts } from "../dsl/model.ts";
import { namingWriteErrors } from "../fs-atomic.ts";
import type { Value } from "../ir/types.ts";
import { Fp8Maker, Fp8Pool } from "../quant/fp8-pool.ts";
import { materializeSegments, sourceRows } from "../weights/materialize.ts";
import { Prefetcher } from "../weights/prefetch.ts";
import { FileWriter } from "./file-writer.ts";
import {
  alignUp,
  type BuildConfig,
  DATA_ALIGN,
  type EngineConfig,
  EngineHeader,
  FORMAT_VERSION,
  MAGIC,
  PREAMBLE_BYTES,
} from "./format.ts";
import { HASH_CHUNK_BYTES } from "./hash.ts";
import { HashPool } from "./hash-pool.ts";
import { buildHeader, isRandomStored, type RankProgram } from "./header.ts";
import { OutputDir, yieldToSignals } from "./output-dir.ts";
import { RankFile } from "./rank-file.ts";

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
  /** Called as bytes reach the disk: bytes written so far (all ranks), the total, the weight being made. */
  onProgress?: (done: number, total: number, name: string) => void;
}

/** Checkpoint bytes read ahead of the weight being made: about this much (enough to keep reads queued). */
const READ_AHEAD_BYTES = 64 << 20;
/** Source bytes held in all (read ahead, or still to be written and hashed) and computed bytes in flight. */
const HELD_BYTES = 128 << 20;
/** Below this many weight bytes the writer hashes, writes and quantises without workers (a worker costs more to start). */
const WORKERS_FROM_BYTES = 64 << 20;

interface Step {
  file: RankFile;
  dataOffset: number;
  offset: number;
  nbytes: number;
  v: Value;
  sources: string[];
}

export async function writeEngine(o: WriteEngineOptions): Promise<EngineConfig> {
  const headers = o.ranks.map((r) => buildHeader(r, o.build));
  // The reader's own check, before anything is written: a header it would refuse (a model file's graph with no
  // attention, sizes past 2^53) made an engine that every tsllm-run refused at load.
  headers.forEach((h, i) => {
    const r = EngineHeader.safeParse(h);
    if (!r.success) {
      const issue = r.error.issues[0];
      throw new Error(
        `rank ${o.ranks[i].rank}: the engine header would be refused at load, at "${issue.path.join(".")}": ${issue.message}`,
      );
    }
  });
  const out = new OutputDir(o.outDir, { force: o.force, inputs: o.inputs });
  const tmp = out.tmp;
  const total = headers.reduce((a, h) => a + h.weights.reduce((s, w) => s + w.nbytes, 0), 0);
  const hashes = new HashPool(total >= WORKERS_FROM_BYTES ? undefined : 0);
  const writer = new FileWriter(total >= WORKERS_FROM_BYTES);
  const prefetch = o.checkpoint ? new Prefetcher(o.checkpoint) : null;
  // FP8 weights are quantised on every core while reads, writes and hashing go on, into buffers of the
  // prefetcher's pool (sources and outputs are at their peaks at different times).
  const fp8 =
    prefetch && o.build.quant === "fp8" && total >= WORKERS_FROM_BYTES
      ? new Fp8Maker(new Fp8Pool(), sourceRows, prefetch.pool)
      : null;
  let written = 0;
  let current = "";
  const files: RankFile[] = [];
  try {
    // Header of every rank first; then weights in lock step over the ranks (weight j of every rank, then
    // j + 1): the ranks share value ids, so each source tensor is read once for all of its slices.
    const perRank: Step[][] = o.ranks.map((r, i) => {
      const file = new RankFile(path.join(tmp, `rank${r.rank}.engine`), hashes, writer, (n) => {
        written += n;
        o.onProgress?.(Math.min(written, total), total, current);
      });
      files.push(file);
      const json = Buffer.from(JSON.stringify(headers[i]));
      const pre = Buffer.alloc(PREAMBLE_BYTES);
      pre.write(MAGIC, 0, "latin1");
      pre.writeUInt32LE(FORMAT_VERSION, 8);
      pre.writeUInt32LE(0, 12);
      pre.writeBigUInt64LE(BigInt(json.length), 16);
      file.push(pre);
      file.push(json);
      const dataOffset = alignUp(PREAMBLE_BYTES + json.length, DATA_ALIGN);
      file.padTo(dataOffset);
      return headers[i].weights.flatMap((entry) => {
        const v = r.graph.values.get(entry.value)!;
        if (entry.random || isRandomStored(v, o.build)) return [];
        const sources =
          v.recipe?.kind === "checkpoint" ? [...new Set(v.recipe.parts.map((p) => p.name))] : [];
        return [{ file, dataOffset, offset: entry.offset, nbytes: entry.nbytes, v, sources }];
      });
    });
    const steps: Step[] = [];
    for (let j = 0; j < Math.max(0, ...perRank.map((s) => s.length)); j++)
      for (const s of perRank) if (s[j]) steps.push(s[j]);
    const lastUse = new Map<string, number>();
    steps.forEach((s, i) => {
      for (const n of s.sources) lastUse.set(n, i);
    });

    const view = prefetch?.view() ?? null;
    let ahead = 0; // next step whose sources are not yet requested
    const inFlight = () => files.reduce((a, f) => a + f.inFlight, 0);
    for (let i = 0; i < steps.length; i++) {
      const s = steps[i];
      if (prefetch) {
        ahead = Math.max(ahead, i);
        while (ahead < steps.length && (ahead === i || prefetch.held < READ_AHEAD_BYTES)) {
          for (const n of steps[ahead].sources) prefetch.fetch(n);
          ahead++;
        }
        await prefetch.ready(s.sources);
      }
      current = s.v.name;
      const made = fp8 && view ? await fp8.make(s.v, view) : null;
      const pieces = made ? [made] : materializeSegments(s.v, view);
      const nbytes = pieces.reduce((a, p) => a + p.length, 0);
      if (nbytes !== s.nbytes)
        throw new Error(`weight ${s.v.name}: ${nbytes} bytes, header says ${s.nbytes}`);
      s.file.padTo(s.dataOffset + s.offset);
      for (const p of pieces) s.file.push(p, prefetch?.hold(p) ?? fp8?.hold(p));
      for (const n of s.sources) if (lastUse.get(n) === i) prefetch?.release(n);
      await yieldToSignals();
      // Wait while too much is held, as long as a write or hash can still release something. Bytes of a chunk
      // not yet complete are only hashed once later weights complete it: when only those are left, they are
      // copied out, so a large tensor's buffer (a 7B's embedding) is not held while the next one is read.
      while (inFlight() > HELD_BYTES || (prefetch?.held ?? 0) > HELD_BYTES) {
        if (!files.some((f) => f.busy)) {
          for (const f of files) f.detachChunk();
          break;
        }
        await Promise.race(files.filter((f) => f.busy).map((f) => f.settle()));
      }
    }
    const ranks: EngineConfig["ranks"] = [];
    for (const f of files) {
      const { bytes, sha256 } = await f.finish();
      ranks.push({ file: path.basename(f.path), bytes, hash: { chunk_bytes: HASH_CHUNK_BYTES, sha256 } });
    }
    const config: EngineConfig = {
      format_version: FORMAT_VERSION,
      model: o.model,
      facts: o.facts,
      build: o.build,
      ranks,
      ...(o.tokenizer ? { tokenizer: o.tokenizer } : {}),
    };
    const texts: Record<string, string> = {
      "config.json": `${JSON.stringify(config, null, 2)}\n`,
      ...o.extraFiles,
    };
    for (const [name, text] of Object.entries(texts)) {
      const file = path.join(tmp, name);
      namingWriteErrors(file, () => fs.writeFileSync(file, text));
    }
    out.commit();
    return config;
  } catch (e) {
    await Promise.all(files.map((f) => f.abort()));
    throw e;
  } finally {
    out.discard();
    await Promise.all([prefetch?.close(), hashes.close(), writer.close(), fp8?.close()]);
  }
}
