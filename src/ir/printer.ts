// A readable text form of a graph, one node per line:  %12:f16[num_tokens,4096] = linear(%3, %7) {activation=none}
import { type Graph, shapeStr } from "./types.ts";

export function printGraph(g: Graph): string {
  const name = (id: number | null) => (id === null ? "_" : `%${id}`);
  const lines: string[] = [];
  for (const [k, id] of Object.entries(g.inputs)) {
    const v = g.values.get(id)!;
    lines.push(`input ${name(id)}:${v.dtype}${shapeStr(v.shape)} ${k}`);
  }
  for (const n of g.nodes) {
    const outs = n.outputs.map((o) => {
      const v = g.values.get(o)!;
      return `${name(o)}:${v.dtype}${shapeStr(v.shape)}`;
    });
    const ins = n.inputs.map((i) => {
      if (i === null) return "_";
      const v = g.values.get(i)!;
      return v.kind === "weight" ? `@${v.name}` : name(i);
    });
    const attrs = Object.entries(n.attrs)
      .map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : String(v)}`)
      .join(", ");
    lines.push(`${outs.join(", ")} = ${n.op}(${ins.join(", ")})${attrs ? ` {${attrs}}` : ""}`);
  }
  for (const [k, id] of Object.entries(g.outputs)) lines.push(`output ${k} = ${name(id)}`);
  return lines.join("\n");
}
