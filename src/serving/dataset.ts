// Benchmark datasets in trtllm-bench's JSON-lines form, one request per line:
//   {"task_id": 0, "input_ids": [1, 2, 3], "output_tokens": 128}
// as TensorRT-LLM's benchmarks/cpp/prepare_dataset.py prints it (extra fields such as "lora_request" are
// ignored; older versions name the ids "logits", which trtllm-bench also reads), or
// {"task_id": 0, "prompt": "text", "output_tokens": 128} when a tokenizer is given.
// tokenNormDist makes the synthetic "token-norm-dist" workload (normal input/output lengths, random ids).
import * as fs from "node:fs";
import { BOM_REFUSAL, deviceProblem, utf8Lines } from "../text/utf8.ts";
import { lowbias32 } from "../weights/random.ts";

export interface DatasetEntry {
  taskId: number | string;
  inputIds: number[];
  outputTokens: number;
  /** The line of the file it came from (readDataset), for later refusals of the entry (too long for the engine). */
  line?: number;
}

/** Text → token ids, for datasets of prompts (engineer "serve"'s tokenizers plug in here). */
export type Encode = (text: string) => number[];

export class DatasetError extends Error {
  override name = "DatasetError";
}

/** A JSON line's "input_ids": a non-empty list of token ids (tsllm-run --input-file lines have the same field). */
export function inputIdsOf(v: unknown, where: string, field = "input_ids"): number[] {
  if (!Array.isArray(v) || v.length === 0 || !v.every((t) => Number.isInteger(t) && t >= 0))
    throw new DatasetError(`${where}: "${field}" must be a non-empty list of token ids`);
  return v;
}

/** A JSON line's "output_tokens": an integer >= 1 (also tsllm-run --input-file's, where it may be absent). */
export function outputTokensOf(v: unknown, where: string): number {
  // A number as String writes it: JSON.stringify quoted 1e400 (read as Infinity) as "null".
  if (!Number.isInteger(v) || (v as number) < 1)
    throw new DatasetError(
      `${where}: "output_tokens" must be an integer >= 1, got ${typeof v === "number" ? String(v) : JSON.stringify(v)}`,
    );
  return v as number;
}

export function parseDatasetLine(line: string, where: string, encode?: Encode): DatasetEntry {
  let j: unknown;
  try {
    j = JSON.parse(line);
  } catch (e) {
    if (line.startsWith("\ufeff")) throw new DatasetError(`${where}: ${BOM_REFUSAL}`);
    throw new DatasetError(`${where}: not valid JSON (${(e as Error).message})`);
  }
  if (typeof j !== "object" || j === null || Array.isArray(j))
    throw new DatasetError(`${where}: not a JSON object`);
  const o = j as Record<string, unknown>;
  const out = outputTokensOf(o.output_tokens, where);
  let ids: number[];
  // "logits" is the ids' name in the lines older prepare_dataset.py versions print, and trtllm-bench still reads
  // it where "input_ids" is absent, before it falls back to "prompt": such a dataset was refused here.
  const field = o.input_ids === undefined && o.logits !== undefined ? "logits" : "input_ids";
  if (o[field] !== undefined) ids = inputIdsOf(o[field], where, field);
  else if (typeof o.prompt === "string") {
    if (!encode)
      throw new DatasetError(
        `${where}: a "prompt" line needs a tokenizer; this engine has none (give "input_ids")`,
      );
    ids = encode(o.prompt);
    if (ids.length === 0) throw new DatasetError(`${where}: "prompt" encodes to no tokens`);
  } else throw new DatasetError(`${where}: needs "input_ids" (token ids) or "prompt" (text)`);
  const taskId = o.task_id;
  return {
    taskId: typeof taskId === "number" || typeof taskId === "string" ? taskId : where,
    inputIds: ids,
    outputTokens: out,
  };
}

/** The dataset path that means standard input: trtllm-bench reads the dataset from stdin when --dataset is not
 *  given ("Pass in a dataset file for parsing instead of stdin."), and "-" says so explicitly. */
export const STDIN_DATASET = "-";

/** How errors and reports name a dataset: its path, or <stdin> (as Python names that stream). */
export function datasetName(file: string): string {
  return file === STDIN_DATASET ? "<stdin>" : file;
}

/** Reads a JSON-lines dataset (blank lines skipped), "-" from stdin; every error names the file (or <stdin>) and
 *  line. */
