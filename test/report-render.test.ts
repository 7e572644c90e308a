// The fusion report's renderers on a hand-made report: the terminal table (src/report/text.ts, formatReport) line by
// line, and report.html (src/report/html.ts, renderHtml / renderSvg) parsed by a small HTML reader below (every tag
// balanced, every attribute quoted, no raw `<`, `>` or bare `&` in text), its figures, pass rows and drawings checked
// cell by cell, names with `<`, `&` and `"` shown as written and never turned into markup. Every figure is worked
// out by hand from the inputs (binary units, three significant digits; positions from the layout's 196 × 46 boxes,
// 20 / 38 gaps and 16 padding).
import { describe, expect, it } from "vitest";
import type { Drawing } from "../src/report/figures.ts";
import { renderHtml, renderSvg } from "../src/report/html.ts";
import type { FusionReport, PassRecord } from "../src/report/report.ts";
import { formatReport } from "../src/report/text.ts";

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

type Figures = FusionReport["before"];
const figures = (o: Partial<Figures>): Figures => ({
  ops: 0,
  launches: 0,
  launchesPerLayer: 0,
  layers: 4,
  layerOps: {},
  activations: 0,
  activationBytesPerToken: 0,
  trafficPerToken: 0,
  layerTrafficPerToken: 0,
  ...o,
});

const pass = (o: Partial<PassRecord> & { name: string }): PassRecord => ({
  status: "applied",
  matches: 0,
  patterns: {},
  where: [],
  opsBefore: 0,
  opsAfter: 0,
  launchesBefore: 0,
  launchesAfter: 0,
  notes: [],
  ms: 1,
  ...o,
});

// in → linear → silu → out: one column, four rows.
const CHAIN: Drawing = {
  layer: 1,
  launches: 2,
  nodes: [
    { kind: "in", op: "rms_norm", label: "layer 0 · rms_norm", detail: "", fused: false },
    { kind: "op", op: "linear", label: "linear (silu)", detail: "q 128→352", fused: true },
    { kind: "op", op: "silu", label: "silu", detail: "", fused: false },
    { kind: "out", op: "output", label: "→ layer 2", detail: "", fused: false },
  ],
  edges: [
    { from: 0, to: 1, bytesPerToken: 512, label: "f32[T,128]" },
    { from: 1, to: 2, bytesPerToken: 1400, label: "f32[T,352]" },
    { from: 2, to: 3, bytesPerToken: 3 * MiB, label: "f32[T,352]" },
  ],
};

const PASSES: PassRecord[] = [
  pass({
    name: "qkv-fusion",
    matches: 32,
    patterns: { qkv: 32 },
    where: ["model.layers.{0..31}.self_attn"],
    opsBefore: 580,
    opsAfter: 516,
  }),
  pass({
    name: "epilogue-fusion",
    matches: 64,
    patterns: { residual: 32, activation: 32 },
    where: ["model.layers.{0..31}.mlp", "model.layers.{0..31}.self_attn"],
    opsBefore: 516,
    opsAfter: 452,
    notes: ["kept 2 adds", "fp32 residual"],
  }),
  pass({ name: "cse", status: "ran", matches: null, opsBefore: 452, opsAfter: 450 }),
  pass({
    name: "norm-chain-fusion",
    status: "no-match",
    matches: 0,
    patterns: { pre: 0 },
    opsBefore: 450,
    opsAfter: 450,
  }),
  pass({ name: "attention-fusion", status: "disabled", matches: null, notes: ["disabled (--disable-pass)"] }),
  pass({
    name: "memory-plan",
    status: "failed",
    matches: 3,
    where: ["x"],
    opsBefore: 450,
    opsAfter: 449,
    notes: ["offset overflow"],
  }),
];

