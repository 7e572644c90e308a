// report.html: one self-contained page (inline SVG, CSS and a few lines of JS; nothing fetched) that
// draws one decoder layer before and after fusion, with the report's figures beside the drawings.

import { fmtBytes } from "./bytes.ts";
import type { Drawing } from "./figures.ts";
import type { FusionReport } from "./report.ts";

const esc = (s: string) =>
  s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");

const W = 196;
const H = 46;
const GX = 20;
const GY = 38;
const PAD = 16;

const CATEGORY: Record<string, string> = {
  linear: "gemm",
  quant_linear: "gemm",
  attention: "attn",
  fused_attention: "attn",
  rope: "attn",
  rms_norm: "norm",
  layer_norm: "norm",
  add_rms_norm: "norm",
  add_layer_norm: "norm",
  add: "elem",
  mul: "elem",
  silu: "elem",
  gelu: "elem",
  gated_act: "elem",
  all_reduce: "comm",
  all_gather: "comm",
};

/** Rows by longest path from the layer's inputs; within a row, program order. */
function layout(d: Drawing): { x: number[]; y: number[]; width: number; height: number } {
  const depth: number[] = d.nodes.map((n) => (n.kind === "in" ? 0 : -1));
  const preds = d.nodes.map(() => [] as number[]);
  for (const e of d.edges) preds[e.to].push(e.from);
  const visit = (i: number): number => {
    if (depth[i] >= 0) return depth[i];
    depth[i] = 0; // guards against cycles (none in a valid graph)
    depth[i] = 1 + Math.max(0, ...preds[i].map(visit));
    return depth[i];
  };
  d.nodes.forEach((n, i) => {
    if (n.kind === "op") visit(i);
  });
  const maxOp = Math.max(0, ...depth);
  d.nodes.forEach((n, i) => {
    if (n.kind === "out") depth[i] = maxOp + 1;
    if (n.kind === "op" && preds[i].length === 0) depth[i] = 1;
  });
  const rows: number[][] = [];
  d.nodes.forEach((_, i) => {
    (rows[depth[i]] ??= []).push(i);
  });
  // Array.from, not rows.map: with no inputs row 0 is a hole, which map keeps (and Math.max of a hole is NaN).
  const cols = Math.max(1, ...Array.from(rows, (r) => r?.length ?? 0));
  const width = PAD * 2 + cols * W + (cols - 1) * GX;
  const x: number[] = [];
  const y: number[] = [];
  rows.forEach((r, ri) => {
    if (!r) return;
    const rowW = r.length * W + (r.length - 1) * GX;
    r.forEach((i, k) => {
      x[i] = (width - rowW) / 2 + k * (W + GX);
      y[i] = PAD + ri * (H + GY);
    });
  });
  return { x, y, width, height: PAD * 2 + rows.length * (H + GY) - GY };
}

export function renderSvg(d: Drawing, id: string): string {
  const { x, y, width, height } = layout(d);
  const parts: string[] = [];
  parts.push(
    `<svg id="${id}" class="layer" xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" role="img" aria-label="decoder layer ${d.layer}, ${d.launches} kernel launches">`,
    `<defs><marker id="${id}-arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" class="arrowhead"/></marker></defs>`,
  );
  d.edges.forEach((e, k) => {
    const x1 = x[e.from] + W / 2;
    const y1 = y[e.from] + H;
    const x2 = x[e.to] + W / 2;
    const y2 = y[e.to];
    const my = (y1 + y2) / 2;
    parts.push(
      `<path class="edge" data-edge="${k}" data-from="${e.from}" data-to="${e.to}" d="M${x1},${y1} C${x1},${my} ${x2},${my} ${x2},${y2 - 2}" marker-end="url(#${id}-arrow)"><title>${esc(e.label)} · ${esc(fmtBytes(e.bytesPerToken))} per token</title></path>`,
    );
  });
  d.nodes.forEach((n, i) => {
    const cls = ["node", n.kind, n.kind === "op" ? (CATEGORY[n.op] ?? "other") : "", n.fused ? "fused" : ""]
      .filter(Boolean)
      .join(" ");
    const rx = n.kind === "op" ? 6 : 20;
    const title = `${n.label}${n.detail ? ` — ${n.detail}` : ""}`;
    parts.push(
      `<g class="${cls}" data-node="${i}" data-op="${esc(n.op)}" transform="translate(${x[i]},${y[i]})">`,
      `<title>${esc(title)}</title>`,
      `<rect width="${W}" height="${H}" rx="${rx}"/>`,
      `<text x="${W / 2}" y="${n.detail ? 19 : 28}" class="label">${esc(n.label.length > 31 ? `${n.label.slice(0, 30)}…` : n.label)}</text>`,
      n.detail
        ? `<text x="${W / 2}" y="36" class="detail">${esc(n.detail.length > 34 ? `${n.detail.slice(0, 33)}…` : n.detail)}</text>`
        : "",
      n.fused ? `<text x="${W - 6}" y="12" class="badge">★</text>` : "",
      `</g>`,
    );
  });
  parts.push("</svg>");
  return parts.join("\n");
}

