// What a pass is: a named Graph → Graph function that gets its context as an argument (tinygrad's
// graph_rewrite(sink, pm, ctx) style): the build being compiled and the log the fusion report reads.
// No ambient state: whoever runs a pass hands it a fresh context (passes/run.ts does, per pass).
import type { BuildConfig } from "../src/engine/format.ts";
import type { Graph } from "../src/ir/types.ts";

/** What one pass matched where, and notes for the report. */
export class PassLog {
  readonly matches: { pattern: string; where: string }[] = [];
  readonly notes: string[] = [];
  /** Set by passes that record their matches here (a pass that does not leaves the count unknown). */
  reports = false;
  /** Set when the pass gave up and returned its input unchanged. */
  failed?: string;

  /** A line for the report (deduplicated). Safe to call from a pattern's match(): it touches no graph. */
  note(msg: string): void {
    if (!this.notes.includes(msg)) this.notes.push(msg);
  }

  match(pattern: string, where: string): void {
    this.matches.push({ pattern, where });
  }
}

export interface PassContext {
  readonly build: BuildConfig;
  readonly log: PassLog;
}

export function passContext(build: BuildConfig, log = new PassLog()): PassContext {
  return { build, log };
}

export interface Pass {
  name: string;
  /** Graph → Graph; must not mutate its input. */
  run(g: Graph, ctx: PassContext): Graph;
}
