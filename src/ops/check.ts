// Small shape-checking helpers shared by op declarations.
import { type Dim, type Shape, sameDim, shapeStr } from "../ir/types.ts";
import type { ValueType } from "./registry.ts";

export function need(op: string, v: ValueType | null, what: string): ValueType {
  if (!v) throw new Error(`${op}: missing input ${what}`);
  return v;
}

export function lastDim(s: Shape): Dim {
  return s[s.length - 1];
}

export function expectDim(op: string, got: Dim, want: Dim, what: string): void {
  if (!sameDim(got, want)) {
    const f = (d: Dim) => (typeof d === "number" ? String(d) : d.sym);
    throw new Error(`${op}: ${what} is ${f(got)}, expected ${f(want)}`);
  }
}

export function expectSameShape(op: string, a: Shape, b: Shape): void {
  if (a.length !== b.length || a.some((d, i) => !sameDim(d, b[i]))) {
    throw new Error(`${op}: shapes ${shapeStr(a)} and ${shapeStr(b)} differ`);
  }
}

export function withLast(s: Shape, d: Dim): Shape {
  return [...s.slice(0, -1), d];
}
