// Checks of a run's inputs against the engine, made before any work: a request that cannot finish is
// refused up front with the numbers, never partway through generation.
import type { EngineConfig } from "../engine/format.ts";
import { overMaxSeqLen } from "../serving/types.ts";

/**
 * Each prompt's ids are in the vocabulary and prompt + its max new tokens fits in max_seq_len (the runtime's
 * --max-seq-len when given, else the build's). Messages name the prompt by `where` (the flag or the file line)
 * and its new-token count by `newTokensFrom` (--max-new-tokens unless a file line gave output_tokens).
 */
export function checkPromptsFit(
  prompts: readonly { ids: readonly number[]; maxNewTokens: number; where: string; newTokensFrom?: string }[],
  config: EngineConfig,
  maxSeqLen?: number,
): void {
  const max_seq_len = maxSeqLen ?? config.build.max_seq_len;
  const vocab = config.facts.vocabSize;
  for (const { ids, maxNewTokens, where, newTokensFrom = "--max-new-tokens" } of prompts) {
    if (ids.length === 0) throw new Error(`${where}: empty prompt`);
    checkInVocab(ids, where, vocab);
    const tooLong = overMaxSeqLen(ids.length, maxNewTokens, max_seq_len, newTokensFrom);
    if (tooLong) throw new Error(`${where}: ${tooLong}`);
  }
}

/** --stop-token-ids: an id outside the vocabulary can never be sampled, so the flag would do nothing. */
export function checkStopIds(ids: readonly number[], config: EngineConfig): void {
  checkInVocab(ids, "--stop-token-ids", config.facts.vocabSize);
}

function checkInVocab(ids: readonly number[], where: string, vocab: number): void {
  const bad = ids.find((t) => t >= vocab);
  if (bad !== undefined)
    throw new Error(`${where}: token id ${bad} is outside the vocabulary (allowed: 0..${vocab - 1})`);
}
