// The check every pass test makes: on both fixtures, the graph just before the pass (all earlier
// pipeline passes applied) and just after it give the same logits (≤ 1e-6) over the golden prompts'
// prefill and teacher-forced decode steps. Measured: 0 for most passes (same arithmetic in the same
// order); 2.68e-7 gate-up-fusion (tiny-llama), 2.38e-7 epilogue-fusion (tiny-gptj).
import { expect, it } from "vitest";
import type { PassLog } from "../../passes/pass.ts";
import type { Graph } from "../../src/ir/types.ts";
import {
  FIXTURES,
  fixture,
  goldenLogits,
  MEMOISE,
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
  let r = MEMOISE ? cache.get(key) : undefined; // see MEMOISE
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

/**
 * What `pass` does to a fixture's graph (earlier pipeline passes applied), asserted before any logits
 * are compared — an equivalence test over a graph the pass left alone would compare it with itself.
 *   number          it applies: that many matches are recorded and the node list changes;
 *   { none }        it does not apply there (the string says why): no match, graph identical, and so
 *                   no logits test;
 *   { values }      no node is rewritten, only the value table shrinks (why); the logits are compared,
 *                   as the executor loads weights through that table;
 *   { meta }        no node or value changes, only graph.meta gains the key named (why); the reference
 *                   executor reads no meta, so the pass's own tests check what it wrote.
 */
export type Effect = number | { none: string } | { values: string } | { meta: string; key: string };

function fingerprint(g: Graph) {
  return {
    nodes: JSON.stringify(g.nodes),
    values: JSON.stringify([...g.values]),
    meta: JSON.stringify(g.meta),
  };
}

export function itKeepsLogits(pass: string, effect: Record<Which, Effect>, skip: string[] = []): void {
  const after = skip.length ? ` (without ${skip.join(", ")})` : "";
  for (const which of FIXTURES) {
    const e = effect[which];
    if (typeof e === "object" && "none" in e) {
      it(`tiny-${which}${after}: ${pass} does not apply — ${e.none}`, async () => {
        const r = await around(pass, which, skip);
        expect(r.log.failed).toBeUndefined();
        expect(r.log.matches).toHaveLength(0);
        expect(fingerprint(r.after)).toEqual(fingerprint(r.before));
      });
      continue;
    }
    const what = typeof e === "number" ? `${e} rewrites` : "values" in e ? e.values : e.meta;
    it(`tiny-${which}${after}: ${pass} (${what}) keeps the logits (≤ 1e-6)`, async () => {
      const f = await fixture(which);
      const r = await around(pass, which, skip);
      expect(r.log.failed).toBeUndefined();
      const [b, a] = [fingerprint(r.before), fingerprint(r.after)];
      if (typeof e === "number") {
        expect(r.log.matches).toHaveLength(e);
        expect(a.nodes).not.toEqual(b.nodes);
      } else {
        expect(a.nodes).toEqual(b.nodes);
        if ("values" in e) expect(r.after.values.size).toBeLessThan(r.before.values.size);
        else {
          expect(a.values).toEqual(b.values);
          expect(r.before.meta[e.key as keyof Graph["meta"]]).toBeUndefined();
          expect(r.after.meta[e.key as keyof Graph["meta"]]).toBeDefined();
          return;
        }
      }
      const d = maxAbsDiff(goldenLogits(f, r.before), goldenLogits(f, r.after));
      console.log(`tiny-${which}${after} ${pass}: max |Δlogit| ${d.toExponential(2)}`);
      expect(d).toBeLessThanOrEqual(1e-6);
    });
  }
}
