// Figures of one graph for the fusion report: kernel launches (per step and per decoder layer),
// activation bytes per token and the global-memory traffic they cause, and a drawing of one layer.
//
// Decoder layers are found from the graph alone: a node belongs to layer N when it reads a weight whose
// checkpoint name has ".N." in it (model.layers.N.…, transformer.h.N.…), or when it is an attention op
// of layer N; other nodes inherit the highest layer of their producers; nodes reading only
// layer-less weights (embedding, final norm, lm_head) are outside every layer.
import { DTYPE_BYTES, type Graph, type Node } from "../ir/types.ts";
import { chainOf, chainText } from "../ops/ew-chain.ts";
import { getOp } from "../ops/index.ts";
import { moeAttrs } from "../ops/moe.ts";
import { valuesPerStoredColumn } from "../quant/weights.ts";
import { fmtBytes } from "./bytes.ts";

/** Every op launches one kernel except those the registry marks as views (none today). */
export function isLaunch(op: string): boolean {
  return getOp(op).report !== "view";
}

/** The node's kernel launches in a decode step and its kernels' own scratch traffic (registry `kernels`). */
function kernelsOf(g: Graph, n: Node): { launches: number; scratchBytesPerToken: number } {
  const def = getOp(n.op);
  if (def.report === "view") return { launches: 0, scratchBytesPerToken: 0 };
  if (!def.kernels) return { launches: 1, scratchBytesPerToken: 0 };
  const types = n.inputs.map((id) => {
    const v = id === null ? undefined : g.values.get(id);
    return v ? { dtype: v.dtype, shape: v.shape } : null;
  });
  return def.kernels(types, n.attrs);
}
const launchesOf = (g: Graph, nodes: Node[]) => nodes.reduce((a, n) => a + kernelsOf(g, n).launches, 0);

const LAYER_RE = /\.(\d+)\./;

export function nodeLayers(g: Graph): (number | null)[] {
  const layerOfValue = new Map<number, number | null>();
  return g.nodes.map((n) => {
    let layer: number | null = null;
    let weighted = false;
    for (const id of n.inputs) {
      const v = id === null ? undefined : g.values.get(id);
      if (v?.kind !== "weight" || v.recipe?.kind === "constant") continue;
      weighted = true;
      const m = LAYER_RE.exec(`${v.name}`);
      if (m) layer = Math.max(layer ?? -1, Number(m[1]));
    }
    if (layer === null && typeof n.attrs.layer === "number") layer = n.attrs.layer;
    if (layer === null && !weighted)
      for (const id of n.inputs) {
        const l = id === null ? null : (layerOfValue.get(id) ?? null);
        if (l !== null) layer = Math.max(layer ?? -1, l);
      }
    for (const o of n.outputs) layerOfValue.set(o, layer);
    return layer;
  });
}

/** Bytes of a weight (static shape), 0 for a missing input. */
function weightBytes(g: Graph, id: number | null | undefined): number {
  const v = id == null ? undefined : g.values.get(id);
  return v ? v.shape.reduce<number>((a, d) => a * Number(d), 1) * DTYPE_BYTES[v.dtype] : 0;
}

/** Bytes of a value per token: symbolic dims (num_tokens, num_logits) bound to 1. */
export function bytesPerToken(g: Graph, id: number): number {
  const v = g.values.get(id)!;
  let n = 1;
  for (const d of v.shape) n *= typeof d === "number" ? d : 1;
  return n * DTYPE_BYTES[v.dtype];
}

export interface GraphFigures {
  /** Nodes in the program. */
  ops: number;
  /** Kernel launches per step, i.e. per generated token of a decode step. */
  launches: number;
  /** Kernel launches of the busiest decoder layer. */
  launchesPerLayer: number;
  layers: number;
  /** Op histogram of the drawn layer. */
  layerOps: Record<string, number>;
  /** Activation tensors per token and their bytes (each written once). */
  activations: number;
  activationBytesPerToken: number;
  /** Activation bytes written plus read back per token, whole step and the drawn layer. */
  trafficPerToken: number;
  layerTrafficPerToken: number;
}

export interface DrawNode {
  kind: "op" | "in" | "out";
  op: string;
  label: string;
  detail: string;
  /** A fused kernel (made by a pass), drawn highlighted. */
  fused: boolean;
}
export interface DrawEdge {
  from: number;
  to: number;
  bytesPerToken: number;
  label: string;
}
export interface Drawing {
  layer: number;
  launches: number;
  nodes: DrawNode[];
  edges: DrawEdge[];
}

