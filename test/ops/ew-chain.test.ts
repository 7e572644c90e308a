// Elementwise chains (src/ops/ew-chain.ts), the attribute the fusion passes fold unary ops into: the
// attribute's validation (each malformed form refused with its own message, as the engine loader's bad
// files expect), the chain step a standalone node stands for, and the arithmetic — one step at a time over
// the whole array, rounded to fp32 after each, as the unfused ops compute it.
import { describe, expect, it } from "vitest";
import type { Attrs, Node } from "../../src/ir/types.ts";
import {
  applyChain,
  CHAIN_OPS,
  chainOf,
  chainStep,
  chainText,
  EMPTY_CHAIN,
  MAX_CHAIN,
  UNARY,
  withStep,
} from "../../src/ops/ew-chain.ts";

const node = (op: string, attrs: Attrs = {}): Node => ({ op, inputs: [0], outputs: [1], attrs }) as Node;

describe("chainOf", () => {
  it("an absent or null attribute is the empty chain; a well-formed one is returned as is", () => {
    expect(chainOf({}, "post")).toBe(EMPTY_CHAIN);
    expect(chainOf({ pre: null } as unknown as Attrs, "pre")).toBe(EMPTY_CHAIN);
    expect(EMPTY_CHAIN).toEqual({ ops: [], args: [] });
    const c = { ops: ["softcap", "scale", "tanh", "exp"], args: [30, 0.5, 0, 0] };
    expect(chainOf({ post: c }, "post")).toEqual(c);
    expect(chainOf({ pre: c }, "pre")).toEqual(c);
    expect(chainOf({ post: c }, "pre")).toBe(EMPTY_CHAIN);
  });

  it("refuses each malformed chain with its own message, naming the attribute", () => {
    const want = "(want { ops: string[], args: number[] })";
    const bad = (v: unknown, why: string, key: "pre" | "post" = "post") =>
      expect(() => chainOf({ [key]: v } as Attrs, key)).toThrow(`attribute "${key}": ${why} ${want}`);
    bad(3, "got 3");
    bad("tanh", 'got "tanh"', "pre");
    bad(["tanh"], 'got ["tanh"]');
    bad({ ops: ["tanh"] }, "ops and args must be arrays of the same length");
    bad({ args: [0] }, "ops and args must be arrays of the same length");
    bad({ ops: "tanh", args: [0] }, "ops and args must be arrays of the same length");
    bad({ ops: ["tanh"], args: 0 }, "ops and args must be arrays of the same length");
    bad({ ops: ["tanh", "exp"], args: [0] }, "ops and args must be arrays of the same length");
    bad({ ops: Array(5).fill("tanh"), args: Array(5).fill(0) }, "5 steps, at most 4");
    bad(
      { ops: ["tanh", "relu"], args: [0, 0] },
      'unknown op "relu" (known: tanh, sigmoid, exp, scale, softcap)',
    );
    bad({ ops: [7], args: [0] }, "unknown op 7 (known: tanh, sigmoid, exp, scale, softcap)");
    bad(
      { ops: ["toString"], args: [0] },
      'unknown op "toString" (known: tanh, sigmoid, exp, scale, softcap)',
    );
    bad({ ops: ["tanh", "scale"], args: [0, "2"] }, "args[1] is not a number");
    // The step's own value check runs too.
    expect(() => chainOf({ post: { ops: ["scale"], args: [Infinity] } }, "post")).toThrow(
      "scale: factor must be a finite number, got Infinity",
    );
    expect(() => chainOf({ post: { ops: ["softcap"], args: [0] } }, "post")).toThrow(
      "softcap: cap must be > 0, got 0",
    );
    // An Error (with a stack), not a bare thrown value.
    let err: unknown;
    try {
      chainOf({ post: 3 }, "post");
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(Error);
    expect(MAX_CHAIN).toBe(4);
    expect(chainOf({ post: { ops: Array(4).fill("exp"), args: Array(4).fill(0) } }, "post").ops).toHaveLength(
      4,
    );
  });
});

describe("unary steps", () => {
  it("the five ops and their scalar functions; scale and softcap check their number", () => {
    expect(CHAIN_OPS).toEqual(["tanh", "sigmoid", "exp", "scale", "softcap"]);
    const x = 0.75;
    expect(UNARY.tanh.fn(0)(x)).toBe(Math.tanh(x));
    expect(UNARY.sigmoid.fn(0)(x)).toBe(1 / (1 + Math.exp(-x)));
    expect(UNARY.exp.fn(0)(x)).toBe(Math.exp(x));
    expect(UNARY.scale.fn(-2.5)(x)).toBe(-1.875);
    expect(UNARY.softcap.fn(30)(45)).toBeCloseTo(30 * Math.tanh(1.5), 15);
    expect([
      UNARY.tanh.attr,
      UNARY.sigmoid.attr,
      UNARY.exp.attr,
      UNARY.scale.attr,
      UNARY.softcap.attr,
    ]).toEqual([null, null, null, "factor", "cap"]);
    for (const f of [NaN, -Infinity])
      expect(() => UNARY.scale.fn(f)).toThrow(`scale: factor must be a finite number, got ${f}`);
    expect(() => UNARY.scale.fn(0)).not.toThrow();
    for (const c of [-1, NaN, Infinity])
      expect(() => UNARY.softcap.fn(c)).toThrow(`softcap: cap must be > 0, got ${c}`);
    expect(() => UNARY.softcap.fn(1e-30)).not.toThrow();
  });

  it("chainStep: the step a standalone unary node stands for, or null", () => {
    expect(chainStep(node("tanh"))).toEqual({ op: "tanh", arg: 0 });
    expect(chainStep(node("exp", { factor: 3 }))).toEqual({ op: "exp", arg: 0 });
    expect(chainStep(node("scale", { factor: 0.25 }))).toEqual({ op: "scale", arg: 0.25 });
    expect(chainStep(node("softcap", { cap: 30 }))).toEqual({ op: "softcap", arg: 30 });
    expect(chainStep(node("scale", { cap: 30 }))).toBeNull();
    expect(chainStep(node("softcap", { cap: "30" }))).toBeNull();
    expect(chainStep(node("add"))).toBeNull();
    expect(chainStep(node("silu"))).toBeNull();
    expect(chainStep(node("toString"))).toBeNull();
  });

  it("withStep adds at the end or the start; chainText names the steps with their numbers", () => {
    const c = { ops: ["softcap"], args: [30] };
    expect(withStep(c, { op: "scale", arg: 0.5 }, "end")).toEqual({
      ops: ["softcap", "scale"],
      args: [30, 0.5],
    });
    expect(withStep(c, { op: "tanh", arg: 0 }, "start")).toEqual({ ops: ["tanh", "softcap"], args: [0, 30] });
    expect(c).toEqual({ ops: ["softcap"], args: [30] });
    expect(chainText({ ops: ["softcap", "scale", "tanh", "sigmoid"], args: [30, 0.5, 0, 0] })).toBe(
      "softcap 30 → scale 0.5 → tanh → sigmoid",
    );
    expect(chainText(EMPTY_CHAIN)).toBe("");
  });
});

describe("applyChain", () => {
  it("applies the steps in order in place, each result rounded to fp32 (as the unfused ops)", () => {
    const xs = [-40, -3.3, -0.7, 0, 0.1, 1.9, 12.5, 77];
    const a = Float32Array.from(xs);
    applyChain(a, { ops: ["scale", "softcap", "sigmoid", "exp"], args: [1.5, 20, 0, 0] });
    const want = xs.map((x0) => {
      let x = Math.fround(x0 * 1.5);
      x = Math.fround(20 * Math.tanh(x / 20));
      x = Math.fround(1 / (1 + Math.exp(-x)));
      return Math.fround(Math.exp(x));
    });
    expect(Array.from(a)).toEqual(want);
    // Order matters: softcap then scale is not scale then softcap.
    const b = Float32Array.from(xs);
    applyChain(b, { ops: ["softcap", "scale"], args: [20, 1.5] });
    expect(Array.from(b)).toEqual(xs.map((x) => Math.fround(Math.fround(20 * Math.tanh(x / 20)) * 1.5)));
    const c = Float32Array.from(xs);
    applyChain(c, { ops: ["tanh"], args: [0] });
    expect(Array.from(c)).toEqual(xs.map((x) => Math.fround(Math.tanh(x))));
    const d = Float32Array.from(xs);
    applyChain(d, EMPTY_CHAIN);
    expect(Array.from(d)).toEqual(Array.from(Float32Array.from(xs)));
  });
});
