// Tensor-parallel sharding (Megatron-style, as TensorRT-LLM does it): one graph per rank.
//
// - column-parallel linears (q/k/v, gate/up, fc_in): rank r keeps rows [r·N/tp, (r+1)·N/tp) of the
//   weight and bias, so its output holds its share of the features (whole attention heads);
// - row-parallel linears (o_proj, down, out_proj, fc_out): rank r keeps columns [r·K/tp, (r+1)·K/tp)
//   of the weight, then an all_reduce sums the partial products; a bias is added by rank 0 only, so
//   the sum counts it once;
// - the vocab-parallel embedding keeps rows [r·V/tp, …) with `vocab_start`, other ids give zeros, and
//   an all_reduce assembles the rows; the vocab-parallel lm_head keeps rows (logit columns) and an
//   all_gather concatenates the logits;
// - attention heads are divided: each rank runs num_heads/tp query heads and num_kv_heads/tp KV heads;
//   when tp exceeds num_kv_heads, every rank holds the one KV head its query heads use (KV heads are
//   replicated tp/num_kv_heads times, as TensorRT-LLM does);
// - mixture-of-experts blocks, from the stacked expert weights' hints (src/dsl/layers.ts sparseMoe:
//   "expert_column" for gate / up [E·I, H], "expert_row" for down [E·H, I], `experts` E). As
//   TensorRT-LLM maps them, the tp ranks form moe_ep_size expert groups: rank r holds experts
//   [(r mod ep)·E/ep, …) (expert parallelism; the node gets expert_start / local_experts) and, of each,
//   rows [⌊r/ep⌋·I/mtp, …) of w1/w3 and those columns of w2 (mtp = tp/ep: each expert's intermediate
//   dim split, TensorRT-LLM's moe_tp_mode). Every rank routes every token (the router is replicated),
//   adds its experts' partial outputs, and an all_reduce after the block sums them;
// - everything else (norms, rope tables, the MoE router) is replicated.
//
// Runs on the model graph before the fusion passes. Slices are per-part recipe transforms, so a later
// pass that concatenates recipes (QKV, gate/up fusion) concatenates the rank's slices. All rank graphs
// have the same node list and value ids; they differ in weight recipes, `vocab_start` and which rank
// adds row-parallel biases. Indivisible shapes are an error naming the dimension.
import type { BuildConfig } from "../src/engine/format.ts";
import { addValue, cloneGraph, inferNode } from "../src/ir/builder.ts";
import type { Graph, Node, Value } from "../src/ir/types.ts";
import type { Transform } from "../src/weights/recipe.ts";

export class ShardError extends Error {
  override name = "ShardError";
}

/** How one weight is cut: rows or columns [start, end) per rank, or the whole tensor on every rank. */
type Cut = {
  axis: 0 | 1;
  range: (rank: number) => [number, number];
  /** A stacked weight (MoE experts, one recipe part each): keep parts [start, end), slice each part. */
  parts?: (rank: number) => [number, number];
} | null;

interface Plan {
  /** Weight value id → its cut. Weights not listed are replicated. */
  cuts: Map<number, Cut>;
  /** Row-parallel bias value ids (added by rank 0 only). */
  rankZeroBias: Set<number>;
  /** Node attrs to set on every rank: node index → attrs. */
  attrs: Map<number, Record<string, number>>;
  /** Node attrs that differ per rank (vocab_start, expert_start): node index → attrs of a rank. */
  rankAttrs: Map<number, (rank: number) => Record<string, number>>;
  /** After node i: insert a collective. */
  collectives: { after: number; op: "all_reduce" | "all_gather" }[];
  kvHeadsPerRank: number;
}

const even =
  (n: number, tp: number) =>
  (r: number): [number, number] => [(r * n) / tp, ((r + 1) * n) / tp];

function producer(g: Graph, id: number): { node: Node; index: number } | null {
  for (let i = 0; i < g.nodes.length; i++)
    if (g.nodes[i].outputs.includes(id)) return { node: g.nodes[i], index: i };
  return null;
}