/** The layer drawn and quoted: the second one when there is one (the first reads the embedding). */
export function representativeLayer(layers: (number | null)[]): number {
  const max = Math.max(-1, ...layers.map((l) => l ?? -1));
  return max >= 1 ? 1 : 0;
}

function traffic(g: Graph, nodes: Node[]): number {
  const produced = new Set<number>();
  for (const n of g.nodes) for (const o of n.outputs) produced.add(o);
  let t = 0;
  for (const n of nodes) {
    for (const o of n.outputs) t += bytesPerToken(g, o);
    for (const id of n.inputs) if (id !== null && produced.has(id)) t += bytesPerToken(g, id);
    t += kernelsOf(g, n).scratchBytesPerToken;
  }
  return t;
}

export function graphFigures(g: Graph): GraphFigures {
  const layers = nodeLayers(g);
  const perLayer = new Map<number, number>();
  g.nodes.forEach((n, i) => {
    const l = layers[i];
    if (l !== null && isLaunch(n.op)) perLayer.set(l, (perLayer.get(l) ?? 0) + kernelsOf(g, n).launches);
  });
  const rep = representativeLayer(layers);
  const repNodes = g.nodes.filter((_, i) => layers[i] === rep);
  const layerOps: Record<string, number> = {};
  for (const n of repNodes) layerOps[n.op] = (layerOps[n.op] ?? 0) + 1;
  let activations = 0;
  let activationBytes = 0;
  for (const n of g.nodes)
    for (const o of n.outputs) {
      activations++;
      activationBytes += bytesPerToken(g, o);
    }
  return {
    ops: g.nodes.length,
    launches: launchesOf(g, g.nodes),
    launchesPerLayer: Math.max(0, ...perLayer.values()),
    layers: perLayer.size,
    layerOps,
    activations,
    activationBytesPerToken: activationBytes,
    trafficPerToken: traffic(g, g.nodes),
    layerTrafficPerToken: traffic(g, repNodes),
  };
}

function shortName(name: string): string {
  const parts = name.split(".").filter((p) => p !== "weight" && p !== "bias");
  const i = parts.findIndex((p) => /^\d+$/.test(p));
  return (i >= 0 ? parts.slice(i + 1) : parts.slice(-2)).join(".") || name;
}

function describe(g: Graph, n: Node): { label: string; detail: string; fused: boolean } {
  const w = n.inputs
    .map((id) => (id === null ? undefined : g.values.get(id)))
    .find((v) => v?.kind === "weight" && v.recipe?.kind !== "constant");
  const a = n.attrs;
  let label = n.op;
  let detail = w ? shortName(w.name) : "";
  let fused = getOp(n.op).report === "fused";
  if (n.op === "linear" || n.op === "quant_linear") {
    // quant_linear: x, w, scales, bias?, residual?
    const [bi, ri] = n.op === "linear" ? [2, 3] : [3, 4];
    const ep: string[] = [];
    if (n.op === "quant_linear" && typeof a.quant === "string") ep.push(a.quant);
    if (n.inputs[bi] != null) ep.push("bias");
    if ((a.activation ?? "none") !== "none") ep.push(String(a.activation));
    const post = chainOf(a, "post");
    if (post.ops.length) ep.push(chainText(post));
    if (n.inputs[ri] != null) ep.push("+residual");
    if (ep.length) label += ` (${ep.join(", ")})`;
    // The input dim, not the stored columns (int4-wo packs two values a byte).
    if (w) detail += ` ${Number(w.shape[1]) * valuesPerStoredColumn(String(a.quant))}→${w.shape[0]}`;
    const parts = w?.recipe?.kind === "checkpoint" ? w.recipe.parts.length : 1;
    if (parts > 1 || (a.activation ?? "none") !== "none" || post.ops.length || n.inputs[ri] != null)
      fused = true;
  } else if (n.op === "moe") {
    // What one routed token reads: top_k experts' w1, w3 and w2 (a batch-1 decode step's bandwidth), with their
    // scales when quantised (inputs 5–7; the kernels read them too, as roofline.ts counts): without them an
    // int4-wo group-32 expert read 20 % less than the engine stores.
    const { E, K, start, local } = moeAttrs(a);
    const perExpert = [2, 3, 4, 5, 6, 7].reduce((t, k) => t + weightBytes(g, n.inputs[k]), 0) / local;
    if (typeof a.quant === "string") label += ` (${a.quant})`;
    const here = local < E ? ` (${start}–${start + local - 1} on this rank)` : "";
    detail = `${E} experts${here}, top ${K} · ${fmtBytes(perExpert)} per expert`;
  } else if (n.op === "fused_attention") {
    detail = `L${a.layer} ${a.num_heads}/${a.num_kv_heads} heads, rope ${a.rope_style} ${a.rotary_dim}/${a.head_dim}`;
  } else if (n.op === "attention") {
    detail = `L${a.layer} ${a.num_heads}/${a.num_kv_heads} heads`;
  } else if (n.op === "rope") {
    detail = `${a.style} ${a.rotary_dim}/${a.head_dim}`;
  } else if (/(rms|layer)_norm$/.test(n.op)) {
    if (a.weight_offset) detail += ` (w + ${a.weight_offset})`;
    // Elementwise ops folded in by norm-chain-fusion: "(scale 2 → norm → softcap 30)".
    const [pre, post] = [chainOf(a, "pre"), chainOf(a, "post")];
    if (pre.ops.length || post.ops.length) {
      label += ` (${[pre.ops.length ? `${chainText(pre)} →` : "", "norm", post.ops.length ? `→ ${chainText(post)}` : ""].filter(Boolean).join(" ")})`;
      fused = true;
    }
  } else if (n.op === "scale" || n.op === "softcap") {
    detail = n.op === "scale" ? `· ${a.factor}` : `cap ${a.cap}`;
  } else if (n.op === "gated_act") {
    detail = String(a.activation);
  } else if (n.op === "split") {
    detail = (a.sizes as number[]).join(" | ");
  }
  return { label, detail, fused };
}

