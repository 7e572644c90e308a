// Where a CUDA graph's time goes, from a kernel timeline written by native/tools/timeline.cc (CUPTI):
//   CUDA_INJECTION64_PATH=$PWD/native/build/libtsllm_timeline.so TSLLM_TIMELINE=/tmp/tl.jsonl <program>
//   npx tsx scripts/timeline.ts /tmp/tl.jsonl [--graph ID] [--skip N] [--nodes N] [--json FILE]
//
// It takes the graph launched most often (a decode step replayed by `tsllm-bench latency`), or --graph, and for
// each of its launches lays the kernels out by start time. The launch's wall time (first start to last end) is cut
// into pieces that add up exactly: for each kernel, its "own" time, the part of it that no earlier kernel of the
// launch covers (under PDL a kernel starts while its predecessor runs: that overlap is not its own), and the idle
// "gap" before it, when nothing of the launch ran. Per kernel name it prints the medians over launches of those
// and of the kernel's whole duration, so the boundary costs the graph profiles only infer by subtraction (kernels-
// notes "Known limitations") are read directly, and the sums by kind of kernel (linear, attention, other: the
// profile of a step issue #11 asks for). When the kernels repeat with a period (a model's layers: the same
// names and grids, layer after layer), it also prints one layer, place by place, with medians over layers and
// launches, and the nodes outside the layers apart. Between launches: the GPU's idle time from one launch's last
// kernel to the next one's first, and the launch latency, the host's cudaGraphLaunch call to the launch's first
// kernel, over the launches whose call came when the GPU had finished all earlier work (any graph's, or outside
// graphs: the GPU idle, waiting on the host). A launch called while earlier work still ran is only counted: the
// host was ahead of the GPU (`tsllm-bench latency` queues launches far ahead), so its call-to-kernel time is the
// queue's lead, not a latency, and the host is not the bottleneck.
import * as fs from "node:fs";
import { pathToFileURL } from "node:url";

export interface TimelineRecord {
  kind: "kernel" | "memcpy" | "memset" | "runtime";
  start: number;
  end: number;
  corr: number;
  graph?: number;
  node?: number;
  name?: string;
  grid?: number[];
  block?: number[];
}

/** Parses the JSON lines; a line that is not a record is refused with its number. */
export function parseTimeline(text: string, where = "timeline"): TimelineRecord[] {
  const out: TimelineRecord[] = [];
  const lines = text.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!.trim();
    if (line === "") continue;
    let r: unknown;
    try {
      r = JSON.parse(line);
    } catch {
      throw new Error(`${where}:${i + 1}: not JSON (a line cut short by a killed run?)`);
    }
    const o = r as Partial<TimelineRecord>;
    if (
      typeof o !== "object" ||
      o === null ||
      !["kernel", "memcpy", "memset", "runtime"].includes(o.kind as string) ||
      typeof o.start !== "number" ||
      typeof o.end !== "number" ||
      typeof o.corr !== "number" ||
      o.end < o.start
    )
      throw new Error(`${where}:${i + 1}: not a timeline record (kind, start <= end, corr)`);
    out.push(o as TimelineRecord);
  }
  return out;
}

/** A kernel's place in one launch: start-ordered, with its own time and the idle gap before it (ns). */
export interface Placed {
  rec: TimelineRecord;
  own: number;
  gap: number;
  /** Time it ran beside earlier kernels of the launch (PDL prologues, or concurrent branches). */
  overlap: number;
}

export interface Launch {
  corr: number;
  start: number;
  end: number;
  kernels: Placed[];
}

/**
 * Lays out one launch's device records (kernels, copies, sets): sorted by start, each one's own time is the part
 * past everything before it, and its gap the idle time before it, so Σ own + Σ gap = end - start exactly.
 */
