// scripts/timeline.ts: the summary of a CUPTI kernel timeline (native/tools/timeline.cc writes it on the GPU
// machine). Hand-made timelines whose every figure is worked out here by hand.
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import {
  busiestGraph,
  categoryOf,
  findLayers,
  formatSummary,
  launchesOf,
  median,
  parseTimeline,
  placeLaunch,
  shortName,
  summarize,
  type TimelineRecord,
} from "../scripts/timeline.ts";

const K = (start: number, end: number, corr: number, graph: number, name: string): TimelineRecord => ({
  kind: "kernel",
  start,
  end,
  corr,
  graph,
  node: 0,
  name,
});
const GEMV =
  "void tsllm::kd::(anonymous namespace)::gemv_kernel<__half, 4>(tsllm::kd::GemvArgs<__half>, int)";
const NORM = "void tsllm::rms_norm_kernel<__half>(__half const*, __half*, int)";
const ATTN = "void tsllm::attn<(tsllm::Kind)2>(tsllm::AttnParams)";

// Graph 7 launched three times; each launch: gemv [0, 500], norm [400, 1000] (100 ns beside the gemv: a PDL
// prologue), attention after 300 ns idle [1300, 1600], a copy node [1600, 1700]. Launches start every 2,000 ns.
function graph7(at: number, corr: number): TimelineRecord[] {
  return [
    K(at, at + 500, corr, 7, GEMV),
    K(at + 400, at + 1000, corr, 7, NORM),
    K(at + 1300, at + 1600, corr, 7, ATTN),
    { kind: "memcpy", start: at + 1600, end: at + 1700, corr, graph: 7, node: 9 },
  ];
}
const runtime = (start: number, corr: number): TimelineRecord => ({
  kind: "runtime",
  start,
  end: start + 50,
  corr,
  name: "cudaGraphLaunch_v10000",
});
function timeline(): TimelineRecord[] {
  return [
    // graph 9: one launch of more kernels than graph 7's (a prefill graph, say)
    K(100_000, 101_000, 90, 9, GEMV),
    K(101_000, 102_000, 90, 9, GEMV),
    K(102_000, 103_000, 90, 9, GEMV),
    K(103_000, 104_000, 90, 9, GEMV),
    K(104_000, 105_000, 90, 9, GEMV),
    // a kernel outside any graph
    K(200_000, 201_000, 95, 0, NORM),
    ...graph7(10_000, 10),
    runtime(9_000, 10),
    ...graph7(12_000, 20),
    runtime(11_800, 20),
    ...graph7(14_000, 30),
    runtime(13_600, 30),
  ];
}

describe("placeLaunch", () => {
  it("cuts the launch's wall time into own times and idle gaps that add up exactly", () => {
    const l = placeLaunch(graph7(10_000, 10));
    expect(l.start).toBe(10_000);
    expect(l.end).toBe(11_700);
    expect(l.kernels.map((k) => [k.own, k.gap, k.overlap])).toEqual([
      [500, 0, 0],
      [500, 0, 100],
      [300, 300, 0],
      [100, 0, 0],
    ]);
    const own = l.kernels.reduce((t, k) => t + k.own, 0);
    const gap = l.kernels.reduce((t, k) => t + k.gap, 0);
    expect(own + gap).toBe(l.end - l.start);
  });

  it("gives a kernel wholly inside an earlier one no own time, all overlap", () => {
    const l = placeLaunch([K(0, 1000, 1, 1, GEMV), K(200, 300, 1, 1, NORM), K(900, 1500, 1, 1, ATTN)]);
    expect(l.kernels.map((k) => [k.own, k.gap, k.overlap])).toEqual([
      [1000, 0, 0],
      [0, 0, 100],
      [500, 0, 100],
    ]);
    expect(l.end).toBe(1500);
  });

  it("orders by start whatever the records' order", () => {
    const recs = graph7(0, 1);
    const l = placeLaunch([recs[2]!, recs[0]!, recs[3]!, recs[1]!]);
    expect(l.kernels.map((k) => k.rec.start)).toEqual([0, 400, 1300, 1600]);
  });
});

