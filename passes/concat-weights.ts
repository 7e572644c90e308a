// Concatenating weights along axis 0 without reading them: the fused weight's recipe lists the parts
// of each source recipe in order (each keeping its own transforms, e.g. a tensor-parallel rank's
// slice), and the engine writer materialises the concatenation when it streams the weight.
import { addWeight } from "../src/ir/builder.ts";
import type { Graph, Value } from "../src/ir/types.ts";
import type { RecipePart } from "../src/weights/recipe.ts";

const FLOAT_WEIGHT = new Set(["f32", "f16", "bf16"]);

/** Why these weights cannot be concatenated lazily, or null when they can. */
export function whyNotConcat(g: Graph, ids: (number | null)[]): string | null {
  const vs = ids.map((id) => (id === null ? undefined : g.values.get(id)));
  if (vs.some((v) => v?.kind !== "weight")) return "an operand is not a weight";
  const ws = vs as Value[];
  for (const v of ws) {
    if (v.recipe?.kind !== "checkpoint") return `${v.name} is not a checkpoint weight`;
    if (!FLOAT_WEIGHT.has(v.dtype)) return `${v.name} is ${v.dtype} (quantised weights are not concatenated)`;
    if (v.recipe.transforms.length && v.recipe.parts.length > 1)
      return `${v.name} has transforms after its own concatenation`;
    if (v.shape.some((d) => typeof d !== "number")) return `${v.name} has a symbolic shape`;
  }
  const rest = (v: Value) => v.shape.slice(1).join(",");
  if (ws.some((v) => v.dtype !== ws[0].dtype)) return "weights differ in dtype";
  if (ws.some((v) => v.shape.length !== ws[0].shape.length || rest(v) !== rest(ws[0])))
    return "weights differ in shape beyond axis 0";
  return null;
}

/** A new weight value: the given weights concatenated along axis 0 (call whyNotConcat first). */
export function concatWeights(g: Graph, ids: number[], name: string): Value {
  const ws = ids.map((id) => g.values.get(id)!);
  const parts: RecipePart[] = [];
  for (const v of ws) {
    if (v.recipe?.kind !== "checkpoint") throw new Error(`${v.name} is not a checkpoint weight`);
    const r = v.recipe;
    // A single-part recipe's own transforms apply to that part alone, so they can move into it.
    if (r.parts.length === 1)
      parts.push({ ...r.parts[0], transforms: [...r.parts[0].transforms, ...r.transforms] });
    else if (r.transforms.length === 0) parts.push(...r.parts);
    else throw new Error(`${v.name} has transforms after its own concatenation`);
  }
  const first = ws[0];
  const init = first.recipe!.kind === "checkpoint" ? first.recipe!.init : { mean: 0, scale: 0 };
  const rows = ws.reduce((a, v) => a + (v.shape[0] as number), 0);
  return addWeight(
    g,
    name,
    first.dtype,
    [rows, ...first.shape.slice(1)],
    { kind: "checkpoint", parts, transforms: [], init },
    first.hints ? { ...first.hints } : undefined,
  );
}

/** "model.layers.0.self_attn.q_proj.weight" + "qkv_proj" → "model.layers.0.self_attn.qkv_proj.weight". */
export function fusedName(names: string[], fused: string): string {
  const split = names.map((n) => n.split("."));
  const suffix = split[0][split[0].length - 1];
  let i = 0;
  while (i < split[0].length - 2 && split.every((s) => s[i] === split[0][i])) i++;
  return [...split[0].slice(0, i), fused, suffix].join(".");
}