export function placeLaunch(recs: TimelineRecord[]): Launch {
  if (recs.length === 0) throw new Error("placeLaunch: no records");
  const sorted = [...recs].sort((a, b) => a.start - b.start || a.end - b.end);
  let covered = sorted[0]!.start;
  const kernels: Placed[] = sorted.map((rec) => {
    const gap = Math.max(0, rec.start - covered);
    const own = Math.max(0, rec.end - Math.max(rec.start, covered));
    const overlap = Math.max(0, Math.min(rec.end, covered) - rec.start);
    covered = Math.max(covered, rec.end);
    return { rec, own, gap, overlap };
  });
  return { corr: sorted[0]!.corr, start: sorted[0]!.start, end: covered, kernels };
}

/** The launches of graph `graph` (each cudaGraphLaunch's device records share its correlation id), in time order. */
export function launchesOf(recs: TimelineRecord[], graph: number): Launch[] {
  const byCorr = new Map<number, TimelineRecord[]>();
  for (const r of recs) {
    if (r.graph !== graph) continue; // (runtime records have no graph)
    const list = byCorr.get(r.corr);
    if (list) list.push(r);
    else byCorr.set(r.corr, [r]);
  }
  return [...byCorr.values()].map(placeLaunch).sort((a, b) => a.start - b.start);
}

/** The graph launched most often (most correlation ids), ties to the one with more kernels. */
export function busiestGraph(recs: TimelineRecord[]): number | undefined {
  const corrs = new Map<number, Set<number>>();
  const kernels = new Map<number, number>();
  for (const r of recs) {
    if (r.kind !== "kernel" || !r.graph) continue;
    let s = corrs.get(r.graph);
    if (!s) corrs.set(r.graph, (s = new Set()));
    s.add(r.corr);
    kernels.set(r.graph, (kernels.get(r.graph) ?? 0) + 1);
  }
  let best: number | undefined;
  for (const [g, s] of corrs) {
    if (
      best === undefined ||
      s.size > corrs.get(best)!.size ||
      (s.size === corrs.get(best)!.size && kernels.get(g)! > kernels.get(best)!)
    )
      best = g;
  }
  return best;
}

export const median = (xs: number[]): number => {
  if (xs.length === 0) return Number.NaN;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};

/** A kernel's name for grouping and printing: no namespaces, no parameter list (template arguments kept). */
export function shortName(rec: TimelineRecord): string {
  if (rec.kind !== "kernel") return rec.kind;
  const full = rec.name ?? "?";
  // A step's few dozen kernels repeat in every launch: each full name is shortened once.
  let short = shortNames.get(full);
  if (short === undefined) shortNames.set(full, (short = shorten(full)));
  return short;
}
const shortNames = new Map<string, string>();

function shorten(full: string): string {
  let n = full;
  // Parameters: the last top-level "(...)" at the end.
  if (n.endsWith(")")) {
    let depth = 0;
    for (let i = n.length - 1; i >= 0; i--) {
      const c = n[i];
      if (c === ")") depth++;
      else if (c === "(") depth--;
      if (depth === 0) {
        n = n.slice(0, i);
        break;
      }
    }
  }
  return n
    .replace(/\(anonymous namespace\)::/g, "")
    .replace(/\b[A-Za-z_][A-Za-z_0-9]*::/g, "")
    .replace(/^void /, "");
}

/** The kind of work a kernel does, by its name: cuBLASLt's and our GEMMs / GEMVs, attention, or anything else. */
export type Category = "linear" | "attention" | "other";
// Our attention node's kernels (native/src/kernels/attention_*.cu, rope_cache.cu: RoPE and the cache write belong
// to the node) and linears whose names say neither gemm nor gemv.
const OUR_ATTENTION = /^(context|fp8_context|decode|decode_fast|decode_mma|decode_reduce|rope_cache)_kernel$/;
const OUR_LINEAR = /^(int_mma_a|moe_grouped)_kernel$/;
export function categoryOf(name: string): Category {
  const base = name.replace(/<.*$/, "");
  if (OUR_ATTENTION.test(base) || /attn|attention|fmha|flash/i.test(base)) return "attention";
  if (OUR_LINEAR.test(base) || /gemm|gemv|xmma|cutlass|nvjet|matmul/i.test(base)) return "linear";
  return "other";
}

