// tsllm-run's generation: prompts from --input-ids / a JSONL file, checked against the engine's limits
// before anything runs, submitted together to the batch manager; each prompt's generated ids are one
// comma-separated line on stdout, in prompt order, written as the tokens come (the line of the earliest
// unfinished prompt streams; later ones follow when it ends). Text I/O layers on top of these ids.
import * as fs from "node:fs";
import { inputIdsOf, outputTokensOf } from "../serving/dataset.ts";
import {
  type BatchManager,
  failureText,
  type GenerationRequest,
  overMaxSeqLen,
  type SamplingOptions,
} from "../serving/types.ts";
import { deviceProblem } from "../text/utf8.ts";
import { parseIds } from "./common.ts";

export interface Prompt {
  ids: number[];
  maxNewTokens: number;
  /** Where the prompt came from, as messages name it: "--input-ids", "--input-ids (prompt 2)", "FILE:LINE". */
  where: string;
  /** What set maxNewTokens, as messages name it: "--max-new-tokens" (when absent) or "output_tokens". */
  newTokensFrom?: string;
}

export function readPrompts(o: { inputIds?: string[]; inputFile?: string; maxNewTokens: number }): Prompt[] {
  const prompts: Prompt[] = [];
  const inputIds = o.inputIds ?? [];
  inputIds.forEach((s, i) => {
    const ids = parseIds(s, "--input-ids");
    const where = inputIds.length > 1 ? `--input-ids (prompt ${i + 1})` : "--input-ids";
    prompts.push({ ids, maxNewTokens: o.maxNewTokens, where, newTokensFrom: "--max-new-tokens" });
  });
  if (o.inputFile) {
    const device = deviceProblem(o.inputFile);
    if (device) throw new Error(`--input-file ${o.inputFile}: ${device}`);
    let text: string;
    try {
      text = fs.readFileSync(o.inputFile, "utf8");
    } catch (e) {
      throw new Error(`--input-file ${o.inputFile}: cannot read (${(e as NodeJS.ErrnoException).code ?? e})`);
    }
    text.split("\n").forEach((line, i) => {
      if (!line.trim()) return;
      const where = `${o.inputFile}:${i + 1}`;
      let j: { input_ids?: unknown; output_tokens?: unknown };
      try {
        j = JSON.parse(line);
      } catch {
        throw new Error(`${where}: not valid JSON`);
      }
      const ids = inputIdsOf(j?.input_ids, where);
      // (Checked only when the line gives it: --max-new-tokens 0 without one asks for an empty line, as with --input-ids.)
      const own = j.output_tokens != null;
      const n = own ? outputTokensOf(j.output_tokens, where) : o.maxNewTokens;
      const newTokensFrom = own ? "output_tokens" : "--max-new-tokens";
      prompts.push({ ids, maxNewTokens: n, where, newTokensFrom });
    });
    if (prompts.length === inputIds.length)
      throw new Error(
        `--input-file ${o.inputFile}: no prompts (expected one JSON object per line: {"input_ids": [...]})`,
      );
  }
  if (prompts.length === 0)
    throw new Error("give --input-ids 1,2,3 (repeatable), --input-file FILE or --golden FILE");
  return prompts;
}

export interface GenerateIdsOptions {
  sampling: SamplingOptions;
  ignoreEos: boolean;
  stopTokenIds: number[];
  out: { write(s: string): unknown };
}

/** Runs every prompt; returns the generated ids per prompt (also written to o.out). */
export async function generateIds(
  bm: BatchManager,
  prompts: Prompt[],
  o: GenerateIdsOptions,
): Promise<number[][]> {
  const { maxSeqLen } = bm.limits;
  // All checked before the first submit, so that no prompt runs when a later one is refused.
  for (const p of prompts) {
    const tooLong = overMaxSeqLen(p.ids.length, p.maxNewTokens, maxSeqLen);
    if (tooLong) throw new Error(`${p.where}: ${tooLong}`);
  }
  const reqs: GenerationRequest[] = prompts.map((p) => ({
    promptIds: p.ids,
    maxNewTokens: p.maxNewTokens,
    sampling: o.sampling,
    ignoreEos: o.ignoreEos,
    stopTokenIds: o.stopTokenIds,
    tag: p.where,
  }));
  // --max-new-tokens 0 asks for nothing: an empty line, no request.
  const handles = reqs.map((r) => (r.maxNewTokens > 0 ? bm.submit(r) : null));
  const toks: number[][] = prompts.map(() => []);
  const finished = prompts.map(() => false);
  let cur = 0; // the prompt whose line is being written
  const write = (i: number, t: number) => o.out.write(toks[i].length === 1 ? `${t}` : `,${t}`);
  const advance = () => {
    while (cur < prompts.length && finished[cur]) {
      o.out.write("\n");
      cur++;
      if (cur < prompts.length) toks[cur].forEach((t, k) => o.out.write(k ? `,${t}` : `${t}`));
    }
  };
  const results = await Promise.all(
    handles.map(async (h, i) => {
      if (!h) {
        finished[i] = true;
        advance();
        return [];
      }
      for await (const ev of h) {
        toks[i].push(ev.tokenId);
        if (i === cur) write(i, ev.tokenId);
      }
      const r = await h.done;
      if (r.finishReason === "error") throw new Error(`${prompts[i].where}: ${failureText(r)}`);
      finished[i] = true;
      advance();
      return r.outputIds;
    }),
  );
  return results;
}
