// The rewrite core every fusion pass leans on (tinygrad / MLIR style, kept small):
//
//   - a Pattern looks at one root node: `match(g, node, uses)` never mutates and returns a match (the
//     nodes it covers) or null; `rewrite(g, match)` returns the Replacement: new nodes, which old values
//     they stand in for, which matched nodes go away. (It may allocate fresh values in g for the new
//     nodes' outputs — unreachable until the driver splices them in — but never edits a node.)
//   - `rewriteGraph` applies a set of patterns to a fixed point on a clone (module → module; the input
//     graph is untouched), checking every replacement keeps types and order; a rewrite that fails is
//     skipped and noted, never half-applied.
//   - `patternPass` / `bestEffortPass` wrap that into a pipeline Pass that can never break a build: if
//     anything goes wrong the pass returns its input graph and says why in the fusion report.
//
// Matches and notes go to the pass log of the context the driver is given (passes/pass.ts); patterns
// receive the same context in match() to explain what they left alone.
import { addValue, cloneGraph, inferNode } from "../src/ir/builder.ts";
import { type Attrs, type Graph, type Node, sameDim, shapeStr } from "../src/ir/types.ts";
import { verifyGraph } from "../src/ir/verify.ts";
import type { Pass, PassContext } from "./pass.ts";

// ---------------------------------------------------------------------------------------------------
// Use-def information.

export interface Use {
  node: Node;
  /** Input slot of the consumer. */
  slot: number;
}

export class Uses {
  private def = new Map<number, { node: Node; index: number }>();
  private users = new Map<number, Use[]>();
  private graphOutputs: Set<number>;

  constructor(readonly g: Graph) {
    this.graphOutputs = new Set(Object.values(g.outputs));
    g.nodes.forEach((node, index) => {
      node.inputs.forEach((id, slot) => {
        if (id === null) return;
        let u = this.users.get(id);
        if (!u) this.users.set(id, (u = []));
        u.push({ node, slot });
      });
      for (const o of node.outputs) this.def.set(o, { node, index });
    });
  }

  /** The node that defines a value (undefined for inputs and weights). */
  producer(id: number | null): Node | undefined {
    return id === null ? undefined : this.def.get(id)?.node;
  }
  /** The producer if it is the given op. */
  producerOp(id: number | null, ...ops: string[]): Node | undefined {
    const p = this.producer(id);
    return p && ops.includes(p.op) ? p : undefined;
  }
  /** Position of a node in g.nodes. */
  index(node: Node): number {
    return this.def.get(node.outputs[0])?.index ?? this.g.nodes.indexOf(node);
  }
  consumers(id: number): Use[] {
    return this.users.get(id) ?? [];
  }
  isGraphOutput(id: number): boolean {
    return this.graphOutputs.has(id);
  }
  /** Uses of a value, a graph output counting as one. */
  count(id: number): number {
    return this.consumers(id).length + (this.graphOutputs.has(id) ? 1 : 0);
  }
  /** True when the value is read exactly once, by a node (not a graph output). */
  singleUse(id: number): boolean {
    return this.count(id) === 1 && !this.graphOutputs.has(id);
  }
}

// ---------------------------------------------------------------------------------------------------
// Patterns.

export interface Match {
  /** The node the pattern was anchored on. */
  root: Node;
  /** Every node the match covers (erased by default when the rewrite is applied). */
  nodes: Node[];
  /** Where in the model, for the report (default: the scopes of the matched nodes). */
  where?: string;
}

export interface Replacement {
  /** New nodes, in order; spliced in where the first erased node was. */
  nodes: Node[];
  /** [old value, new value]: every use of old (and graph outputs) now reads new. Types must agree. */
  replace: [number, number][];
  /** Nodes that go away (default: match.nodes). Their outputs must be unused after the replacement. */
  erase?: Node[];
}

export interface Pattern<M extends Match = Match> {
  name: string;
  /** Ops a root node may have (a quick filter before match). */
  ops: string[];
  match(g: Graph, node: Node, uses: Uses, ctx: PassContext): M | null;
  rewrite(g: Graph, m: M): Replacement;
}