describe("graphs and launches", () => {
  it("picks the graph launched most often, not the one with most kernels", () => {
    expect(busiestGraph(timeline())).toBe(7);
    expect(busiestGraph([K(0, 1, 1, 0, GEMV)])).toBeUndefined();
  });

  it("never picks kernels outside graphs (graph 0) or copies, however many", () => {
    const eager = Array.from({ length: 6 }, (_, i) => K(i * 10, i * 10 + 5, 100 + i, 0, NORM));
    const copies = Array.from(
      { length: 6 },
      (_, i): TimelineRecord => ({ kind: "memcpy", start: i, end: i + 1, corr: 200 + i, graph: 8 }),
    );
    expect(busiestGraph([...eager, ...copies, K(0, 1, 1, 3, GEMV), K(5, 6, 2, 3, GEMV)])).toBe(3);
  });

  it("between graphs launched as often, picks the one with more kernels", () => {
    const two = [K(0, 1, 1, 3, GEMV), K(5, 6, 2, 4, GEMV), K(6, 7, 2, 4, NORM)];
    expect(busiestGraph(two)).toBe(4);
    expect(busiestGraph([...two].reverse())).toBe(4);
  });

  it("groups a graph's device records by launch, in time order, without runtime records", () => {
    const recs = timeline().reverse();
    const ls = launchesOf(recs, 7);
    expect(ls.map((l) => l.corr)).toEqual([10, 20, 30]);
    expect(ls.map((l) => l.kernels.length)).toEqual([4, 4, 4]);
    expect(launchesOf(recs, 9).map((l) => l.kernels.length)).toEqual([5]);
  });
});

