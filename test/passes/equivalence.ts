// The check every pass test makes: on both fixtures, the graph just before the pass (all earlier
// pipeline passes applied) and just after it give the same logits (≤ 1e-5) over the golden prompts'
// prefill and teacher-forced decode steps.
import { expect, it } from "vitest";
import type { PassLog } from "../../passes/pass.ts";
import type { Graph } from "../../src/ir/types.ts";
import {
  FIXTURES,
  fixture,
  goldenLogits,
  maxAbsDiff,
  passesBefore,
  runPasses,
  type Which,
} from "./helpers.ts";

export interface PassRun {
  which: Which;
  before: Graph;
  after: Graph;
  log: PassLog;
}

const cache = new Map<string, PassRun>();

/** The fixture's graph before and after `pass`, with the earlier pipeline passes applied first. */
export async function around(pass: string, which: Which, skip: string[] = []): Promise<PassRun> {
  const key = `${pass}/${which}/${skip.join(",")}`;
  let r = cache.get(key);
  if (!r) {
    const f = await fixture(which);
    const before = runPasses(
      f.graph,
      passesBefore(pass).filter((n) => !skip.includes(n)),
    ).graph;
    const { graph: after, logs } = runPasses(before, [pass]);
    r = { which, before, after, log: logs[pass] };
    cache.set(key, r);
  }
  return r;
}

export function itKeepsLogits(pass: string, skip: string[] = []): void {
  for (const which of FIXTURES)
    it(`tiny-${which}: same logits before and after ${pass} (≤ 1e-5)`, async () => {
      const f = await fixture(which);
      const r = await around(pass, which, skip);
      expect(r.log.failed).toBeUndefined();
      const d = maxAbsDiff(goldenLogits(f, r.before), goldenLogits(f, r.after));
      expect(d).toBeLessThanOrEqual(1e-5);
    });
}