function weight(g: Graph, id: number | null): Value | null {
  if (id === null) return null;
  const v = g.values.get(id)!;
  return v.kind === "weight" ? v : null;
}

function dim(v: Value, axis: number): number {
  const d = v.shape[axis];
  if (typeof d !== "number") throw new ShardError(`${v.name}: dim ${axis} is not static`);
  return d;
}

/** The linear that produces `id`, looking through rope (whose input 0 is the projection). */
function projectionOf(g: Graph, id: number, what: string): Node {
  let p = producer(g, id);
  if (p?.node.op === "rope") p = producer(g, p.node.inputs[0]!);
  if (p?.node.op !== "linear")
    throw new ShardError(`tensor-parallel: cannot find the linear projection feeding ${what}`);
  return p.node;
}

function plan(g: Graph, tp: number, ep: number): Plan {
  const flag = `--tp ${tp}`;
  const cuts = new Map<number, Cut>();
  const rankZeroBias = new Set<number>();
  const attrs = new Map<number, Record<string, number>>();
  const rankAttrs = new Map<number, (rank: number) => Record<string, number>>();
  const collectives: Plan["collectives"] = [];
  let kvHeadsPerRank = g.meta.numKvHeads;

  const cutLinear = (n: Node, range: (r: number) => [number, number]) => {
    const w = weight(g, n.inputs[1]);
    if (!w) throw new ShardError("tensor-parallel: linear without a weight");
    cuts.set(w.id, { axis: 0, range });
    const b = weight(g, n.inputs[2] ?? null);
    if (b) cuts.set(b.id, { axis: 0, range });
  };

  // Attention: divide heads; the q/k/v projections are cut at head boundaries.
  const headCut = new Set<Node>();
  g.nodes.forEach((n, i) => {
    if (n.op !== "attention") return;
    const nH = n.attrs.num_heads as number;
    const nKv = n.attrs.num_kv_heads as number;
    const D = n.attrs.head_dim as number;
    if (nH % tp) throw new ShardError(`${flag}: num_attention_heads ${nH} is not divisible by ${tp}`);
    let kvLocal: number;
    let kvRange: (r: number) => [number, number];
    if (nKv % tp === 0) {
      kvLocal = nKv / tp;
      kvRange = even(nKv * D, tp);
    } else if (tp % nKv === 0) {
      // Replicate: rank r serves query heads [r·nH/tp, …), all of which use KV head ⌊r·nKv/tp⌋.
      kvLocal = 1;
      kvRange = (r) => {
        const h = Math.floor((r * nKv) / tp);
        return [h * D, (h + 1) * D];
      };
    } else {
      throw new ShardError(
        `${flag}: num_key_value_heads ${nKv} neither divides nor is divisible by ${tp} (KV heads can be split or replicated, not both)`,
      );
    }
    kvHeadsPerRank = kvLocal;
    const [q, k, v] = n.inputs as number[];
    const qp = projectionOf(g, q, `the queries of attention layer ${n.attrs.layer}`);
    const kp = projectionOf(g, k, `the keys of attention layer ${n.attrs.layer}`);
    const vp = projectionOf(g, v, `the values of attention layer ${n.attrs.layer}`);
    cutLinear(qp, even(nH * D, tp));
    cutLinear(kp, kvRange);
    cutLinear(vp, kvRange);
    for (const p of [qp, kp, vp]) headCut.add(p);
    attrs.set(i, { num_heads: nH / tp, num_kv_heads: kvLocal });
    // rope on q / k: the node between projection and attention.
    for (const [id, heads] of [
      [q, nH / tp],
      [k, kvLocal],
    ] as const) {
      const p = producer(g, id);
      if (p?.node.op === "rope") attrs.set(p.index, { num_heads: heads });
    }
  });

  // Expert groups (see the header): ep groups of mtp ranks.
  const mtp = tp / ep;
  let expertNodes = 0;
  const cutExperts = (ws: Value[], i: number) => {
    expertNodes++;
    const E = Number(ws[0].hints!.experts);
    if (E % ep)
      throw new ShardError(
        `--moe-ep-size ${ep}: num_experts ${E} of ${ws[0].name} is not divisible by ${ep}`,
      );
    const parts = (r: number) => even(E, ep)(r % ep);
    for (const w of ws) {
      const row = w.hints!.parallel === "expert_row";
      const I = row ? dim(w, 1) : dim(w, 0) / E;
      if (I % mtp)
        throw new ShardError(
          `${flag}${ep > 1 ? ` --moe-ep-size ${ep}` : ""}: expert intermediate_size ${I} of ${w.name} is not divisible by ${mtp}`,
        );
      cuts.set(w.id, { axis: row ? 1 : 0, range: (r) => even(I, mtp)(Math.floor(r / ep)), parts });
    }
    if (ws.some((w) => w.hints!.parallel === "expert_row")) collectives.push({ after: i, op: "all_reduce" });
    if (ep > 1) {
      attrs.set(i, { local_experts: E / ep });
      rankAttrs.set(i, (r) => ({ expert_start: parts(r)[0] }));
    }
  };

  g.nodes.forEach((n, i) => {
    const experts = n.inputs
      .map((id) => weight(g, id))
      .filter(
        (w): w is Value => w?.hints?.parallel === "expert_column" || w?.hints?.parallel === "expert_row",
      );
    if (experts.length) {
      cutExperts(experts, i);
      return;
    }
    if (n.op === "embedding") {
      const t = weight(g, n.inputs[1]);
      if (t?.hints?.parallel !== "vocab") return;
      const V = dim(t, 0);
      if (V % tp) throw new ShardError(`${flag}: vocab_size ${V} is not divisible by ${tp}`);
      cuts.set(t.id, { axis: 0, range: even(V, tp) });
      rankAttrs.set(i, (r) => ({ vocab_start: (r * V) / tp }));
      collectives.push({ after: i, op: "all_reduce" });
      return;
    }
    if (n.op !== "linear") return;
    const w = weight(g, n.inputs[1]);
    const parallel = w?.hints?.parallel;
    if (!w || !parallel || parallel === "none" || headCut.has(n)) return;
    if (parallel === "column" || parallel === "vocab") {
      const N = dim(w, 0);
      if (N % tp) {
        const what = parallel === "vocab" ? `vocab_size ${N}` : `out features ${N} of ${w.name}`;
        throw new ShardError(`${flag}: ${what} is not divisible by ${tp}`);
      }
      cutLinear(n, even(N, tp));
      if (parallel === "vocab") collectives.push({ after: i, op: "all_gather" });
    } else if (parallel === "row") {
      const K = dim(w, 1);
      if (K % tp) throw new ShardError(`${flag}: in features ${K} of ${w.name} is not divisible by ${tp}`);
      cuts.set(w.id, { axis: 1, range: even(K, tp) });
      const b = weight(g, n.inputs[2] ?? null);
      if (b) rankZeroBias.add(b.id);
      collectives.push({ after: i, op: "all_reduce" });
    } else {
      throw new ShardError(`${w.name}: unknown parallel hint "${parallel}"`);
    }
  });
  if (ep > 1 && !expertNodes)
    throw new ShardError(`--moe-ep-size ${ep}: the model has no mixture-of-experts layers to divide`);
  collectives.sort((a, b) => a.after - b.after);
  return { cuts, rankZeroBias, attrs, rankAttrs, collectives, kvHeadsPerRank };
}