/** A node for a Replacement: infers its output types through the registry and allocates its outputs. */
export function makeNode(
  g: Graph,
  op: string,
  inputs: (number | null)[],
  attrs: Attrs,
  o: { scope?: string; names?: string[] } = {},
): Node {
  const types = inferNode(g, op, inputs, attrs);
  const outputs = types.map(
    (t, i) =>
      addValue(g, {
        name: o.names?.[i] ?? `${o.scope ?? op}.${op}${types.length > 1 ? `.${i}` : ""}`,
        dtype: t.dtype,
        shape: t.shape,
        kind: "activation",
      }).id,
  );
  return { op, inputs: [...inputs], outputs, attrs, scope: o.scope };
}

/** Longest common dotted prefix ("model.layers.0.self_attn.q_proj", "…k_proj" → "model.layers.0.self_attn"). */
export function commonScope(names: string[]): string {
  if (names.length === 0) return "";
  const parts = names.map((n) => n.split("."));
  const out: string[] = [];
  for (let i = 0; i < parts[0].length; i++) {
    const s = parts[0][i];
    if (parts.every((p) => p[i] === s)) out.push(s);
    else break;
  }
  return out.join(".");
}

function whereOf(g: Graph, m: Match): string {
  if (m.where) return m.where;
  const weighted = m.nodes.filter((n) =>
    n.inputs.some((id) => id !== null && g.values.get(id)?.recipe?.kind === "checkpoint"),
  );
  const scopes = (weighted.length ? weighted : m.nodes).map((n) => n.scope).filter((s): s is string => !!s);
  return commonScope(scopes) || m.root.scope || m.root.op;
}

// ---------------------------------------------------------------------------------------------------
// The driver.

/** Applies a replacement; returns the new graph (sharing g.values) or throws without touching g. */
export function splice(g: Graph, m: Match, r: Replacement): Graph {
  const erase = new Set(r.erase ?? m.nodes);
  const map = new Map<number, number>();
  for (const [from, to] of r.replace) {
    const a = g.values.get(from);
    const b = g.values.get(to);
    if (!a || !b) throw new Error(`replacement of %${from} by %${to}: unknown value`);
    if (
      a.dtype !== b.dtype ||
      a.shape.length !== b.shape.length ||
      a.shape.some((d, i) => !sameDim(d, b.shape[i]))
    )
      throw new Error(
        `replacement changes a type: %${from} ${a.dtype}${shapeStr(a.shape)} → %${to} ${b.dtype}${shapeStr(b.shape)}`,
      );
    map.set(from, to);
  }
  const remap = (id: number | null) => (id !== null && map.has(id) ? map.get(id)! : id);
  const nodes: Node[] = [];
  let placed = false;
  for (const n of g.nodes) {
    if (erase.has(n)) {
      if (!placed) nodes.push(...r.nodes);
      placed = true;
      continue;
    }
    if (!placed && n === m.root) {
      nodes.push(...r.nodes);
      placed = true;
    }
    const inputs = n.inputs.map(remap);
    nodes.push(inputs.some((id, i) => id !== n.inputs[i]) ? { ...n, inputs } : n);
  }
  if (!placed) throw new Error("the match's root is not in the graph");
  const outputs = Object.fromEntries(Object.entries(g.outputs).map(([k, id]) => [k, remap(id)!]));
  const gone = new Set<number>();
  for (const n of erase) for (const o of n.outputs) gone.add(o);
  for (const n of nodes)
    for (const id of n.inputs)
      if (id !== null && gone.has(id)) throw new Error(`erased value %${id} is still read by ${n.op}`);
  for (const id of Object.values(outputs))
    if (gone.has(id)) throw new Error(`erased value %${id} is a graph output`);
  return { ...g, nodes: topoSort(g, nodes), outputs };
}

/**
 * Stable topological order: nodes keep their relative order unless a node reads a value defined
 * later, in which case it moves down just far enough. Throws on a cycle.
 */