describe("summarize", () => {
  it("gives per-launch medians, the idle time between launches and the host's launch latency", () => {
    const s = summarize(timeline(), { skip: 1 });
    expect(s.graph).toBe(7);
    expect(s.launches).toBe(3);
    expect(s.used).toBe(2);
    expect(s.kernelsPerLaunch).toBe(4);
    expect(s.wall).toBe(1700);
    expect(s.own).toBe(1400);
    expect(s.gap).toBe(300);
    // launches end at 11,700, 13,700 and start at 12,000, 14,000: 300 idle each (the skipped launch's own
    // successor counts only from the first used launch on)
    expect(s.between).toBe(300);
    // host calls at 11,800 and 13,600 for launches starting 12,000 and 14,000. The first came after the previous
    // (skipped) launch ended at 11,700: the GPU was idle, 12,000 - 11,800 = 200 is its latency. The second came
    // before launch 20 ended at 13,700: queued ahead, left out of the median and counted apart.
    expect(s.launchToFirst).toBe(200);
    expect([s.launchIdleCount, s.launchedAhead, s.launchesWithCall]).toEqual([1, 1, 2]);
    const row = (n: string) => s.byName.find((r) => r.name === n)!;
    expect(row("gemv_kernel<__half, 4>")).toEqual({
      name: "gemv_kernel<__half, 4>",
      count: 1,
      own: 500,
      gap: 0,
      overlap: 0,
      dur: 500,
    });
    expect(row("rms_norm_kernel<__half>")).toMatchObject({ own: 500, overlap: 100, dur: 600 });
    expect(row("attn<(Kind)2>")).toMatchObject({ own: 300, gap: 300, dur: 300 });
    expect(row("memcpy")).toMatchObject({ own: 100, count: 1 });
    // sorted by own + gap: attention (600) first, the copy (100) last
    expect(s.byName[0]!.name).toBe("attn<(Kind)2>");
    expect(s.byName.at(-1)!.name).toBe("memcpy");
    expect(s.nodes.map((n) => n.start)).toEqual([0, 400, 1300, 1600]);
    // the norm and the copy are "other"; with the gap they make the wall
    expect(s.categories).toEqual({ linear: 500, attention: 300, other: 600 });
    expect(formatSummary(s)).toContain(
      "by kind of kernel (own time): linear 0.001 ms (29.4 %), attention 0.000 ms (17.6 %), other 0.001 ms (35.3 %), idle gaps 0.000 ms",
    );
  });

  it("sorts kernels into linear, attention and other by name", () => {
    expect(categoryOf("nvjet_hsh_128x256_64x4_2x1_v_bz_coopA_TNT")).toBe("linear");
    expect(categoryOf("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x256x64")).toBe("linear");
    expect(categoryOf("gemv_kernel<__half, 4>")).toBe("linear");
    expect(categoryOf("decode_attention_mma<__half>")).toBe("attention");
    expect(categoryOf("fmha_fp8_kernel")).toBe("attention");
    expect(categoryOf("paged_attn_decode")).toBe("attention");
    expect(categoryOf("rms_norm_kernel<__half>")).toBe("other");
    // the runtime's own kernels by their names (native/src/kernels)
    expect(categoryOf("decode_mma_kernel<__half, unsigned char, 4>")).toBe("attention");
    expect(categoryOf("context_kernel<__nv_bfloat16, 8>")).toBe("attention");
    expect(categoryOf("rope_cache_kernel<__half>")).toBe("attention");
    expect(categoryOf("decode_layers_kernel")).toBe("other");
    expect(categoryOf("int_mma_a_kernel<__half, true, 4>")).toBe("linear");
    expect(categoryOf("moe_grouped_kernel<__half>")).toBe("linear");
    expect(categoryOf("moe_route_kernel<__half>")).toBe("other");
    expect(categoryOf("gated_act_kernel<__half, (Act)0>")).toBe("other");
    expect(categoryOf("memcpy")).toBe("other");
  });

  it("measures the idle between launches from the first launch used on", () => {
    // launches at 0, 2,700 (1,000 idle after the first's end at 1,700) and 4,700 (300 idle)
    const recs = [...graph7(0, 1), ...graph7(2_700, 2), ...graph7(4_700, 3)];
    expect(summarize(recs, { skip: 0 }).between).toBe(650);
    expect(summarize(recs, { skip: 1 }).between).toBe(300);
  });

  it("uses the last launch when asked to skip more than there are", () => {
    const s = summarize(timeline(), { skip: 10 });
    expect([s.launches, s.used]).toEqual([3, 1]);
    // the one launch used (corr 30) was called at 13,600, before the skipped launch 20 ended at 13,700: its
    // previous launch counts even when skipped, so it was queued ahead and no launch found the GPU idle
    expect(s.launchToFirst).toBeUndefined();
    expect([s.launchIdleCount, s.launchedAhead, s.launchesWithCall]).toEqual([0, 1, 1]);
  });

  it("orders names by own time plus the gap before them, and counts a name's most kernels in a launch", () => {
    const s = summarize(timeline(), { skip: 1 });
    expect(s.byName.map((r) => r.name)).toEqual([
      "attn<(Kind)2>",
      "gemv_kernel<__half, 4>",
      "rms_norm_kernel<__half>",
      "memcpy",
    ]);
    // a launch with two gemvs, one with one: the count is 2
    const recs = [...graph7(0, 1), ...graph7(5_000, 2), K(6_700, 6_800, 2, 7, GEMV)];
    expect(summarize(recs).byName.find((r) => r.name === "gemv_kernel<__half, 4>")!.count).toBe(2);
    expect(
      summarize([...recs].reverse()).byName.find((r) => r.name === "gemv_kernel<__half, 4>")!.count,
    ).toBe(2);
  });

  it("takes the host's launch time from the runtime call, wherever it stands among the records", () => {
    const recs = [runtime(9_000, 10), ...graph7(10_000, 10), runtime(11_800, 20), ...graph7(12_000, 20)];
    const s = summarize(recs);
    // the graph's first launch (no previous) counts as idle: 10,000 - 9,000 = 1,000; the second was called at
    // 11,800, after the first ended at 11,700: 200. Median of 1,000 and 200.
    expect(s.launchToFirst).toBe(600);
    expect([s.launchIdleCount, s.launchedAhead, s.launchesWithCall]).toEqual([2, 0, 2]);
    // a runtime call of another kind with the launch's id does not count
    const other = { ...runtime(11_900, 20), name: "cudaStreamSynchronize_v3020" };
    expect(summarize([...recs, other]).launchToFirst).toBe(600);
    expect(s.nodes.map((n) => n.dur)).toEqual([500, 600, 300, 100]);
  });

  it("sums a name's kernels within a launch", () => {
    const s = summarize(timeline(), { graph: 9 });
    expect(s.byName).toEqual([
      { name: "gemv_kernel<__half, 4>", count: 5, own: 5000, gap: 0, overlap: 0, dur: 5000 },
    ]);
    expect(Number.isNaN(s.between)).toBe(true);
    expect(s.launchToFirst).toBeUndefined();
    expect([s.launchIdleCount, s.launchedAhead, s.launchesWithCall]).toEqual([0, 0, 0]);
  });

  it("leaves launches queued ahead of the GPU out of the launch latency and counts them", () => {
    // launches at 10,000, 12,000, 14,000 (ends 11,700, 13,700, 15,700); the host calls all three early, at 9,800,
    // 10,100 and 10,200: the last two while launch 1 still ran (queued), their 1,900 and 3,800 the queue's lead
    const recs = [
      ...graph7(10_000, 1),
      runtime(9_800, 1),
      ...graph7(12_000, 2),
      runtime(10_100, 2),
      ...graph7(14_000, 3),
      runtime(10_200, 3),
    ];
    for (const rs of [recs, [...recs].reverse()]) {
      const s = summarize(rs);
      expect(s.launchToFirst).toBe(200); // the first launch only: 10,000 - 9,800
      expect([s.launchIdleCount, s.launchedAhead, s.launchesWithCall]).toEqual([1, 2, 3]);
    }
  });

  it("takes the launch latency over only the launches that found the GPU idle", () => {
    // launches at 10,000 + 2,000 k (k = 0..5), each ending 1,700 after its start, graph 7, corr k + 1
    const recs: TimelineRecord[] = [];
    for (let k = 0; k < 6; k++) recs.push(...graph7(10_000 + 2_000 * k, k + 1));
    recs.push(
      runtime(9_900, 1), // first launch: idle, 100
      runtime(11_700, 2), // exactly when launch 1 ended (11,700): idle, 300
      runtime(13_000, 3), // before launch 2 ended (13,700): ahead (1,000 to its first kernel)
      runtime(15_740, 4), // after launch 3 ended (15,700), but another graph's kernel runs until 16,000: ahead
      runtime(16_500, 5), // before launch 4 ended (17,700): ahead (1,500)
      // launch 6 (20,000) has no runtime record: in neither count
      // another graph's kernel (a serving run's mixed step, say) keeps the GPU busy at launch 4's call
      K(15_000, 16_000, 99, 8, GEMV),
      // work outside graphs that ended before launch 2's call (11,700) leaves that call idle
      K(11_650, 11_690, 98, 0, GEMV),
    );
    const s = summarize(recs, { graph: 7, skip: 1 });
    expect(s.used).toBe(5);
    expect(s.launchToFirst).toBe(300); // launch 2 alone
    expect([s.launchIdleCount, s.launchedAhead, s.launchesWithCall]).toEqual([1, 3, 4]);
    expect(formatSummary(s).split("\n")).toContain(
      "between launches (GPU idle) 0.30 us; host cudaGraphLaunch to first kernel 0.30 us over 1 launch that found the GPU idle; 3 of 4 launches were issued while earlier GPU work still ran (the host ahead of the GPU)",
    );
    // without the skip the first launch counts too: median of 100 and 300
    const all = summarize(recs, { graph: 7 });
    expect(all.launchToFirst).toBe(200);
    expect([all.launchIdleCount, all.launchedAhead, all.launchesWithCall]).toEqual([2, 3, 5]);
  });

  it("gives no launch latency when every launch was queued ahead", () => {
    // launches at 10,000, 12,000, 14,000 (ends 11,700, 13,700, 15,700), called at 9,000, 11,000, 13,000: past the
    // skipped first launch each call came 700 before the previous launch ended
    const recs = [
      ...graph7(10_000, 1),
      runtime(9_000, 1),
      ...graph7(12_000, 2),
      runtime(11_000, 2),
      ...graph7(14_000, 3),
      runtime(13_000, 3),
    ];
    const s = summarize(recs, { skip: 1 });
    expect(s.launchToFirst).toBeUndefined();
    expect([s.launchIdleCount, s.launchedAhead, s.launchesWithCall]).toEqual([0, 2, 2]);
    expect(formatSummary(s)).toContain(
      "host cudaGraphLaunch to first kernel n/a: no launch found the GPU idle; 2 of 2 launches were issued while earlier GPU work still ran (the host ahead of the GPU)",
    );
  });

  it("refuses a timeline without graph kernels, and a graph that is not there", () => {
    expect(() => summarize([K(0, 1, 1, 0, GEMV)])).toThrow(/no kernel of any CUDA graph/);
    expect(() => summarize(timeline(), { graph: 3 })).toThrow(/graph 3: no launch/);
  });
});