const CSS = `
:root { --fg:#1d2330; --muted:#5b6473; --line:#c9ced8; --bg:#f7f8fa; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--fg); background: var(--bg); }
header { padding: 18px 24px 8px; }
h1 { font-size: 20px; margin: 0 0 4px; }
h2 { font-size: 15px; margin: 18px 0 8px; }
.sub { color: var(--muted); }
main { display: flex; gap: 24px; padding: 8px 24px 24px; align-items: flex-start; }
#figures { flex: 0 0 400px; background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 8px 16px 16px; }
table { border-collapse: collapse; width: 100%; }
td, th { padding: 4px 6px; border-bottom: 1px solid #eceef2; text-align: left; vertical-align: top; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.big { font-size: 22px; font-weight: 600; }
.saved { color: #1f7a3a; font-weight: 600; }
.failed { color: #b3261e; font-weight: 600; }
.notes { color: var(--muted); font-size: 12px; }
main > section:last-child { flex: 1 1 auto; min-width: 0; }
.drawings { display: grid; grid-template-columns: minmax(0, 1fr) minmax(0, 1fr); gap: 18px; align-items: start; }
figure svg { display: block; max-width: 100%; height: auto; margin: 0 auto; }
figure { margin: 0; background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 8px; }
figcaption { font-weight: 600; padding: 2px 6px 8px; }
svg.layer text { font: 12px system-ui, sans-serif; text-anchor: middle; fill: var(--fg); pointer-events: none; }
svg.layer text.detail { font-size: 10.5px; fill: #3b4250; }
svg.layer text.badge { font-size: 10px; text-anchor: end; fill: #8a4b00; font-weight: 700; }
svg.layer .edge { fill: none; stroke: #9aa3b2; stroke-width: 1.4; }
svg.layer .edge.hl { stroke: #d9480f; stroke-width: 2.4; }
svg.layer .arrowhead { fill: #9aa3b2; }
svg.layer .node rect { stroke: #56607a; stroke-width: 1; fill: #eef0f4; }
svg.layer .node.in rect, svg.layer .node.out rect { fill: #fff; stroke-dasharray: 4 3; }
svg.layer .gemm rect { fill: #dce8f7; stroke: #3b6aa8; }
svg.layer .attn rect { fill: #ecdff2; stroke: #7b4a91; }
svg.layer .norm rect { fill: #dff1dc; stroke: #3f8a37; }
svg.layer .elem rect { fill: #fde9d6; stroke: #c46a16; }
svg.layer .comm rect { fill: #fbdada; stroke: #b53a3a; }
svg.layer .fused rect { stroke-width: 2.6; }
svg.layer .node:hover rect { filter: brightness(0.95); }
.legend span { display: inline-block; margin-right: 10px; font-size: 12px; }
.legend i { display: inline-block; width: 12px; height: 12px; border-radius: 3px; margin-right: 4px; vertical-align: -2px; border: 1px solid #56607a; }
`;

const JS = `
// Hovering a node highlights the tensors it reads and writes.
for (const svg of document.querySelectorAll("svg.layer")) {
  for (const g of svg.querySelectorAll("g.node")) {
    const i = g.dataset.node;
    const edges = svg.querySelectorAll('.edge[data-from="' + i + '"], .edge[data-to="' + i + '"]');
    g.addEventListener("mouseenter", () => edges.forEach((e) => e.classList.add("hl")));
    g.addEventListener("mouseleave", () => edges.forEach((e) => e.classList.remove("hl")));
  }
}
`;