/** The rank-independent structure: collectives inserted, head counts divided. */
function structure(g: Graph, p: Plan, tp: number): Graph {
  const s = cloneGraph(g);
  for (const [i, a] of p.attrs) Object.assign(s.nodes[i].attrs, a);
  // Insert collectives from the back so earlier node indices stay valid.
  for (const c of [...p.collectives].reverse()) {
    const n = s.nodes[c.after];
    const src = n.outputs[0];
    const old = s.values.get(src)!;
    const out = addValue(s, { ...old, name: `${old.name}.${c.op}`, kind: "activation" });
    const node: Node = {
      op: c.op,
      inputs: [src],
      outputs: [out.id],
      attrs: c.op === "all_gather" ? { tp } : {},
      scope: n.scope,
    };
    for (const m of s.nodes.slice(c.after + 1)) m.inputs = m.inputs.map((id) => (id === src ? out.id : id));
    for (const k of Object.keys(s.outputs)) if (s.outputs[k] === src) s.outputs[k] = out.id;
    s.nodes.splice(c.after + 1, 0, node);
  }
  s.meta = { ...s.meta, numKvHeads: p.kvHeadsPerRank, tp };
  return s;
}

function shardRank(s: Graph, p: Plan, tp: number, rank: number, rankAttrsAt: Plan["rankAttrs"]): Graph {
  const g = cloneGraph(s);
  for (const [id, cut] of p.cuts) {
    const v = g.values.get(id)!;
    if (!cut || v.recipe?.kind !== "checkpoint") continue;
    if (cut.parts) {
      const [p0, p1] = cut.parts(rank);
      const [start, end] = cut.range(rank);
      const perPart = [Number(v.shape[0]) / v.recipe.parts.length, Number(v.shape[1])];
      const slice: Transform[] =
        end - start < perPart[cut.axis] ? [{ op: "slice", axis: cut.axis, start, end }] : [];
      v.recipe = {
        ...v.recipe,
        parts: v.recipe.parts.slice(p0, p1).map((q) => ({ ...q, transforms: [...q.transforms, ...slice] })),
      };
      perPart[cut.axis] = end - start;
      v.shape = [(p1 - p0) * perPart[0], perPart[1]];
      continue;
    }
    if (v.recipe.parts.length !== 1 || v.recipe.transforms.length)
      throw new ShardError(`tensor-parallel: ${v.name} is already fused; sharding runs before fusion`);
    const [start, end] = cut.range(rank);
    const slice: Transform = { op: "slice", axis: cut.axis, start, end };
    const part = v.recipe.parts[0];
    v.recipe = { ...v.recipe, parts: [{ ...part, transforms: [...part.transforms, slice] }] };
    const shape = [...v.shape];
    shape[cut.axis] = end - start;
    v.shape = shape;
  }
  if (rank !== 0)
    for (const n of g.nodes)
      if (n.op === "linear" && n.inputs[2] != null && p.rankZeroBias.has(n.inputs[2])) n.inputs[2] = null;
  for (const [i, f] of rankAttrsAt) Object.assign(g.nodes[i].attrs, f(rank));
  // Re-infer every activation's shape through the registry (widths after column-parallel cuts).
  for (const n of g.nodes) {
    let types: ReturnType<typeof inferNode>;
    try {
      types = inferNode(g, n.op, n.inputs, n.attrs);
    } catch (e) {
      // What a model file without sharding hints meets (heads are split from the attention node, so an
      // o_proj without parallel: "row" reads half its input): name the weight and the hint, not only the shapes.
      const w = n.inputs
        .map((id) => (id == null ? undefined : g.values.get(id)))
        .find((v) => v?.kind === "weight");
      throw new ShardError(
        `--tp ${tp}: ${w ? `${w.name} (${n.op})` : n.op} does not fit its input on a rank: ${(e as Error).message}. ` +
          'A linear reading a split activation needs parallel: "row" on its weight (one writing split heads or an ' +
          'MLP\'s hidden width, "column")',
      );
    }
    n.outputs.forEach((o, k) => {
      const v = g.values.get(o)!;
      v.shape = types[k].shape;
      v.dtype = types[k].dtype;
    });
  }
  return g;
}

export function shardForTp(g: Graph, build: BuildConfig): Graph[] {
  const tp = build.tp;
  if (tp === 1) return [g];
  const p = plan(g, tp, build.moe_ep_size);
  const s = structure(g, p, tp);
  // Node indices shift by the collectives inserted before them.
  const rankAttrsAt: Plan["rankAttrs"] = new Map();
  for (const [i, f] of p.rankAttrs) rankAttrsAt.set(i + p.collectives.filter((c) => c.after < i).length, f);
  return Array.from({ length: tp }, (_, r) => shardRank(s, p, tp, r, rankAttrsAt));
}