export interface NameRow {
  name: string;
  /** Kernels of this name per launch. */
  count: number;
  /** Medians over launches of the per-launch sums (ns). */
  own: number;
  gap: number;
  overlap: number;
  dur: number;
}

export interface Summary {
  graph: number;
  launches: number;
  used: number;
  kernelsPerLaunch: number;
  wall: number;
  own: number;
  gap: number;
  /** Medians (ns) between consecutive launches: the GPU idle from one's last end to the next's first start. */
  between: number;
  /**
   * Median (ns) from the host's cudaGraphLaunch call start to the launch's first kernel, over the used launches
   * whose call started when the GPU had finished every device record (kernel, copy, memset, of any graph or none)
   * that started before the launch: the launch latency. undefined when no launch found the GPU idle.
   */
  launchToFirst: number | undefined;
  /** How many launches launchToFirst is the median of. */
  launchIdleCount: number;
  /**
   * Used launches whose host call started while earlier device work still ran: the host ahead of the GPU,
   * queueing, so their call-to-kernel time is the queue's lead and is left out of launchToFirst.
   */
  launchedAhead: number;
  /** Used launches with a matching runtime cudaGraphLaunch record at all (idle + ahead). */
  launchesWithCall: number;
  byName: NameRow[];
  /** Medians over launches of the own time of each category's kernels (ns); with the gaps they make the wall. */
  categories: Record<Category, number>;
  /** The first launch used, node by node (start order). */
  nodes: { name: string; start: number; dur: number; own: number; gap: number; overlap: number }[];
  /** The repeated block of kernels (a model's layers), when there is one; see findLayers. */
  layers?: { start: number; period: number; repeats: number; slots: SlotRow[]; outside: SlotRow[] };
}

/** One place in a layer (or one node outside the layers): medians (ns) over launches and layers. */
export interface SlotRow {
  /** The node's index in the launch (outside the layers) or its place in the layer. */
  at: number;
  name: string;
  grid: string;
  own: number;
  gap: number;
  overlap: number;
  dur: number;
}

/** A kernel's key for finding layers: its name and grid (one template can serve several linears). */
const keyOf = (rec: TimelineRecord) => `${shortName(rec)} ${rec.grid ? `[${rec.grid.join(",")}]` : ""}`;

/**
 * The layers of a launch: the smallest period P such that the node sequence (name and grid) repeats over a stretch
 * covering at least half the launch. Returns where the stretch starts and how many whole periods it holds.
 */
export function findLayers(keys: string[]): { start: number; period: number; repeats: number } | undefined {
  const n = keys.length;
  for (let P = 1; 2 * P <= n; P++) {
    let best = 0;
    let bestAt = 0;
    let run = 0;
    for (let i = 0; i + P < n; i++) {
      run = keys[i] === keys[i + P] ? run + 1 : 0;
      if (run > best) {
        best = run;
        bestAt = i - run + 1;
      }
    }
    const repeats = Math.floor((best + P) / P);
    if (repeats >= 2 && 2 * repeats * P >= n) return { start: bestAt, period: P, repeats };
  }
  return undefined;
}

