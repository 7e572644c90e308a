// The unary elementwise ops (tanh, sigmoid, exp, scale, softcap) as scalar functions, and chains of them
// folded into a neighbouring kernel: the fusion passes give `linear` / `quant_linear` an attribute
// `post` (applied after the activation, before the residual) and norms `pre` (applied to input x as it
// is read) and `post` (applied to the normalised output), so a chain such as Gemma 2's final logit
// soft-capping costs no launch and no round trip through memory.
//
//   attrs.post = { ops: ["softcap", "scale"], args: [30, 0.5] }   // in order; args[i]: op i's number
//                                                                   // attribute (0 for tanh/sigmoid/exp)
//
// A chain step is computed exactly as the standalone op (same fp32 function, the value rounded to fp32 after
// each step), so a fused fp32 graph gives bit-identical results to the unfused one.
import type { Attrs, AttrValue, Node } from "../ir/types.ts";
import { sigmoid } from "./activation-math.ts";

interface UnaryDef {
  /** The op's one number attribute, or null. */
  attr: "factor" | "cap" | null;
  /** The scalar function for the attribute's value (checked here). */
  fn(arg: number): (x: number) => number;
}

export const UNARY: Readonly<Record<string, UnaryDef>> = {
  tanh: { attr: null, fn: () => Math.tanh },
  sigmoid: { attr: null, fn: () => sigmoid },
  exp: { attr: null, fn: () => Math.exp },
  scale: {
    attr: "factor",
    fn(f) {
      if (!Number.isFinite(f)) throw new Error(`scale: factor must be a finite number, got ${f}`);
      return (x) => x * f;
    },
  },
  softcap: {
    attr: "cap",
    fn(cap) {
      if (!(cap > 0) || !Number.isFinite(cap)) throw new Error(`softcap: cap must be > 0, got ${cap}`);
      return (x) => cap * Math.tanh(x / cap);
    },
  },
};

/** Ops a chain may hold (the fusion passes fold exactly these). */
export const CHAIN_OPS: readonly string[] = Object.keys(UNARY);

/** The unary op named `op`, or undefined (own keys only: "toString" is no op). */
function unaryOf(op: string): UnaryDef | undefined {
  return Object.hasOwn(UNARY, op) ? UNARY[op] : undefined;
}

/** Steps a chain holds at most: the CUDA runtime's EwChain capacity (native/src/kernels/enums.h kMaxEwChain). */
export const MAX_CHAIN = 4;

export interface EwChain {
  ops: string[];
  args: number[];
}

export const EMPTY_CHAIN: EwChain = { ops: [], args: [] };

/** The chain in attrs[key] (empty when absent); throws on a malformed one. */
export function chainOf(attrs: Attrs, key: "pre" | "post"): EwChain {
  const v = attrs[key];
  if (v === undefined || v === null) return EMPTY_CHAIN;
  const bad = (why: string) =>
    new Error(`attribute "${key}": ${why} (want { ops: string[], args: number[] })`);
  if (typeof v !== "object" || Array.isArray(v)) throw bad(`got ${JSON.stringify(v)}`);
  const { ops, args } = v as { ops?: AttrValue; args?: AttrValue };
  if (!Array.isArray(ops) || !Array.isArray(args) || ops.length !== args.length)
    throw bad("ops and args must be arrays of the same length");
  if (ops.length > MAX_CHAIN) throw bad(`${ops.length} steps, at most ${MAX_CHAIN}`);
  ops.forEach((op, i) => {
    const d = typeof op === "string" ? unaryOf(op) : undefined;
    if (!d) throw bad(`unknown op ${JSON.stringify(op)} (known: ${CHAIN_OPS.join(", ")})`);
    if (typeof args[i] !== "number") throw bad(`args[${i}] is not a number`);
    d.fn(args[i] as number); // checks the value
  });
  return { ops: ops as string[], args: args as number[] };
}

/** The chain step a standalone unary node stands for, or null when it is not a chainable op. */
export function chainStep(n: Node): { op: string; arg: number } | null {
  const d = unaryOf(n.op);
  if (!d) return null;
  const arg = d.attr ? n.attrs[d.attr] : 0;
  return typeof arg === "number" ? { op: n.op, arg } : null;
}

/** c with a step added at its end (after) or start (before), as an attribute value. */
export function withStep(c: EwChain, s: { op: string; arg: number }, at: "end" | "start"): AttrValue {
  return at === "end"
    ? { ops: [...c.ops, s.op], args: [...c.args, s.arg] }
    : { ops: [s.op, ...c.ops], args: [s.arg, ...c.args] };
}

/** Applies the chain in place, one step at a time over the whole array (fp32 after each step, as unfused). */
export function applyChain(a: Float32Array, c: EwChain): void {
  c.ops.forEach((op, i) => {
    const f = UNARY[op].fn(c.args[i]);
    for (let k = 0; k < a.length; k++) a[k] = f(a[k]);
  });
}

/** "softcap 30 → scale 0.5" for the fusion report. */
export function chainText(c: EwChain): string {
  return c.ops.map((op, i) => (UNARY[op].attr ? `${op} ${c.args[i]}` : op)).join(" → ");
}
