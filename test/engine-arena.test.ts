// The activation arena of an engine (src/engine/arena.ts): sizes, the naive plan (every activation its own
// 256-byte-aligned slot, in node order), and the memory-plan pass's plan taken when the graph has one.
import { describe, expect, it } from "vitest";
import { activationBytes, arenaOf, naiveArena } from "../src/engine/arena.ts";
import type { Graph, Value } from "../src/ir/types.ts";

const T = { sym: "num_tokens", max: 4 };
const values: Value[] = [
  { id: 1, name: "x", dtype: "i32", shape: [T], kind: "input" },
  { id: 2, name: "a", dtype: "f32", shape: [2, 3], kind: "activation" }, // 24 bytes
  { id: 3, name: "b", dtype: "f16", shape: [T, 8], kind: "activation" }, // 4 · 8 · 2 = 64
  { id: 4, name: "c", dtype: "i8", shape: [300], kind: "activation" }, // 300
  { id: 5, name: "d", dtype: "bf16", shape: [128], kind: "activation" }, // 256: ends on a boundary
];
const graph = (arena?: Graph["meta"]["arena"]): Graph => ({
  values: new Map(values.map((v) => [v.id, v])),
  nodes: [
    { op: "p", inputs: [1], outputs: [2, 3], attrs: {} },
    { op: "q", inputs: [3], outputs: [4], attrs: {} },
    { op: "r", inputs: [4], outputs: [5], attrs: {} },
  ],
  inputs: { x: 1 },
  outputs: { y: 5 },
  meta: { numLayers: 1, numKvHeads: 1, headDim: 8, arena },
  nextId: 6,
});

describe("activation arena", () => {
  it("activationBytes: elements at the symbols' maxima times the dtype's size", () => {
    const g = graph();
    expect([1, 2, 3, 4, 5].map((id) => activationBytes(g, id))).toEqual([16, 24, 64, 300, 256]);
  });

  it("naiveArena: each output in node order at the previous end rounded up to 256", () => {
    // a 0..24 → 256; b 256..320 → 512; c 512..812 → 1024; d 1024..1280 (already aligned).
    expect(naiveArena(graph())).toEqual({ bytes: 1280, offsets: { 2: 0, 3: 256, 4: 512, 5: 1024 } });
    expect(naiveArena({ ...graph(), nodes: [] })).toEqual({ bytes: 0, offsets: {} });
  });

  it("arenaOf: the graph's own plan when it has one, else the naive one", () => {
    const plan = { bytes: 512, offsets: { 2: 0, 3: 256, 4: 0, 5: 256 } };
    expect(arenaOf(graph(plan))).toBe(plan);
    expect(arenaOf(graph())).toEqual(naiveArena(graph()));
  });
});