function report(o: Partial<FusionReport> = {}): FusionReport {
  return {
    version: 1,
    model: { numLayers: 4, numKvHeads: 2, headDim: 32 },
    build: {
      sm: 90,
      tp: 2,
      dtype: "bf16",
      quant: "fp8",
      max_batch_size: 8,
      max_seq_len: 4096,
      max_num_tokens: 512,
    },
    passes: PASSES,
    before: figures({
      ops: 580,
      launches: 515,
      launchesPerLayer: 16,
      activations: 516,
      activationBytesPerToken: 6 * MiB,
      trafficPerToken: 12 * MiB,
      layerTrafficPerToken: 400 * 1024,
    }),
    after: figures({
      ops: 449,
      launches: 259,
      launchesPerLayer: 8,
      activations: 260,
      activationBytesPerToken: 4.5 * MiB,
      trafficPerToken: 9 * MiB,
      layerTrafficPerToken: 304 * 1024,
    }),
    savedBytesPerToken: 3 * MiB,
    savedLayerBytesPerToken: 96 * 1024,
    arena: { planned: true, bytes: 600 * MiB, naiveBytes: 30 * GiB, unfusedNaiveBytes: 45 * GiB },
    drawing: { before: CHAIN, after: CHAIN },
    ...o,
  };
}

const RUNTIME =
  "runtime fusion (CUDA, not counted above): decode steps of ≤ 4 tokens fold an rms_norm (no weight offset or " +
  "folded elementwise ops) or gated_act whose output feeds only a linear (no activation or elementwise chain) " +
  "into that linear's gemv when the tuned fused kernel is faster (tsllm-run / tsllm-bench --verbose list the " +
  "folded nodes); an add or add_rms_norm right after a moe node runs inside the moe's combine kernel";

describe("formatReport (the terminal table)", () => {
  it("every line: header, passes by status, figures with units and totals, the arena, runtime fusion, notes", () => {
    expect(formatReport(report()).split("\n")).toEqual([
      "fusion report: 4 layers, tp 2 (rank 0 shown), bf16, sm 90, limits 8 seqs / 512 tokens / 4096 positions",
      "pass               matches  ops          where",
      "qkv-fusion              32  580 → 516    model.layers.{0..31}.self_attn",
      "epilogue-fusion         64  516 → 452    residual ×32, activation ×32: model.layers.{0..31}.mlp, model.layers.{0..31}.self_attn",
      "cse                      –  452 → 450    ",
      "norm-chain-fusion        0  450 → 450    ",
      "attention-fusion         –  disabled     ",
      "memory-plan              3  450 → 449    FAILED, graph left unchanged (see notes)",
      "",
      "kernel launches per decoder layer          16 → 8          ",
      "kernel launches per token (step)          515 → 259        ",
      "activation traffic per token         12.0 MiB → 9.00 MiB   saved 3.00 MiB/token (96.0 KiB per layer) no longer written and read back",
      "intermediate tensors per token            516 → 260        6.00 MiB → 4.50 MiB written",
      "activation arena                      600 MiB (liveness plan) vs naive sum 30.0 GiB (51.2× smaller; unfused naive 45.0 GiB)",
      RUNTIME,
      "notes:",
      "  epilogue-fusion: kept 2 adds",
      "  epilogue-fusion: fp32 residual",
      "  attention-fusion: disabled (--disable-pass)",
      "  memory-plan: offset overflow",
    ]);
  });

  it("notes: hidden with { notes: false }, shown with { notes: true }; no notes, no heading", () => {
    const all = formatReport(report()).split("\n");
    const end = all.indexOf(RUNTIME) + 1;
    expect(formatReport(report(), { notes: false }).split("\n")).toEqual(all.slice(0, end));
    expect(formatReport(report(), { notes: true }).split("\n")).toEqual(all);
    const quiet = report({ passes: PASSES.map((p) => ({ ...p, notes: [] })) });
    const lines = formatReport(quiet).split("\n");
    expect(lines[lines.length - 1]).toBe(RUNTIME);
    expect(lines).not.toContain("notes:");
  });

  it("at most 20 notes, then how many more are in report.json", () => {
    const notes = (n: number) => [
      pass({ name: "p", notes: Array.from({ length: n }, (_, i) => `n${i + 1}`) }),
    ];
    const tail = (n: number) => {
      const lines = formatReport(report({ passes: notes(n) })).split("\n");
      return lines.slice(lines.indexOf("notes:") + 1);
    };
    const listed = (n: number) => Array.from({ length: n }, (_, i) => `  p: n${i + 1}`);
    expect(tail(1)).toEqual(listed(1));
    expect(tail(20)).toEqual(listed(20));
    expect(tail(21)).toEqual([...listed(20), "  … 1 more in report.json"]);
    expect(tail(23)).toEqual([...listed(20), "  … 3 more in report.json"]);
  });

  it("no plan, an empty arena and bytes below 1 KiB: naive, no ratio, plain bytes", () => {
    const r = report({
      passes: [],
      before: figures({
        launches: 7,
        launchesPerLayer: 3,
        activations: 5,
        activationBytesPerToken: 1000,
        trafficPerToken: 1023,
      }),
      after: figures({
        launches: 7,
        launchesPerLayer: 3,
        activations: 5,
        activationBytesPerToken: 1000,
        trafficPerToken: 1024,
      }),
      savedBytesPerToken: -1,
      savedLayerBytesPerToken: 0,
      arena: { planned: false, bytes: 0, naiveBytes: 512, unfusedNaiveBytes: 1536 },
    });
    expect(formatReport(r).split("\n").slice(1, -1)).toEqual([
      "pass               matches  ops          where",
      "",
      "kernel launches per decoder layer           3 → 3          ",
      "kernel launches per token (step)            7 → 7          ",
      "activation traffic per token           1023 B → 1.00 KiB   saved -1 B/token (0 B per layer) no longer written and read back",
      "intermediate tensors per token              5 → 5          1000 B → 1000 B written",
      "activation arena                          0 B (no plan: naive) vs naive sum 512 B (– smaller; unfused naive 1.50 KiB)",
    ]);
  });
});