/** Summarises the launches of one graph after skipping the first `skip` (warm-up). */
export function summarize(recs: TimelineRecord[], o: { graph?: number; skip?: number } = {}): Summary {
  const graph = o.graph ?? busiestGraph(recs);
  if (graph === undefined) throw new Error("no kernel of any CUDA graph in the timeline");
  const all = launchesOf(recs, graph);
  if (all.length === 0) throw new Error(`graph ${graph}: no launch in the timeline`);
  const skip = Math.min(o.skip ?? 0, all.length - 1);
  const used = all.slice(skip);
  const per = (f: (l: Launch) => number) => median(used.map(f));
  const names = new Map<
    string,
    { count: number; own: number[]; gap: number[]; overlap: number[]; dur: number[] }
  >();
  for (const l of used) {
    const sums = new Map<string, { count: number; own: number; gap: number; overlap: number; dur: number }>();
    for (const k of l.kernels) {
      const n = shortName(k.rec);
      const s = sums.get(n) ?? { count: 0, own: 0, gap: 0, overlap: 0, dur: 0 };
      s.count++;
      s.own += k.own;
      s.gap += k.gap;
      s.overlap += k.overlap;
      s.dur += k.rec.end - k.rec.start;
      sums.set(n, s);
    }
    for (const [n, s] of sums) {
      const a = names.get(n) ?? { count: s.count, own: [], gap: [], overlap: [], dur: [] };
      a.count = Math.max(a.count, s.count);
      a.own.push(s.own);
      a.gap.push(s.gap);
      a.overlap.push(s.overlap);
      a.dur.push(s.dur);
      names.set(n, a);
    }
  }
  const byName = [...names].map(([name, a]) => ({
    name,
    count: a.count,
    own: median(a.own),
    gap: median(a.gap),
    overlap: median(a.overlap),
    dur: median(a.dur),
  }));
  byName.sort((x, y) => y.own + y.gap - (x.own + x.gap));
  const between: number[] = [];
  for (let i = skip + 1; i < all.length; i++) between.push(all[i]!.start - all[i - 1]!.end);
  const byCategory = used.map(ownByCategory);
  const apiStart = new Map<number, number>();
  for (const r of recs)
    if (r.kind === "runtime" && /GraphLaunch/.test(r.name ?? "")) apiStart.set(r.corr, r.start);
  // Launch latency only where the call found the GPU idle: done with everything that started before the launch's
  // first record (any graph's kernels, copies, memsets, and work outside graphs; in a serving run other graphs and
  // mixed steps interleave with this one). A call made while earlier work still ran was queued ahead.
  const device = recs.filter((r) => r.kind !== "runtime").sort((a, b) => a.start - b.start);
  const busyUntil: number[] = []; // busyUntil[i]: the latest end among device[0..i]
  for (let i = 0; i < device.length; i++)
    busyUntil.push(Math.max(device[i]!.end, i > 0 ? busyUntil[i - 1]! : -Infinity));
  /** The latest end of the device records that started before t, or -Infinity when none did. */
  const busyBefore = (t: number) => {
    let lo = 0;
    let hi = device.length; // first index whose start >= t
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (device[mid]!.start < t) lo = mid + 1;
      else hi = mid;
    }
    return lo > 0 ? busyUntil[lo - 1]! : -Infinity;
  };
  const toFirst: number[] = [];
  let launchedAhead = 0;
  let launchesWithCall = 0;
  for (const l of used) {
    const call = apiStart.get(l.corr);
    if (call === undefined) continue;
    launchesWithCall++;
    if (call >= busyBefore(l.start)) toFirst.push(l.start - call);
    else launchedAhead++;
  }
  const first = used[0]!;
  return {
    graph,
    launches: all.length,
    used: used.length,
    kernelsPerLaunch: median(used.map((l) => l.kernels.length)),
    wall: per((l) => l.end - l.start),
    own: per((l) => l.kernels.reduce((t, k) => t + k.own, 0)),
    gap: per((l) => l.kernels.reduce((t, k) => t + k.gap, 0)),
    between: median(between),
    launchToFirst: toFirst.length > 0 ? median(toFirst) : undefined,
    launchIdleCount: toFirst.length,
    launchedAhead,
    launchesWithCall,
    byName,
    categories: {
      linear: median(byCategory.map((c) => c.linear)),
      attention: median(byCategory.map((c) => c.attention)),
      other: median(byCategory.map((c) => c.other)),
    },
    nodes: first.kernels.map((k) => ({
      name: shortName(k.rec),
      start: k.rec.start - first.start,
      dur: k.rec.end - k.rec.start,
      own: k.own,
      gap: k.gap,
      overlap: k.overlap,
    })),
    layers: layersOf(used),
  };
}

