// Batched generation over any executor: prefill all prompts in one packed step, then decode them
// together one token per step.
import { type SamplingParams, sampleToken } from "./sampling.ts";
import { seedU64 } from "./seed.ts";
import type { Executor } from "./types.ts";

export interface GenerateOptions extends SamplingParams {
  maxNewTokens: number;
  eosTokenIds?: number[];
}

export function generate(
  ex: Executor,
  prompts: number[][],
  o: Partial<GenerateOptions> & { maxNewTokens: number },
): number[][] {
  const p: SamplingParams = {
    temperature: o.temperature ?? 0,
    topK: o.topK ?? 0,
    topP: o.topP ?? 1,
    seed: o.seed ?? 0,
  };
  const outs: number[][] = prompts.map(() => []);
  const done = prompts.map(() => false);
  let logits = ex.step(prompts.map((tokens, i) => ({ seqId: i, tokens, logits: "last" as const })));
  for (let step = 0; step < o.maxNewTokens; step++) {
    const next: { seqId: number; tokens: number[]; logits: "last" }[] = [];
    prompts.forEach((_, i) => {
      if (done[i]) return;
      const tok = sampleToken(logits.get(i)![0], { ...p, seed: seedU64(p.seed, i * 1000003) }, step);
      outs[i].push(tok);
      if (o.eosTokenIds?.includes(tok)) done[i] = true;
      else next.push({ seqId: i, tokens: [tok], logits: "last" });
    });
    if (step === o.maxNewTokens - 1 || next.length === 0) break;
    logits = ex.step(next);
  }
  prompts.forEach((_, i) => ex.release(i));
  return outs;
}