// ---- a small HTML reader: enough for what renderHtml writes, strict about what it does not ----

interface El {
  tag: string;
  attrs: Record<string, string>;
  children: (El | string)[];
}
const VOID = new Set(["meta", "br", "rect"]);
const RAW = new Set(["style", "script"]);
const ENTITY: Record<string, string> = { "&amp;": "&", "&lt;": "<", "&gt;": ">", "&quot;": '"' };
const decode = (s: string) => s.replace(/&(amp|lt|gt|quot);/g, (m) => ENTITY[m]);

function parse(html: string): El {
  const root: El = { tag: "#root", attrs: {}, children: [] };
  const stack = [root];
  const top = () => stack[stack.length - 1];
  const text = (s: string) => {
    if (/[<>]/.test(s) || /&(?!(amp|lt|gt|quot);)/.test(s)) throw new Error(`unescaped text: ${s}`);
    if (s) top().children.push(decode(s));
  };
  let i = 0;
  for (;;) {
    const lt = html.indexOf("<", i);
    if (lt < 0) {
      text(html.slice(i));
      break;
    }
    text(html.slice(i, lt));
    const gt = html.indexOf(">", lt);
    const tag = html.slice(lt, gt + 1);
    i = gt + 1;
    if (lt === 0 && tag === "<!doctype html>") continue;
    const close = /^<\/([a-z][\w-]*)>$/i.exec(tag);
    if (close) {
      const el = stack.pop()!;
      if (el.tag !== close[1]) throw new Error(`</${close[1]}> closes <${el.tag}>`);
      continue;
    }
    const open = /^<([a-z][\w-]*)((?:\s+[\w:-]+="[^"<>]*")*)(\/?)>$/i.exec(tag);
    if (!open) throw new Error(`malformed tag: ${tag}`);
    const el: El = { tag: open[1], attrs: {}, children: [] };
    for (const [, k, v] of open[2].matchAll(/\s+([\w:-]+)="([^"]*)"/g)) {
      if (k in el.attrs) throw new Error(`attribute ${k} twice in ${tag}`);
      if (/&(?!(amp|lt|gt|quot);)/.test(v)) throw new Error(`unescaped & in ${tag}`);
      el.attrs[k] = decode(v);
    }
    top().children.push(el);
    if (RAW.has(el.tag)) {
      const end = html.indexOf(`</${el.tag}>`, i);
      el.children.push(html.slice(i, end));
      i = end + el.tag.length + 3;
    } else if (!open[3] && !VOID.has(el.tag)) stack.push(el);
  }
  if (stack.length !== 1) throw new Error(`unclosed <${top().tag}>`);
  return root;
}

const all = (el: El, pred: (e: El) => boolean): El[] =>
  el.children.flatMap((c) => (typeof c === "string" ? [] : [...(pred(c) ? [c] : []), ...all(c, pred)]));