export function topoSort(g: Graph, nodes: Node[]): Node[] {
  const defIdx = new Map<number, number>();
  nodes.forEach((n, i) => {
    for (const o of n.outputs) defIdx.set(o, i);
  });
  const ordered = nodes.every((n, i) => n.inputs.every((id) => id === null || (defIdx.get(id) ?? -1) < i));
  if (ordered) return nodes;
  const deps = nodes.map((n) =>
    n.inputs.filter((id): id is number => id !== null && defIdx.has(id)).map((id) => defIdx.get(id)!),
  );
  const waiting = deps.map((d) => new Set(d).size);
  const users: number[][] = nodes.map(() => []);
  deps.forEach((d, i) => {
    for (const j of new Set(d)) users[j].push(i);
  });
  // Ready nodes in original order (a small sorted array is plenty for graphs of a few thousand nodes).
  const ready: number[] = [];
  waiting.forEach((w, i) => {
    if (w === 0) ready.push(i);
  });
  const out: Node[] = [];
  while (ready.length) {
    const i = ready.shift()!;
    out.push(nodes[i]);
    for (const u of users[i])
      if (--waiting[u] === 0) {
        let k = 0;
        while (k < ready.length && ready[k] < u) k++;
        ready.splice(k, 0, u);
      }
  }
  if (out.length !== nodes.length) {
    const stuck = nodes.find((_, i) => waiting[i] > 0)!;
    void g;
    throw new Error(`rewrite made a cycle through ${stuck.op}${stuck.scope ? ` (${stuck.scope})` : ""}`);
  }
  return out;
}

/** Applies patterns until none matches. Returns a new graph; g is not modified. */
// biome-ignore lint/suspicious/noExplicitAny: each pattern has its own match type
export type AnyPattern = Pattern<any>;

export function rewriteGraph(g: Graph, patterns: AnyPattern[], ctx: PassContext): Graph {
  let cur = cloneGraph(g);
  const failed = new Set<string>();
  const limit = 10 * cur.nodes.length + 100;
  for (let step = 0; ; step++) {
    if (step > limit) throw new Error(`patterns did not reach a fixed point after ${limit} rewrites`);
    const uses = new Uses(cur);
    let changed = false;
    scan: for (const node of cur.nodes)
      for (const p of patterns) {
        if (!p.ops.includes(node.op)) continue;
        const key = `${p.name}:${node.outputs[0]}`;
        if (failed.has(key)) continue;
        const m = p.match(cur, node, uses, ctx);
        if (!m) continue;
        const where = whereOf(cur, m);
        try {
          cur = splice(cur, m, p.rewrite(cur, m));
        } catch (e) {
          failed.add(key);
          ctx.log.note(`${p.name} at ${where}: not applied (${(e as Error).message})`);
          continue;
        }
        ctx.log.match(p.name, where);
        changed = true;
        break scan;
      }
    if (!changed) return cur;
  }
}

// ---------------------------------------------------------------------------------------------------
// Passes that never break a build.

/** A pass that, if it throws or produces an invalid graph, returns its input and notes why. */
export function bestEffortPass(name: string, run: Pass["run"]): Pass {
  return {
    name,
    run(g, ctx) {
      ctx.log.reports = true;
      try {
        const out = run(g, ctx);
        verifyGraph(out);
        return out;
      } catch (e) {
        const msg = `could not apply (${(e as Error).message.split("\n")[0]}); graph left unchanged`;
        ctx.log.note(msg);
        ctx.log.failed = msg;
        return g;
      }
    },
  };
}

/** A pass made of rewrite patterns applied to a fixed point. */
export function patternPass(name: string, patterns: AnyPattern[], o: { idle?: string } = {}): Pass {
  return bestEffortPass(name, (g, ctx) => {
    const before = ctx.log.matches.length;
    const out = rewriteGraph(g, patterns, ctx);
    if (o.idle && ctx.log.matches.length === before) ctx.log.note(o.idle);
    return out;
  });
}