export function readDataset(file: string, o: { encode?: Encode; vocabSize?: number } = {}): DatasetEntry[] {
  const name = datasetName(file);
  const device = file === STDIN_DATASET ? undefined : deviceProblem(file);
  if (device) throw new DatasetError(`${name}: ${device}`);
  let buf: Buffer;
  try {
    buf = file === STDIN_DATASET ? fs.readFileSync(0) : fs.readFileSync(file);
  } catch (e) {
    throw new DatasetError(
      `${name}: cannot read the dataset (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`,
    );
  }
  const entries: DatasetEntry[] = [];
  // Line by line: a dataset past ~512 MB (prepare-dataset's 35,000 requests of 4,096 tokens) was refused as one
  // string, "Cannot create a string longer than 0x1fffffe8 characters", naming no file.
  let n = 0;
  for (const line of utf8Lines(buf)) {
    const where = `${name}:${++n}`;
    // trtllm-bench (Python's UTF-8 open) refuses such a file; read "utf8" the bytes became U+FFFD in the prompt.
    if (line === null) throw new DatasetError(`${where}: not UTF-8 text`);
    if (!line.trim()) continue;
    const e = parseDatasetLine(line, where, o.encode);
    if (o.vocabSize !== undefined) {
      const bad = e.inputIds.find((t) => t >= o.vocabSize!);
      if (bad !== undefined)
        throw new DatasetError(
          `${where}: token id ${bad} outside the engine's vocabulary (0..${o.vocabSize - 1})`,
        );
    }
    entries.push({ ...e, line: n });
  }
  if (entries.length === 0) throw new DatasetError(`${name}: no requests in the dataset`);
  return entries;
}

export function formatDatasetLine(e: DatasetEntry): string {
  return JSON.stringify({ task_id: e.taskId, input_ids: e.inputIds, output_tokens: e.outputTokens });
}

/**
 * The dataset's lines in parts of about 1 MB. One string of them all was refused past V8's longest string (2^29 - 24
 * characters, ~512 MB: 35,000 requests of 4,096 tokens) with "Invalid string length", and nothing written.
 */
export function datasetText(entries: Iterable<DatasetEntry>, partChars = 1 << 20): string[] {
  return [...datasetParts(entries, partChars)];
}

/**
 * datasetText's parts one at a time, the entries drawn as they are needed: prepare-dataset writes a dataset of any
 * size in the memory of one part (holding every entry first ran V8 out of heap, exit 134, for large ones).
 */
export function* datasetParts(entries: Iterable<DatasetEntry>, partChars = 1 << 20): Generator<string> {
  let part = "";
  for (const e of entries) {
    part += `${formatDatasetLine(e)}\n`;
    if (part.length >= partChars) {
      yield part;
      part = "";
    }
  }
  if (part) yield part;
}

const DATASET_KEYS = Object.keys(
  JSON.parse(formatDatasetLine({ taskId: 0, inputIds: [], outputTokens: 0 })),
).join(",");

/** Whether a file's text is a dataset as formatDatasetLine writes it (its first line, keys in that order): one
 *  that `prepare-dataset --output` may replace without --force. */
export function isDatasetText(text: string): boolean {
  const first = text.split("\n", 1)[0]!;
  try {
    const j = JSON.parse(first);
    return typeof j === "object" && j !== null && Object.keys(j).join(",") === DATASET_KEYS;
  } catch {
    return false;
  }
}

export interface TokenNormDist {
  numRequests: number;
  inputMean: number;
  inputStdev: number;
  outputMean: number;
  outputStdev: number;
  seed: number;
  vocabSize: number;
}

/** Seeded uniform [0, 1) stream (counter-based, so a seed always gives the same dataset). */
function uniforms(seed: number): () => number {
  let i = 0;
  const base = lowbias32(seed >>> 0);
  return () => (lowbias32((base ^ Math.imul(++i, 0x9e3779b9)) >>> 0) + 0.5) / 2 ** 32;
}

/**
 * prepare_dataset.py's token-norm-dist: lengths ~ Normal(mean, stdev) rounded up and clamped to >= 1,
 * token ids uniform over the vocabulary.
 */
export function tokenNormDist(o: TokenNormDist): DatasetEntry[] {
  return [...tokenNormDistEntries(o)];
}

/** tokenNormDist's entries one at a time (prepare-dataset's: see datasetParts). */
export function* tokenNormDistEntries(o: TokenNormDist): Generator<DatasetEntry> {
  const u = uniforms(o.seed);
  // Rounded up, as TensorRT-LLM's get_norm_dist_lengths does (max(1, math.ceil(x))): Math.round made lengths
  // 0.5 token shorter on average than trtllm-bench's for the same --input-mean / --output-mean.
  const length = (x: number) => Math.max(1, Math.ceil(x));
  const normal = (mean: number, stdev: number) => {
    if (stdev === 0) return length(mean);
    const z = Math.sqrt(-2 * Math.log(u())) * Math.cos(2 * Math.PI * u());
    return length(mean + stdev * z);
  };
  for (let taskId = 0; taskId < o.numRequests; taskId++) {
    const inLen = normal(o.inputMean, o.inputStdev);
    const outLen = normal(o.outputMean, o.outputStdev);
    yield {
      taskId,
      inputIds: Array.from({ length: inLen }, () => Math.min(o.vocabSize - 1, Math.floor(u() * o.vocabSize))),
      outputTokens: outLen,
    };
  }
}