export function renderHtml(r: FusionReport): string {
  const b = r.build;
  const fig = (label: string, before: string, after: string, id: string) =>
    `<tr id="${id}"><td>${esc(label)}</td><td class="num">${esc(before)}</td><td class="num">→</td><td class="num big">${esc(after)}</td></tr>`;
  const passRows = r.passes
    .map((p) => {
      const status =
        p.status === "failed"
          ? `<span class="failed">failed</span>`
          : p.status === "disabled"
            ? "disabled"
            : "";
      const notes = p.notes.length ? `<div class="notes">${p.notes.map(esc).join("<br>")}</div>` : "";
      return `<tr class="pass" data-pass="${esc(p.name)}"><td>${esc(p.name)} ${status}</td><td class="num">${p.matches ?? "–"}</td><td class="num">${p.status === "disabled" ? "" : `${p.opsBefore} → ${p.opsAfter}`}</td><td>${p.where.map(esc).join("<br>")}${notes}</td></tr>`;
    })
    .join("\n");
  const a = r.arena;
  const x = a.bytes ? (a.naiveBytes / a.bytes).toFixed(1) : "–";
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>tsllm fusion report</title>
<style>${CSS}</style>
</head>
<body>
<header>
<h1>tsllm fusion report</h1>
<div class="sub">${r.model.numLayers} decoder layers · tp ${b.tp} (rank 0) · ${esc(b.dtype)} · sm ${b.sm} · quant ${esc(b.quant)} · limits ${b.max_batch_size} sequences, ${b.max_num_tokens} tokens per step, ${b.max_seq_len} positions</div>
</header>
<main>
<section id="figures">
<h2>Figures</h2>
<table id="totals">
<tr><th></th><th class="num">before</th><th></th><th class="num">after</th></tr>
${fig("kernel launches per decoder layer", String(r.before.launchesPerLayer), String(r.after.launchesPerLayer), "launches-layer")}
${fig("kernel launches per token (one step)", String(r.before.launches), String(r.after.launches), "launches-token")}
${fig("activation traffic per token", fmtBytes(r.before.trafficPerToken), fmtBytes(r.after.trafficPerToken), "traffic")}
${fig("intermediate tensors per token", String(r.before.activations), String(r.after.activations), "tensors")}
<tr id="saved"><td colspan="4">Intermediates no longer written to and read back from global memory: <span class="saved">${esc(fmtBytes(r.savedBytesPerToken))} per token</span> (${esc(fmtBytes(r.savedLayerBytesPerToken))} per layer)</td></tr>
<tr id="arena"><td colspan="4">Activation arena: <span class="big">${esc(fmtBytes(a.bytes))}</span> ${a.planned ? "laid out by liveness" : "(not planned: naive)"} against a naive sum of ${esc(fmtBytes(a.naiveBytes))} (${x}× smaller; ${esc(fmtBytes(a.unfusedNaiveBytes))} before fusion), at the build limits</td></tr>
</table>
<h2>Passes</h2>
<table id="passes">
<tr><th>pass</th><th class="num">matches</th><th class="num">ops</th><th>where</th></tr>
${passRows}
</table>
</section>
<section>
<div class="legend"><span><i style="background:#dce8f7"></i>GEMM</span><span><i style="background:#ecdff2"></i>attention / rope</span><span><i style="background:#dff1dc"></i>norm</span><span><i style="background:#fde9d6"></i>elementwise</span><span><i style="background:#fbdada"></i>collective</span><span><i style="background:#fff;border-style:dashed"></i>in / out of the layer</span><span>★ thick border: fused kernel</span></div>
<div class="drawings" style="grid-template-columns: minmax(0, ${layout(r.drawing.before).width}fr) minmax(0, ${layout(r.drawing.after).width}fr)">
<figure id="before"><figcaption>Layer ${r.drawing.before.layer} before fusion: ${r.drawing.before.launches} kernel launches</figcaption>
${renderSvg(r.drawing.before, "svg-before")}
</figure>
<figure id="after"><figcaption>Layer ${r.drawing.after.layer} after fusion: ${r.drawing.after.launches} kernel launches</figcaption>
${renderSvg(r.drawing.after, "svg-after")}
</figure>
</div>
</section>
</main>
<script>${JS}</script>
</body>
</html>
`;
}
