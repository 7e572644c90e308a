// The fusion report of a build: what each pass matched and where, and the figures of the graph before
// and after the passes (rank 0; every rank has the same structure). Written as report.json (schema
// below, read back by tsllm-inspect), report.html, and printed as a table by tsllm-compile.
import { z } from "zod";
import { arenaOf, naiveArena } from "../engine/arena.ts";
import type { BuildConfig } from "../engine/format.ts";
import type { Graph } from "../ir/types.ts";
import { drawLayer, graphFigures, nodeLayers, representativeLayer } from "./figures.ts";

export const REPORT_VERSION = 1;

const figures = z.object({
  ops: z.number(),
  launches: z.number(),
  launchesPerLayer: z.number(),
  layers: z.number(),
  layerOps: z.record(z.string(), z.number()),
  activations: z.number(),
  activationBytesPerToken: z.number(),
  trafficPerToken: z.number(),
  layerTrafficPerToken: z.number(),
});

const drawing = z.object({
  layer: z.number(),
  launches: z.number(),
  nodes: z.array(
    z.object({
      kind: z.enum(["op", "in", "out"]),
      op: z.string(),
      label: z.string(),
      detail: z.string(),
      fused: z.boolean(),
    }),
  ),
  edges: z.array(
    z.object({ from: z.number(), to: z.number(), bytesPerToken: z.number(), label: z.string() }),
  ),
});

export const PassRecord = z.object({
  name: z.string(),
  /** "ran": a pass that does not report matches (its count is null). */
  status: z.enum(["applied", "no-match", "ran", "disabled", "failed"]),
  matches: z.number().nullable(),
  /** Matches per pattern. */
  patterns: z.record(z.string(), z.number()),
  /** Where the matches are, scopes compressed (model.layers.{0..31}.self_attn). */
  where: z.array(z.string()),
  opsBefore: z.number(),
  opsAfter: z.number(),
  launchesBefore: z.number(),
  launchesAfter: z.number(),
  notes: z.array(z.string()),
  ms: z.number(),
});
export type PassRecord = z.infer<typeof PassRecord>;

export const FusionReport = z.object({
  version: z.literal(REPORT_VERSION),
  model: z.object({ numLayers: z.number(), numKvHeads: z.number(), headDim: z.number() }),
  build: z.object({
    sm: z.number(),
    tp: z.number(),
    dtype: z.string(),
    quant: z.string(),
    max_batch_size: z.number(),
    max_seq_len: z.number(),
    max_num_tokens: z.number(),
  }),
  passes: z.array(PassRecord),
  before: figures,
  after: figures,
  /** Activation bytes per token that no longer go to global memory and back (traffic before − after). */
  savedBytesPerToken: z.number(),
  savedLayerBytesPerToken: z.number(),
  arena: z.object({
    /** True when the memory-plan pass laid the arena out by liveness. */
    planned: z.boolean(),
    bytes: z.number(),
    /** Every activation of the final graph in its own slot. */
    naiveBytes: z.number(),
    /** The same for the graph before any pass. */
    unfusedNaiveBytes: z.number(),
  }),
  drawing: z.object({ before: drawing, after: drawing }),
});
export type FusionReport = z.infer<typeof FusionReport>;

export function buildReport(o: {
  before: Graph;
  after: Graph;
  build: BuildConfig;
  records: PassRecord[];
  /** All pipeline pass names in order, and those disabled. */
  passes: string[];
  disabled: string[];
}): FusionReport {
  const before = graphFigures(o.before);
  const after = graphFigures(o.after);
  const byName = new Map(o.records.map((r) => [r.name, r]));
  const passes = o.passes.map(
    (name): PassRecord =>
      byName.get(name) ?? {
        name,
        status: "disabled",
        matches: null,
        patterns: {},
        where: [],
        opsBefore: 0,
        opsAfter: 0,
        launchesBefore: 0,
        launchesAfter: 0,
        notes: o.disabled.includes(name) ? ["disabled (--disable-pass)"] : [],
        ms: 0,
      },
  );
  const layer = representativeLayer(nodeLayers(o.after));
  const b = o.build;
  return {
    version: REPORT_VERSION,
    model: {
      numLayers: o.after.meta.numLayers,
      numKvHeads: o.after.meta.numKvHeads,
      headDim: o.after.meta.headDim,
    },
    build: {
      sm: b.sm,
      tp: b.tp,
      dtype: b.dtype,
      quant: b.quant,
      max_batch_size: b.max_batch_size,
      max_seq_len: b.max_seq_len,
      max_num_tokens: b.max_num_tokens,
    },
    passes,
    before,
    after,
    savedBytesPerToken: before.trafficPerToken - after.trafficPerToken,
    savedLayerBytesPerToken: before.layerTrafficPerToken - after.layerTrafficPerToken,
    arena: {
      planned: o.after.meta.arena !== undefined,
      bytes: arenaOf(o.after).bytes,
      naiveBytes: naiveArena(o.after).bytes,
      unfusedNaiveBytes: naiveArena(o.before).bytes,
    },
    drawing: { before: drawLayer(o.before, layer), after: drawLayer(o.after, layer) },
  };
}

/** "model.layers.3.mlp" ×32 → "model.layers.{0..31}.mlp". */
export function compressScopes(scopes: string[], max = 6): string[] {
  const groups = new Map<string, number[]>();
  const order: string[] = [];
  for (const s of scopes) {
    const m = /^(.*?\.)(\d+)((?:\.|$).*)$/.exec(s);
    const key = m ? `${m[1]}\u0000${m[3]}` : s;
    if (!groups.has(key)) {
      groups.set(key, []);
      order.push(key);
    }
    if (m) groups.get(key)!.push(Number(m[2]));
  }
  const out = order.map((key) => {
    const nums = [...new Set(groups.get(key)!)].sort((a, b) => a - b);
    if (!key.includes("\u0000")) return key;
    const [pre, post] = key.split("\u0000");
    if (nums.length === 1) return `${pre}${nums[0]}${post}`;
    const contiguous = nums.every((n, i) => i === 0 || n === nums[i - 1] + 1);
    return `${pre}{${contiguous ? `${nums[0]}..${nums[nums.length - 1]}` : nums.join(",")}}${post}`;
  });
  return out.length > max ? [...out.slice(0, max), `… ${out.length - max} more`] : out;
}