/** A launch's own time by kind of kernel. */
function ownByCategory(l: Launch): Record<Category, number> {
  const t: Record<Category, number> = { linear: 0, attention: 0, other: 0 };
  for (const k of l.kernels) t[categoryOf(shortName(k.rec))] += k.own;
  return t;
}

/** The layer table of launches shaped like the first (same node count and keys); undefined without layers. */
function layersOf(used: Launch[]): Summary["layers"] {
  const keys = used[0]!.kernels.map((k) => keyOf(k.rec));
  const f = findLayers(keys);
  if (!f) return undefined;
  const same = used.filter(
    (l) => l.kernels.length === keys.length && l.kernels.every((k, i) => keyOf(k.rec) === keys[i]),
  );
  const row = (at: number, idx: number[]): SlotRow => {
    const ks = same.flatMap((l) => idx.map((i) => l.kernels[i]!));
    const rec = used[0]!.kernels[idx[0]!]!.rec;
    return {
      at,
      name: shortName(rec),
      grid: rec.grid ? rec.grid.join("x") : "",
      own: median(ks.map((k) => k.own)),
      gap: median(ks.map((k) => k.gap)),
      overlap: median(ks.map((k) => k.overlap)),
      dur: median(ks.map((k) => k.rec.end - k.rec.start)),
    };
  };
  const slots: SlotRow[] = [];
  for (let j = 0; j < f.period; j++)
    slots.push(
      row(
        j,
        Array.from({ length: f.repeats }, (_, r) => f.start + r * f.period + j),
      ),
    );
  const outside: SlotRow[] = [];
  const end = f.start + f.repeats * f.period;
  for (let i = 0; i < keys.length; i++) if (i < f.start || i >= end) outside.push(row(i, [i]));
  return { ...f, slots, outside };
}

const us = (ns: number) => (ns / 1000).toFixed(2);
const ms = (ns: number) => (ns / 1e6).toFixed(3);