/** One decoder layer as nodes and edges: its ops, plus the values that come in and go out. */
export function drawLayer(g: Graph, layer: number): Drawing {
  const layers = nodeLayers(g);
  const nodes: DrawNode[] = [];
  const edges: DrawEdge[] = [];
  const at = new Map<Node, number>();
  const producer = new Map<number, { node: Node; layer: number | null }>();
  g.nodes.forEach((n, i) => {
    for (const o of n.outputs) producer.set(o, { node: n, layer: layers[i] });
  });
  const inputName = new Map(Object.entries(g.inputs).map(([k, id]) => [id, k]));
  const ins = new Map<number, number>();
  const ops = g.nodes.filter((_, i) => layers[i] === layer);
  for (const n of ops) {
    const d = describe(g, n);
    at.set(n, nodes.length);
    nodes.push({ kind: "op", op: n.op, ...d });
  }
  const label = (id: number) => {
    const v = g.values.get(id)!;
    return `${v.dtype}[${v.shape.map((d) => (typeof d === "number" ? d : d.sym)).join(",")}]`;
  };
  for (const n of ops)
    for (const id of n.inputs) {
      if (id === null) continue;
      const v = g.values.get(id)!;
      if (v.kind === "weight") continue;
      const p = producer.get(id);
      let from: number;
      if (p && at.has(p.node)) from = at.get(p.node)!;
      else {
        if (!ins.has(id)) {
          const pw = p ? describe(g, p.node).detail.split(" ")[0] : "";
          const what = p
            ? `${p.layer === null ? "" : `layer ${p.layer} · `}${p.node.op}${(p.node.op === "linear" || p.node.op === "quant_linear") && pw ? ` ${pw}` : ""}`
            : (inputName.get(id) ?? v.name);
          ins.set(id, nodes.length);
          nodes.push({ kind: "in", op: p ? p.node.op : "input", label: what, detail: "", fused: false });
        }
        from = ins.get(id)!;
      }
      edges.push({ from, to: at.get(n)!, bytesPerToken: bytesPerToken(g, id), label: label(id) });
    }
  // Values that leave the layer (read by later layers or graph outputs).
  const readers = new Map<number, (number | null)[]>();
  g.nodes.forEach((n, i) => {
    for (const id of n.inputs) if (id !== null) readers.set(id, [...(readers.get(id) ?? []), layers[i]]);
  });
  const outputs = new Set(Object.values(g.outputs));
  for (const n of ops)
    for (const o of n.outputs) {
      const outside = (readers.get(o) ?? []).filter((l) => l !== layer);
      if (!outside.length && !outputs.has(o)) continue;
      const next = outside.filter((l): l is number => l !== null);
      const to = nodes.length;
      nodes.push({
        kind: "out",
        op: "output",
        label: next.length ? `→ layer ${Math.min(...next)}` : "→ after the layers",
        detail: "",
        fused: false,
      });
      edges.push({ from: at.get(n)!, to, bytesPerToken: bytesPerToken(g, o), label: label(o) });
    }
  return { layer, launches: launchesOf(g, ops), nodes, edges };
}