const byId = (root: El, id: string) => {
  const found = all(root, (e) => e.attrs.id === id);
  expect(found, `#${id}`).toHaveLength(1);
  return found[0];
};
const text = (el: El): string => el.children.map((c) => (typeof c === "string" ? c : text(c))).join("");
const kids = (el: El, tag?: string) =>
  el.children.filter((c): c is El => typeof c !== "string" && (!tag || c.tag === tag));
const cells = (tr: El) => kids(tr).map(text);
const shallow = (el: El) => ({ tag: el.tag, attrs: el.attrs });

describe("renderHtml (report.html)", () => {
  it("the figures table: each row's label, before and after; saved bytes and the arena with their units", () => {
    const doc = parse(renderHtml(report()));
    expect(all(doc, (e) => e.tag === "html")[0].attrs).toEqual({ lang: "en" });
    expect(text(all(doc, (e) => e.tag === "title")[0])).toBe("tsllm fusion report");
    expect(text(all(doc, (e) => e.tag === "h1")[0])).toBe("tsllm fusion report");
    const sub = all(doc, (e) => e.attrs.class === "sub");
    expect(sub.map(text)).toEqual([
      "4 decoder layers · tp 2 (rank 0) · bf16 · sm 90 · quant fp8 · limits 8 sequences, 512 tokens per step, 4096 positions",
    ]);
    const totals = byId(doc, "totals");
    expect(kids(totals).map((tr) => tr.attrs.id ?? "")).toEqual([
      "",
      "launches-layer",
      "launches-token",
      "traffic",
      "tensors",
      "saved",
      "arena",
    ]);
    expect(cells(kids(totals)[0])).toEqual(["", "before", "", "after"]);
    expect(cells(byId(doc, "launches-layer"))).toEqual(["kernel launches per decoder layer", "16", "→", "8"]);
    expect(cells(byId(doc, "launches-token"))).toEqual([
      "kernel launches per token (one step)",
      "515",
      "→",
      "259",
    ]);
    expect(cells(byId(doc, "traffic"))).toEqual([
      "activation traffic per token",
      "12.0 MiB",
      "→",
      "9.00 MiB",
    ]);
    expect(cells(byId(doc, "tensors"))).toEqual(["intermediate tensors per token", "516", "→", "260"]);
    expect(kids(byId(doc, "traffic")).map((td) => td.attrs)).toEqual([
      {},
      { class: "num" },
      { class: "num" },
      { class: "num big" },
    ]);
    expect(cells(byId(doc, "saved"))).toEqual([
      "Intermediates no longer written to and read back from global memory: 3.00 MiB per token (96.0 KiB per layer)",
    ]);
    expect(all(byId(doc, "saved"), (e) => e.tag === "span").map((e) => [e.attrs.class, text(e)])).toEqual([
      ["saved", "3.00 MiB per token"],
    ]);
    expect(cells(byId(doc, "arena"))).toEqual([
      "Activation arena: 600 MiB laid out by liveness against a naive sum of 30.0 GiB (51.2× smaller; 45.0 GiB before fusion), at the build limits",
    ]);
    expect(all(byId(doc, "arena"), (e) => e.tag === "span").map((e) => [e.attrs.class, text(e)])).toEqual([
      ["big", "600 MiB"],
    ]);
  });

  it("an unplanned, empty arena: naive, no ratio", () => {
    const doc = parse(
      renderHtml(report({ arena: { planned: false, bytes: 0, naiveBytes: 512, unfusedNaiveBytes: 1536 } })),
    );
    expect(cells(byId(doc, "arena"))).toEqual([
      "Activation arena: 0 B (not planned: naive) against a naive sum of 512 B (–× smaller; 1.50 KiB before fusion), at the build limits",
    ]);
  });

  it("the passes table: one row per pass with its status, matches, ops, where and notes", () => {
    const doc = parse(renderHtml(report()));
    const rows = kids(byId(doc, "passes"), "tr");
    expect(cells(rows[0])).toEqual(["pass", "matches", "ops", "where"]);
    expect(rows.slice(1).map((tr) => [tr.attrs, ...cells(tr)])).toEqual([
      [
        { class: "pass", "data-pass": "qkv-fusion" },
        "qkv-fusion ",
        "32",
        "580 → 516",
        "model.layers.{0..31}.self_attn",
      ],
      [
        { class: "pass", "data-pass": "epilogue-fusion" },
        "epilogue-fusion ",
        "64",
        "516 → 452",
        "model.layers.{0..31}.mlpmodel.layers.{0..31}.self_attnkept 2 addsfp32 residual",
      ],
      [{ class: "pass", "data-pass": "cse" }, "cse ", "–", "452 → 450", ""],
      [{ class: "pass", "data-pass": "norm-chain-fusion" }, "norm-chain-fusion ", "0", "450 → 450", ""],
      [
        { class: "pass", "data-pass": "attention-fusion" },
        "attention-fusion disabled",
        "–",
        "",
        "disabled (--disable-pass)",
      ],
      [
        { class: "pass", "data-pass": "memory-plan" },
        "memory-plan failed",
        "3",
        "450 → 449",
        "xoffset overflow",
      ],
    ]);
    // The structure of the "where" cells: one line per scope, notes in their own block, lines split by <br>.
    const where = (tr: El) => kids(tr)[3].children.map((c) => (typeof c === "string" ? c : shallow(c)));
    expect(where(rows[1])).toEqual(["model.layers.{0..31}.self_attn"]);
    expect(where(rows[2])).toEqual([
      "model.layers.{0..31}.mlp",
      { tag: "br", attrs: {} },
      "model.layers.{0..31}.self_attn",
      { tag: "div", attrs: { class: "notes" } },
    ]);
    const notes = all(rows[2], (e) => e.attrs.class === "notes")[0];
    expect(notes.children).toEqual(["kept 2 adds", { tag: "br", attrs: {}, children: [] }, "fp32 residual"]);
    expect(where(rows[3])).toEqual([]);
    expect(all(rows[6], (e) => e.tag === "span").map((e) => [e.attrs, text(e)])).toEqual([
      [{ class: "failed" }, "failed"],
    ]);
    expect(all(doc, (e) => e.attrs.class === "failed")).toHaveLength(1);
    expect(all(doc, (e) => e.attrs.class === "notes")).toHaveLength(3);
  });

  it("names with <, &, > and quotes are shown as written and never become markup", () => {
    const evil = `<script>alert("x&y&z")</script><b a='1'>`;
    const r = report({
      build: { ...report().build, dtype: `bf16<&>`, quant: `"fp8" & <q>` },
      passes: [
        pass({ name: `p"<u>`, matches: 1, where: [evil], notes: [`n & <br>`], opsBefore: 2, opsAfter: 1 }),
      ],
      drawing: {
        before: {
          layer: 1,
          launches: 1,
          nodes: [
            { kind: "op", op: `op"<x>&`, label: `a<b>&"c"`, detail: `d</text>&`, fused: false },
            { kind: "out", op: "output", label: "→ <layer>", detail: "", fused: false },
          ],
          edges: [{ from: 0, to: 1, bytesPerToken: 4, label: `f32[<T>&"]` }],
        },
        after: CHAIN,
      },
    });
    const doc = parse(renderHtml(r));
    expect(all(doc, (e) => e.tag === "script")).toHaveLength(1);
    expect(all(doc, (e) => ["b", "u", "x", "q", "layer", "text"].includes(e.tag)).map((e) => e.tag)).toEqual(
      // Only the drawings' labels: one a node of the "before" drawing (two with its detail), the chain's 4 + 1 + 1.
      ["text", "text", "text", "text", "text", "text", "text", "text", "text"],
    );
    expect(all(byId(doc, "passes"), (e) => e.tag === "br")).toEqual([]);
    expect(all(doc, (e) => e.attrs.class === "sub").map(text)).toEqual([
      `4 decoder layers · tp 2 (rank 0) · bf16<&> · sm 90 · quant "fp8" & <q> · limits 8 sequences, 512 tokens per step, 4096 positions`,
    ]);
    const row = kids(byId(doc, "passes"), "tr")[1];
    expect(row.attrs["data-pass"]).toBe(`p"<u>`);
    expect(cells(row)).toEqual([`p"<u> `, "1", "2 → 1", `${evil}n & <br>`]);
    const svg = byId(doc, "svg-before");
    const g = all(svg, (e) => e.tag === "g")[0];
    expect(g.attrs["data-op"]).toBe(`op"<x>&`);
    expect(g.attrs.class).toBe("node op other");
    expect(kids(g).map((e) => [e.tag, text(e)])).toEqual([
      ["title", `a<b>&"c" — d</text>&`],
      ["rect", ""],
      ["text", `a<b>&"c"`],
      ["text", "d</text>&"],
    ]);
    expect(text(all(svg, (e) => e.tag === "path" && e.attrs.class === "edge")[0])).toBe(
      `f32[<T>&"] · 4 B per token`,
    );
    expect(kids(all(svg, (e) => e.attrs["data-node"] === "1")[0]).map(text)).toEqual([
      "→ <layer>",
      "",
      "→ <layer>",
    ]);
  });
});