export function formatSummary(s: Summary, nodes = 0): string {
  const out: string[] = [];
  const pct = (x: number) => `${((100 * x) / s.wall).toFixed(1)} %`;
  out.push(
    `graph ${s.graph}: ${s.launches} launches, medians over the last ${s.used}; ${s.kernelsPerLaunch} kernels a launch`,
  );
  out.push(
    `launch wall ${ms(s.wall)} ms = kernels' own time ${ms(s.own)} ms + idle gaps inside it ${ms(s.gap)} ms (${pct(s.gap)})`,
  );
  out.push(
    `by kind of kernel (own time): linear ${ms(s.categories.linear)} ms (${pct(s.categories.linear)}), attention ${ms(s.categories.attention)} ms (${pct(s.categories.attention)}), other ${ms(s.categories.other)} ms (${pct(s.categories.other)}), idle gaps ${ms(s.gap)} ms`,
  );
  const n = s.launchIdleCount;
  const host =
    s.launchesWithCall === 0
      ? "n/a: no cudaGraphLaunch record for these launches"
      : `${
          s.launchToFirst === undefined
            ? "n/a: no launch found the GPU idle"
            : `${us(s.launchToFirst)} us over ${n} launch${n === 1 ? "" : "es"} that found the GPU idle`
        }; ${s.launchedAhead} of ${s.launchesWithCall} launches were issued while earlier GPU work still ran (the host ahead of the GPU)`;
  out.push(`between launches (GPU idle) ${us(s.between)} us; host cudaGraphLaunch to first kernel ${host}`);
  out.push("per kernel name, µs a launch (medians): own = on the critical path, gap = idle just before it,");
  out.push("overlap = ran beside earlier kernels (PDL prologue), dur = the kernels' whole durations");
  out.push(
    `${"name".padEnd(60)} ${"count".padStart(5)} ${"own".padStart(9)} ${"%".padStart(6)} ${"gap".padStart(8)} ${"overlap".padStart(8)} ${"dur".padStart(9)}`,
  );
  for (const r of s.byName) {
    const name = r.name.length > 60 ? `${r.name.slice(0, 57)}...` : r.name;
    out.push(
      `${name.padEnd(60)} ${String(r.count).padStart(5)} ${us(r.own).padStart(9)} ${pct(r.own).padStart(6)} ${us(r.gap).padStart(8)} ${us(r.overlap).padStart(8)} ${us(r.dur).padStart(9)}`,
    );
  }
  if (s.layers) {
    const L = s.layers;
    const own = L.slots.reduce((t, r) => t + r.own, 0);
    const gap = L.slots.reduce((t, r) => t + r.gap, 0);
    out.push(
      `layers: ${L.repeats} x ${L.period} kernels from node ${L.start}; a layer (sums of its places' medians): own ${us(own)} µs + gaps ${us(gap)} µs = ${us(own + gap)} µs, x ${L.repeats} = ${ms((own + gap) * L.repeats)} ms`,
    );
    const line = (label: string, r: SlotRow) =>
      `  ${label.padStart(6)} ${(r.name.length > 50 ? `${r.name.slice(0, 47)}...` : r.name).padEnd(50)} ${r.grid.padStart(11)} own ${us(r.own).padStart(8)} gap ${us(r.gap).padStart(6)} overlap ${us(r.overlap).padStart(6)} dur ${us(r.dur).padStart(8)}`;
    for (const r of L.slots) out.push(line(`L.${r.at}`, r));
    if (L.outside.length > 0) out.push("  outside the layers (node index in the launch):");
    for (const r of L.outside) out.push(line(`#${r.at}`, r));
  }
  if (nodes > 0) {
    out.push(`first ${Math.min(nodes, s.nodes.length)} nodes of the first launch used (µs from its start):`);
    for (const n of s.nodes.slice(0, nodes)) {
      out.push(
        `  ${us(n.start).padStart(9)} ${n.name.slice(0, 60).padEnd(60)} dur ${us(n.dur).padStart(8)} own ${us(n.own).padStart(8)} gap ${us(n.gap).padStart(6)} overlap ${us(n.overlap).padStart(6)}`,
      );
    }
  }
  return out.join("\n");
}

function main(argv: string[]): number {
  const file = argv[0];
  if (!file || file.startsWith("-")) {
    console.error(
      "usage: npx tsx scripts/timeline.ts TIMELINE.jsonl [--graph ID] [--skip N] [--nodes N] [--json FILE]",
    );
    return 2;
  }
  const opt = (name: string) => {
    const i = argv.indexOf(name);
    if (i < 0) return undefined;
    const v = argv[i + 1];
    if (v === undefined) throw new Error(`${name} needs a value`);
    return v;
  };
  const int = (name: string) => {
    const v = opt(name);
    if (v === undefined) return undefined;
    if (!/^\d+$/.test(v)) throw new Error(`${name} ${v}: not a whole number`);
    return Number(v);
  };
  const recs = parseTimeline(fs.readFileSync(file, "utf8"), file);
  const s = summarize(recs, { graph: int("--graph"), skip: int("--skip") ?? 3 });
  console.log(formatSummary(s, int("--nodes") ?? 0));
  const json = opt("--json");
  if (json) fs.writeFileSync(json, `${JSON.stringify(s, null, 1)}\n`, { flag: "wx" });
  return 0;
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  try {
    process.exitCode = main(process.argv.slice(2));
  } catch (e) {
    console.error(`timeline: ${(e as Error).message}`);
    process.exitCode = 1;
  }
}
