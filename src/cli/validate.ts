// Checks of a run's inputs against the engine, made before any work: a request that cannot finish is
// refused up front with the numbers, never partway through generation.
import type { EngineConfig } from "../engine/format.ts";

/**
 * Each prompt's ids are in the vocabulary and prompt + max_new_tokens fits in max_seq_len (the runtime's
 * --max-seq-len when given, else the build's). maxNewTokens: one for all prompts or one per prompt.
 */
export function checkPromptsFit(
  prompts: number[][],
  maxNewTokens: number | number[],
  config: EngineConfig,
  maxSeqLen?: number,
): void {
  const max_seq_len = maxSeqLen ?? config.build.max_seq_len;
  const vocab = config.facts.vocabSize;
  prompts.forEach((p, i) => {
    const newTokens = typeof maxNewTokens === "number" ? maxNewTokens : maxNewTokens[i];
    const which = prompts.length > 1 ? ` (prompt ${i + 1})` : "";
    if (p.length === 0) throw new Error(`--input-ids${which}: empty prompt`);
    const bad = p.find((t) => t >= vocab);
    if (bad !== undefined)
      throw new Error(
        `--input-ids${which}: token id ${bad} is outside the vocabulary (allowed: 0..${vocab - 1})`,
      );
    if (p.length + newTokens > max_seq_len)
      throw new Error(
        `--input-ids${which}: ${p.length} prompt tokens + --max-new-tokens ${newTokens} = ${p.length + newTokens}, over the engine's max_seq_len ${max_seq_len} (allowed: prompt + new tokens ≤ ${max_seq_len})`,
      );
  });
}