describe("renderSvg (the drawings)", () => {
  const svgOf = (d: Drawing, id = "s") => {
    const doc = parse(renderSvg(d, id));
    // The <svg> element and nothing around it.
    expect(doc.children).toHaveLength(1);
    expect(kids(doc, "svg")).toHaveLength(1);
    // No stray text in the drawing: only the <title> and <text> elements hold any.
    const loose = (el: El) => el.children.filter((c) => typeof c === "string" && c.trim() !== "");
    for (const el of [kids(doc)[0], ...all(kids(doc)[0], (e) => e.tag === "g" || e.tag === "defs")])
      expect(loose(el)).toEqual([]);
    return kids(doc)[0];
  };
  const nodes = (svg: El) => all(svg, (e) => e.tag === "g");
  const edges = (svg: El) => all(svg, (e) => e.tag === "path" && e.attrs.class === "edge");
  const at = (svg: El) => nodes(svg).map((g) => g.attrs.transform);

  it("a chain: one column, a row per step; every element of a node and an edge", () => {
    const svg = svgOf(CHAIN, "svg-x");
    // width 16 + 196 + 16; height 16 + 4 × 46 + 3 × 38 + 16.
    expect(svg.attrs).toEqual({
      id: "svg-x",
      class: "layer",
      xmlns: "http://www.w3.org/2000/svg",
      width: "228",
      height: "330",
      viewBox: "0 0 228 330",
      role: "img",
      "aria-label": "decoder layer 1, 2 kernel launches",
    });
    const [defs] = kids(svg, "defs");
    expect(kids(defs).map(shallow)).toEqual([
      {
        tag: "marker",
        attrs: {
          id: "svg-x-arrow",
          viewBox: "0 0 10 10",
          refX: "9",
          refY: "5",
          markerWidth: "7",
          markerHeight: "7",
          orient: "auto-start-reverse",
        },
      },
    ]);
    expect(kids(kids(defs)[0]).map(shallow)).toEqual([
      { tag: "path", attrs: { d: "M0,0 L10,5 L0,10 z", class: "arrowhead" } },
    ]);
    expect(at(svg)).toEqual([
      "translate(16,16)",
      "translate(16,100)",
      "translate(16,184)",
      "translate(16,268)",
    ]);
    expect(nodes(svg).map((g) => [g.attrs.class, g.attrs["data-node"], g.attrs["data-op"]])).toEqual([
      ["node in", "0", "rms_norm"],
      ["node op gemm fused", "1", "linear"],
      ["node op elem", "2", "silu"],
      ["node out", "3", "output"],
    ]);
    expect(nodes(svg).map((g) => kids(g).map(shallow))).toEqual([
      [
        { tag: "title", attrs: {} },
        { tag: "rect", attrs: { width: "196", height: "46", rx: "20" } },
        { tag: "text", attrs: { x: "98", y: "28", class: "label" } },
      ],
      [
        { tag: "title", attrs: {} },
        { tag: "rect", attrs: { width: "196", height: "46", rx: "6" } },
        { tag: "text", attrs: { x: "98", y: "19", class: "label" } },
        { tag: "text", attrs: { x: "98", y: "36", class: "detail" } },
        { tag: "text", attrs: { x: "190", y: "12", class: "badge" } },
      ],
      [
        { tag: "title", attrs: {} },
        { tag: "rect", attrs: { width: "196", height: "46", rx: "6" } },
        { tag: "text", attrs: { x: "98", y: "28", class: "label" } },
      ],
      [
        { tag: "title", attrs: {} },
        { tag: "rect", attrs: { width: "196", height: "46", rx: "20" } },
        { tag: "text", attrs: { x: "98", y: "28", class: "label" } },
      ],
    ]);
    expect(nodes(svg).map((g) => kids(g).map(text))).toEqual([
      ["layer 0 · rms_norm", "", "layer 0 · rms_norm"],
      ["linear (silu) — q 128→352", "", "linear (silu)", "q 128→352", "★"],
      ["silu", "", "silu"],
      ["→ layer 2", "", "→ layer 2"],
    ]);
    // From the bottom centre of one box to 2 above the top centre of the next: x 16 + 98, y 16 + 46 → 100 - 2.
    expect(edges(svg).map((e) => [e.attrs, text(e)])).toEqual([
      [
        {
          class: "edge",
          "data-edge": "0",
          "data-from": "0",
          "data-to": "1",
          d: "M114,62 C114,81 114,81 114,98",
          "marker-end": "url(#svg-x-arrow)",
        },
        "f32[T,128] · 512 B per token",
      ],
      [
        {
          class: "edge",
          "data-edge": "1",
          "data-from": "1",
          "data-to": "2",
          d: "M114,146 C114,165 114,165 114,182",
          "marker-end": "url(#svg-x-arrow)",
        },
        "f32[T,352] · 1.37 KiB per token",
      ],
      [
        {
          class: "edge",
          "data-edge": "2",
          "data-from": "2",
          "data-to": "3",
          d: "M114,230 C114,249 114,249 114,266",
          "marker-end": "url(#svg-x-arrow)",
        },
        "f32[T,352] · 3.00 MiB per token",
      ],
    ]);
  });

  it("rows by the longest path from the inputs, centred; an op without inputs in the first op row; outputs last", () => {
    const op = (name: string) => ({ kind: "op" as const, op: name, label: name, detail: "", fused: false });
    const d: Drawing = {
      layer: 3,
      launches: 6,
      nodes: [
        { kind: "in", op: "input", label: "x", detail: "", fused: false }, // 0: row 0
        op("rms_norm"), // 1: row 1
        { kind: "in", op: "input", label: "y", detail: "", fused: false }, // 2: row 0
        op("attention"), // 3: reads 1 and 2 → row 2
        op("add"), // 4: reads 0 and 3 → row 3 (longest path), not 1
        op("all_reduce"), // 5: reads nothing → row 1
        { kind: "out", op: "output", label: "→ after the layers", detail: "", fused: false }, // 6: row 5
        op("mul"), // 7: reads 4 → row 4, the deepest op
      ],
      edges: [
        { from: 0, to: 1, bytesPerToken: 1, label: "a" },
        { from: 1, to: 3, bytesPerToken: 1, label: "b" },
        { from: 2, to: 3, bytesPerToken: 1, label: "c" },
        { from: 0, to: 4, bytesPerToken: 1, label: "d" },
        { from: 3, to: 4, bytesPerToken: 1, label: "e" },
        { from: 4, to: 6, bytesPerToken: 1, label: "f" },
        { from: 4, to: 7, bytesPerToken: 1, label: "g" },
      ],
    };
    const svg = svgOf(d);
    // Rows: [0, 2], [1, 5], [3], [4], [7], [6]: 2 columns, width 16 + 2 × 196 + 20 + 16 = 444, height 16 + 6 × 84 - 38 + 16.
    expect([svg.attrs.width, svg.attrs.height, svg.attrs.viewBox]).toEqual(["444", "498", "0 0 444 498"]);
    expect(at(svg)).toEqual([
      "translate(16,16)",
      "translate(16,100)",
      "translate(232,16)",
      "translate(124,184)",
      "translate(124,268)",
      "translate(232,100)",
      "translate(124,436)",
      "translate(124,352)",
    ]);
    expect(nodes(svg).map((g) => g.attrs.class)).toEqual([
      "node in",
      "node op norm",
      "node in",
      "node op attn",
      "node op elem",
      "node op comm",
      "node out",
      "node op elem",
    ]);
    // 0 → 4: from (16 + 98, 16 + 46) to (124 + 98, 268 - 2), the bend halfway down.
    expect(edges(svg)[3].attrs.d).toBe("M114,62 C114,165 222,165 222,266");
    // 1 → 3: from x 114 to 222, y 146 → 184.
    expect(edges(svg)[1].attrs.d).toBe("M114,146 C114,165 222,165 222,182");
  });

  it("a layer with no inputs: the ops start one row down (row 0 left empty), outputs below the deepest op", () => {
    const d: Drawing = {
      layer: 0,
      launches: 2,
      nodes: [
        { kind: "op", op: "embedding", label: "e", detail: "", fused: false },
        { kind: "op", op: "linear", label: "l", detail: "", fused: false },
        { kind: "out", op: "output", label: "o", detail: "", fused: false },
      ],
      edges: [
        { from: 0, to: 1, bytesPerToken: 1, label: "a" },
        { from: 1, to: 2, bytesPerToken: 1, label: "b" },
      ],
    };
    const svg = svgOf(d);
    expect([svg.attrs.width, svg.attrs.height]).toEqual(["228", "330"]);
    expect(at(svg)).toEqual(["translate(16,100)", "translate(16,184)", "translate(16,268)"]);
  });

  it("a cycle (no valid graph has one) is drawn, not a stack overflow", () => {
    const op = (name: string) => ({ kind: "op" as const, op: name, label: name, detail: "", fused: false });
    const d: Drawing = {
      layer: 0,
      launches: 2,
      nodes: [op("add"), op("mul")],
      edges: [
        { from: 0, to: 1, bytesPerToken: 1, label: "a" },
        { from: 1, to: 0, bytesPerToken: 1, label: "b" },
      ],
    };
    // add: 0 while visiting, mul = 1 + 0 = 1, add = 1 + 1 = 2.
    expect(at(svgOf(d))).toEqual(["translate(16,184)", "translate(16,100)"]);
  });

  it("labels over 31 characters and details over 34 are cut with an ellipsis; the title keeps them whole", () => {
    const l31 = "abcdefghijabcdefghijabcdefghijk";
    const d34 = "012345678901234567890123456789abcd";
    const node = (label: string, detail: string) => ({
      kind: "op" as const,
      op: "gelu",
      label,
      detail,
      fused: false,
    });
    const svg = svgOf({
      layer: 0,
      launches: 2,
      nodes: [node(l31, d34), node(`${l31}L`, `${d34}D`)],
      edges: [],
    });
    expect(nodes(svg).map((g) => kids(g).map(text))).toEqual([
      [`${l31} — ${d34}`, "", l31, d34],
      [`${l31}L — ${d34}D`, "", `${l31.slice(0, 30)}…`, `${d34.slice(0, 33)}…`],
    ]);
    // Two ops in one row (row 1: no inputs above them), 16 + 2 × 196 + 20 + 16 wide, side by side.
    expect(at(svg)).toEqual(["translate(16,100)", "translate(232,100)"]);
    expect([svg.attrs.width, svg.attrs.height]).toEqual(["444", "162"]);
  });

  it("renderHtml draws both layers with their captions, the columns sized by the drawings' widths", () => {
    const wide: Drawing = {
      ...CHAIN,
      layer: 2,
      launches: 5,
      nodes: [...CHAIN.nodes, { kind: "in", op: "input", label: "z", detail: "", fused: false }],
    };
    const doc = parse(renderHtml(report({ drawing: { before: wide, after: CHAIN } })));
    const drawings = all(doc, (e) => e.attrs.class === "drawings")[0];
    expect(drawings.attrs.style).toBe("grid-template-columns: minmax(0, 444fr) minmax(0, 228fr)");
    expect(
      kids(drawings).map((f) => [f.attrs.id, text(kids(f, "figcaption")[0]), kids(f, "svg")[0].attrs.id]),
    ).toEqual([
      ["before", "Layer 2 before fusion: 5 kernel launches", "svg-before"],
      ["after", "Layer 1 after fusion: 2 kernel launches", "svg-after"],
    ]);
    expect(byId(doc, "svg-before").attrs.width).toBe("444");
    expect(
      all(byId(doc, "svg-after"), (e) => e.tag === "path" && e.attrs.class === "edge")[0].attrs["marker-end"],
    ).toBe("url(#svg-after-arrow)");
  });
});
