// QKV fusion: the q, k and v projections of one input → one GEMM over the concatenated weight (and
// bias), followed by a split. The weight is concatenated lazily in its recipe ([q; k; v] along the
// output dim, each part keeping its own transforms such as a tensor-parallel slice), so nothing is
// read while building. Anchored on attention: the three linears must feed (through rope) its q, k, v.
//
//   q = rope(linear(x, Wq)); k = rope(linear(x, Wk)); v = linear(x, Wv); attention(q, k, v)
//   ⇒ qkv = linear(x, [Wq; Wk; Wv]); q0, k0, v = split(qkv); q = rope(q0); k = rope(k0); attention(q, k, v)
import type { Graph, Node } from "../src/ir/types.ts";
import { concatWeights, fusedName, whyNotConcat } from "./concat-weights.ts";
import type { PassContext } from "./pass.ts";
import { commonScope, type Match, makeNode, type Pattern, patternPass, type Uses } from "./pattern.ts";

interface QkvMatch extends Match {
  x: number;
  linears: [Node, Node, Node];
}

/** The linear behind an attention operand, looking through rope. */
function projection(uses: Uses, id: number | null): Node | undefined {
  const r = uses.producerOp(id, "rope");
  return uses.producerOp(r ? r.inputs[0] : id, "linear");
}

/** A plain GEMM whose output only feeds the attention path: no activation, no residual epilogue. */
function plain(uses: Uses, n: Node): boolean {
  return (
    (n.attrs.activation ?? "none") === "none" &&
    (n.inputs[3] ?? null) === null &&
    uses.singleUse(n.outputs[0])
  );
}

export const qkvPattern: Pattern<QkvMatch> = {
  name: "qkv",
  ops: ["attention"],
  match(g: Graph, attn: Node, uses: Uses, ctx: PassContext): QkvMatch | null {
    const lins = attn.inputs.slice(0, 3).map((id) => projection(uses, id));
    const where = `layer ${attn.attrs.layer}`;
    if (lins.some((l) => !l)) {
      // Already fused (q/k/v come from a split) is the normal case on a second look.
      const viaSplit = attn.inputs.some((id) => {
        const r = uses.producerOp(id, "rope");
        return uses.producerOp(r ? r.inputs[0] : id, "split");
      });
      if (!viaSplit) ctx.log.note(`qkv: ${where}: q/k/v are not all linear projections; left unfused`);
      return null;
    }
    const [q, k, v] = lins as [Node, Node, Node];
    if (new Set([q, k, v]).size !== 3) return null;
    const x = q.inputs[0]!;
    if (k.inputs[0] !== x || v.inputs[0] !== x) {
      ctx.log.note(`qkv: ${where}: q/k/v project different inputs; left unfused`);
      return null;
    }
    if (![q, k, v].every((l) => plain(uses, l))) {
      ctx.log.note(`qkv: ${where}: a projection has an epilogue or other users; left unfused`);
      return null;
    }
    const why =
      whyNotConcat(
        g,
        [q, k, v].map((l) => l.inputs[1]),
      ) ??
      (() => {
        const bs = [q, k, v].map((l) => l.inputs[2] ?? null);
        if (bs.every((b) => b === null)) return null;
        if (bs.some((b) => b === null)) return "only some projections have a bias";
        return whyNotConcat(g, bs);
      })();
    if (why) {
      ctx.log.note(`qkv: ${where}: ${why}; left unfused`);
      return null;
    }
    return { root: attn, nodes: [q, k, v], x, linears: [q, k, v] };
  },
  rewrite(g, m) {
    const [q, k, v] = m.linears;
    const w = (l: Node, i: number) => g.values.get(l.inputs[i]!)!;
    const W = concatWeights(
      g,
      m.linears.map((l) => l.inputs[1]!),
      fusedName(
        m.linears.map((l) => w(l, 1).name),
        "qkv_proj",
      ),
    );
    const B =
      (q.inputs[2] ?? null) === null
        ? null
        : concatWeights(
            g,
            m.linears.map((l) => l.inputs[2]!),
            fusedName(
              m.linears.map((l) => w(l, 2).name),
              "qkv_proj",
            ),
          );
    const scope = `${commonScope([q, k, v].map((l) => l.scope ?? ""))}.qkv_proj`.replace(/^\./, "");
    const lin = makeNode(g, "linear", [m.x, W.id, B?.id ?? null, null], { activation: "none" }, { scope });
    const sizes = m.linears.map((l) => w(l, 1).shape[0] as number);
    const split = makeNode(g, "split", [lin.outputs[0]], { sizes }, { scope });
    return {
      nodes: [lin, split],
      replace: [
        [q.outputs[0], split.outputs[0]],
        [k.outputs[0], split.outputs[1]],
        [v.outputs[0], split.outputs[2]],
      ],
    };
  },
};

export const qkvFusion = patternPass("qkv-fusion", [qkvPattern]);