describe("layers", () => {
  it("finds the smallest period that repeats over at least half the launch", () => {
    expect(findLayers(["e", "a", "b", "c", "a", "b", "c", "a", "b", "c", "h", "s"])).toEqual({
      start: 1,
      period: 3,
      repeats: 3,
    });
    expect(findLayers(["a", "b", "a", "b", "a"])).toEqual({ start: 0, period: 2, repeats: 2 });
    // a norm before each of two different gemvs: the layer is all four, not the norm-gemv pair
    expect(findLayers(["n", "g", "n", "g2", "n", "g", "n", "g2"])).toEqual({
      start: 0,
      period: 4,
      repeats: 2,
    });
    expect(findLayers(["a", "b", "c"])).toBeUndefined();
    // exactly half the launch is enough
    expect(findLayers(["a", "b", "a", "b", "x", "y", "z", "w"])).toEqual({ start: 0, period: 2, repeats: 2 });
    // a repeat covering less than half the launch is not the layers
    expect(findLayers(["x", "y", "z", "w", "a", "a", "v", "u"])).toBeUndefined();
  });

  // A launch: an embedding [0, 100]; three layers of a norm (grid 1) and a gemv (grid 132) that starts 50 ns
  // before the norm ends (PDL); the next layer's norm starts as the gemv ends; a sampling kernel after 100 ns idle.
  function layered(at: number, corr: number): TimelineRecord[] {
    const g = (rec: TimelineRecord, grid: number[]) => ({ ...rec, grid });
    const recs = [g(K(at, at + 100, corr, 5, "embed"), [8, 1, 1])];
    for (let r = 0; r < 3; r++) {
      const t = at + 100 + r * 1000;
      recs.push(
        g(K(t, t + 200, corr, 5, NORM), [1, 1, 1]),
        g(K(t + 150, t + 1000, corr, 5, GEMV), [132, 1, 1]),
      );
    }
    recs.push(g(K(at + 3200, at + 3300, corr, 5, "sample"), [1, 1, 1]));
    return recs;
  }

  it("gives each place in a layer its medians over layers and launches, and the nodes outside apart", () => {
    const s = summarize([...layered(0, 1), ...layered(10_000, 2)]);
    expect(s.wall).toBe(3300);
    expect(s.layers).toEqual({
      start: 1,
      period: 2,
      repeats: 3,
      slots: [
        { at: 0, name: "rms_norm_kernel<__half>", grid: "1x1x1", own: 200, gap: 0, overlap: 0, dur: 200 },
        { at: 1, name: "gemv_kernel<__half, 4>", grid: "132x1x1", own: 800, gap: 0, overlap: 50, dur: 850 },
      ],
      outside: [
        { at: 0, name: "embed", grid: "8x1x1", own: 100, gap: 0, overlap: 0, dur: 100 },
        { at: 7, name: "sample", grid: "1x1x1", own: 100, gap: 100, overlap: 0, dur: 100 },
      ],
    });
    const text = formatSummary(s);
    expect(text).toContain(
      "layers: 3 x 2 kernels from node 1; a layer (sums of its places' medians): own 1.00 µs + gaps 0.00 µs = 1.00 µs, x 3 = 0.003 ms",
    );
    expect(text).toMatch(/\n {6}#7 sample +1x1x1 own +0\.10 gap +0\.10 overlap +0\.00 dur +0\.10$/);
  });

  it("leaves out of the layer medians a launch cut short (its kernels a prefix of the first's)", () => {
    const short = layered(20_000, 3).slice(0, -1);
    const s = summarize([...layered(0, 1), ...short.map((r) => ({ ...r, end: r.end + 50 }))], { graph: 5 });
    expect(s.layers!.outside.map((r) => r.at)).toEqual([0, 7]);
    expect(s.layers!.outside[0]!.dur).toBe(100);
  });

  it("prints each layer place, the nodes outside, the first nodes, and cuts long names", () => {
    const long = `sample_${"x".repeat(70)}`;
    const recs = [...layered(0, 1), ...layered(10_000, 2)].map((r) =>
      r.name === "sample" ? { ...r, name: long } : r,
    );
    const lines = formatSummary(summarize(recs), 3).split("\n");
    expect(lines).toContain(
      `${`${long.slice(0, 57)}...`.padEnd(60)}     1      0.10  3.0 %     0.10     0.00      0.10`,
    );
    expect(lines).toContain(
      "     L.1 gemv_kernel<__half, 4>                                 132x1x1 own     0.80 gap   0.00 overlap   0.05 dur     0.85",
    );
    expect(lines).toContain("  outside the layers (node index in the launch):");
    expect(lines).toContain(
      `      #7 ${long.slice(0, 47)}...       1x1x1 own     0.10 gap   0.10 overlap   0.00 dur     0.10`,
    );
    expect(lines).toContain("first 3 nodes of the first launch used (µs from its start):");
    expect(lines.at(-1)).toBe(
      "       0.25 gemv_kernel<__half, 4>                                       dur     0.85 own     0.80 gap   0.00 overlap   0.05",
    );
    // no nodes outside the layers: no such heading; no --nodes: no node list
    const bare = formatSummary(summarize(layered(0, 1).slice(1, -1)));
    expect(bare).not.toContain("outside the layers");
    expect(bare).not.toContain("nodes of the first launch");
  });

  it("leaves out of the layer medians a launch of as many kernels but others", () => {
    const other = layered(20_000, 3).map((r, i) =>
      i === 3 ? { ...r, name: "other_kernel", end: r.end + 5000 } : r,
    );
    const s = summarize([...layered(0, 1), ...other], { graph: 5 });
    expect(s.layers!.slots[0]!.dur).toBe(200);
    expect(s.layers!.outside[1]!.gap).toBe(100);
  });

  it("leaves out of the layer medians a launch shaped otherwise", () => {
    const odd = layered(20_000, 3).map((r) => (r.name === "embed" ? { ...r, end: r.end + 900 } : r));
    odd.splice(1, 1); // its first norm missing
    const s = summarize([...layered(0, 1), ...odd, ...layered(10_000, 2)], { graph: 5 });
    expect(s.layers!.slots[0]!.own).toBe(200);
    expect(s.layers!.outside[0]!.own).toBe(100);
  });
});

describe("median", () => {
  it("sorts numerically, and takes the middle or the mean of the two middles", () => {
    expect(median([9, 100, 10])).toBe(10);
    expect(median([100, 9, 10, 1000])).toBe(55);
    const xs = [3, 1, 2];
    median(xs);
    expect(xs).toEqual([3, 1, 2]);
    expect(median([])).toBeNaN();
  });
});

describe("shortName", () => {
  it("drops namespaces, the return type and the parameter list, keeps template arguments", () => {
    expect(shortName(K(0, 1, 1, 1, GEMV))).toBe("gemv_kernel<__half, 4>");
    expect(shortName(K(0, 1, 1, 1, "plain_kernel"))).toBe("plain_kernel");
    expect(shortName(K(0, 1, 1, 1, "void f<(a::B)1>(int (*)(int))"))).toBe("f<(B)1>");
    expect(shortName(K(0, 1, 1, 1, "void k<void (*)(int)>(int)"))).toBe("k<void (*)(int)>");
    expect(shortName({ kind: "memcpy", start: 0, end: 1, corr: 1 })).toBe("memcpy");
  });
});

describe("parseTimeline", () => {
  it("reads the lines timeline.cc writes and refuses others by line number", () => {
    const text = `${JSON.stringify(K(1, 2, 3, 4, GEMV))}\n\n{"kind":"runtime","start":5,"end":6,"corr":3,"name":"x"}\n`;
    expect(parseTimeline(text).map((r) => r.kind)).toEqual(["kernel", "runtime"]);
    expect(() => parseTimeline(`${JSON.stringify(K(1, 2, 3, 4, GEMV))}\n{"kind":"kern`, "t.jsonl")).toThrow(
      /^t\.jsonl:2: not JSON/,
    );
    expect(() => parseTimeline('{"kind":"kernel","start":5,"end":4,"corr":1}')).toThrow(
      /:1: not a timeline record/,
    );
    expect(() => parseTimeline('{"kind":"other","start":1,"end":4,"corr":1}')).toThrow(
      /not a timeline record/,
    );
    for (const bad of [
      "null",
      "[]",
      '"kernel"',
      '{"start":1,"end":4,"corr":1}',
      '{"kind":"kernel","end":4,"corr":1}',
      '{"kind":"kernel","start":"1","end":4,"corr":1}',
      '{"kind":"kernel","start":1,"corr":1}',
      '{"kind":"kernel","start":1,"end":4}',
      '{"kind":"memset","start":1,"end":4,"corr":"1"}',
    ])
      expect(() => parseTimeline(bad, "t"), bad).toThrow(/^t:1: not a timeline record/);
    // every kind timeline.cc writes, and a zero-length record
    const kinds = ["kernel", "memcpy", "memset", "runtime"].map(
      (k) => `{"kind":"${k}","start":3,"end":3,"corr":1}`,
    );
    expect(parseTimeline(kinds.join("\n")).map((r) => r.kind)).toEqual([
      "kernel",
      "memcpy",
      "memset",
      "runtime",
    ]);
  });
});

describe("scripts/timeline.ts as a command", () => {
  const run = (args: string[]) =>
    spawnSync(process.execPath, ["--import", "tsx", "scripts/timeline.ts", ...args], { encoding: "utf8" });

  it("prints the summary and writes --json, never over an existing file", () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tl-"));
    const tl = path.join(dir, "tl.jsonl");
    fs.writeFileSync(
      tl,
      `${timeline()
        .map((r) => JSON.stringify(r))
        .join("\n")}\n`,
    );
    const out = path.join(dir, "s.json");
    const r = run([tl, "--skip", "1", "--nodes", "2", "--json", out]);
    expect(r.stderr).toBe("");
    expect(r.status).toBe(0);
    expect(r.stdout).toContain("graph 7: 3 launches, medians over the last 2; 4 kernels a launch");
    expect(r.stdout).toContain(
      "launch wall 0.002 ms = kernels' own time 0.001 ms + idle gaps inside it 0.000 ms (17.6 %)",
    );
    // as in summarize's first test: launch 20 found the GPU idle (200 ns), launch 30 was queued ahead
    expect(r.stdout).toContain(
      "between launches (GPU idle) 0.30 us; host cudaGraphLaunch to first kernel 0.20 us over 1 launch that found the GPU idle; 1 of 2 launches were issued while earlier GPU work still ran (the host ahead of the GPU)",
    );
    expect(r.stdout).toMatch(/first 2 nodes/);
    const json = JSON.parse(fs.readFileSync(out, "utf8"));
    expect(json.wall).toBe(1700);
    expect([json.launchToFirst, json.launchIdleCount, json.launchedAhead, json.launchesWithCall]).toEqual([
      200, 1, 1, 2,
    ]);
    const again = run([tl, "--json", out]);
    expect(again.status).toBe(1);
    expect(again.stderr).toMatch(/^timeline: EEXIST/);
    expect(JSON.parse(fs.readFileSync(out, "utf8")).used).toBe(2);
    const bad = run([tl, "--skip", "x"]);
    expect(bad.status).toBe(1);
    expect(bad.stderr).toBe("timeline: --skip x: not a whole number\n");
    expect(run([]).status).toBe(2);
    fs.rmSync(dir, { recursive: true });
  });

  it("formats without a host launch record", () => {
    const s = summarize(timeline(), { graph: 9 });
    expect(formatSummary(s)).toContain(
      "host cudaGraphLaunch to first kernel n/a: no cudaGraphLaunch record for these launches",
    );
    expect(formatSummary(s)).not.toContain("launches were issued");
  });
});
