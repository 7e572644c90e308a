// bindCheckpointWeights (src/weights/check.ts) against tiny-llama's checkpoint (read only): which recipe
// parts it binds (the part itself or one of its `or` alternatives), what it leaves alone, and its refusals
// with their exact one-line messages. Shapes are the fixture's: model.norm.weight [128], q_proj [128, 128],
// k_proj [64, 128], embed_tokens [512, 128].
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { INDEX_FILE, openCheckpoint } from "../../src/checkpoint/checkpoint.ts";
import { CheckpointError } from "../../src/checkpoint/errors.ts";
import { type TensorToWrite, writeSafetensors } from "../../src/checkpoint/safetensors.ts";
import type { Graph, Value } from "../../src/ir/types.ts";
import { bindCheckpointWeights } from "../../src/weights/check.ts";
import type { RecipePart, WeightRecipe } from "../../src/weights/recipe.ts";
import { TINY_LLAMA } from "../fixtures.ts";

const ckpt = openCheckpoint(TINY_LLAMA);
const FILE = path.join(TINY_LLAMA, "model.safetensors");
const NORM = "model.norm.weight";
const Q = "model.layers.0.self_attn.q_proj.weight";
const K = "model.layers.0.self_attn.k_proj.weight";
const init = { mean: 0, scale: 0.5 };

const recipe = (...parts: RecipePart[]): WeightRecipe => ({
  kind: "checkpoint",
  parts,
  transforms: [{ op: "slice", axis: 0, start: 0, end: 64 }],
  init,
});
const value = (id: number, r: WeightRecipe | undefined, kind: Value["kind"] = "weight"): Value => ({
  id,
  name: `v${id}`,
  dtype: "f32",
  shape: [1],
  kind,
  ...(r && { recipe: r }),
});
const graph = (...vs: Value[]) => ({ values: new Map(vs.map((v) => [v.id, v])) }) as unknown as Graph;
const bind = (...parts: RecipePart[]) => {
  const g = graph(value(0, recipe(...parts)));
  bindCheckpointWeights(g, ckpt);
  return g.values.get(0)!.recipe;
};
/** The whole message, not a part of it. */
const exactly = (m: string) => new RegExp(`^${m.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}$`);
const thrown = (f: () => void): CheckpointError => {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(CheckpointError);
    return e as CheckpointError;
  }
  throw exactly("did not throw");
};

describe("bindCheckpointWeights", () => {
  it("keeps parts the checkpoint has (their `or` dropped) and the recipe's other fields", () => {
    const sel = { op: "select", axis: 0, index: 1 } as const;
    expect(
      bind(
        { name: NORM, shape: [128], transforms: [] },
        {
          name: Q,
          shape: [128, 128],
          transforms: [sel],
          or: [{ name: K, shape: [64, 128], transforms: [] }],
        },
      ),
    ).toStrictEqual({
      kind: "checkpoint",
      parts: [
        { name: NORM, shape: [128], transforms: [] },
        { name: Q, shape: [128, 128], transforms: [sel] },
      ],
      transforms: [{ op: "slice", axis: 0, start: 0, end: 64 }],
      init: { mean: 0, scale: 0.5 },
    });
  });

  it("binds the first alternative the checkpoint has, with its own shape and transforms", () => {
    const sel = { op: "select", axis: 1, index: 3 } as const;
    const r = bind({
      name: "model.layers.0.mlp.experts.gate_up_proj",
      shape: [7],
      transforms: [],
      or: [
        { name: "absent.weight", shape: [128, 128], transforms: [] },
        { name: K, shape: [64, 128], transforms: [sel] },
        { name: Q, shape: [128, 128], transforms: [] },
      ],
    });
    expect(r).toStrictEqual({ ...recipe(), parts: [{ name: K, shape: [64, 128], transforms: [sel] }] });
  });

  it("leaves constants, weights without a recipe and non-weights alone", () => {
    const missing = recipe({ name: "absent.weight", shape: [1], transforms: [] });
    const constant: WeightRecipe = { kind: "constant", data: [1, 2] };
    const g = graph(
      value(0, constant),
      value(1, undefined),
      value(2, missing, "activation"),
      value(3, missing, "input"),
    );
    bindCheckpointWeights(g, ckpt);
    expect(g.values.get(0)!.recipe).toBe(constant);
    expect(g.values.get(1)!.recipe).toBeUndefined();
    expect(g.values.get(2)!.recipe).toBe(missing);
    expect(g.values.get(3)!.recipe).toBe(missing);
  });

  it("refuses a missing tensor, naming it (and its alternatives)", () => {
    const e = thrown(() => bind({ name: "absent.weight", shape: [1], transforms: [] }));
    expect(e.message).toBe(`${TINY_LLAMA}: tensor "absent.weight": missing tensor the model needs`);
    expect([e.file, e.tensor]).toEqual([TINY_LLAMA, "absent.weight"]);
    expect(() => bind({ name: "a.weight", shape: [1], transforms: [], or: [] })).toThrow(
      exactly(`${TINY_LLAMA}: tensor "a.weight": missing tensor the model needs`),
    );
    const alt = (name: string): RecipePart => ({ name, shape: [1], transforms: [] });
    expect(() => bind({ ...alt("a.weight"), or: [alt("b.weight")] })).toThrow(
      exactly(
        `${TINY_LLAMA}: tensor "a.weight": missing tensor the model needs (nor "b.weight" of another layout)`,
      ),
    );
    expect(() => bind({ ...alt("a.weight"), or: [alt("b.weight"), alt("c.weight")] })).toThrow(
      exactly(
        `${TINY_LLAMA}: tensor "a.weight": missing tensor the model needs (nor "b.weight" or "c.weight" of another layout)`,
      ),
    );
    // the first part that fails stops it, after the parts before it were found
    expect(() => bind({ name: NORM, shape: [128], transforms: [] }, alt("z.weight"))).toThrow(
      exactly(`${TINY_LLAMA}: tensor "z.weight": missing tensor the model needs`),
    );
  });

  it("a tensor a shard holds but the index's weight_map leaves out: names the index, the shard, and the mend", () => {
    // It was "missing tensor the model needs" about the folder, sending the user to shards that do hold it.
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tsllm-check-"));
    try {
      const one: TensorToWrite = { dtype: "F32", shape: [1], data: new Uint8Array(4) };
      writeSafetensors(path.join(dir, "s.safetensors"), { "a.weight": one, "b.weight": one });
      fs.writeFileSync(
        path.join(dir, INDEX_FILE),
        JSON.stringify({ weight_map: { "b.weight": "s.safetensors" } }),
      );
      const sharded = openCheckpoint(dir);
      const g = graph(value(0, recipe({ name: "a.weight", shape: [1], transforms: [] })));
      const e = thrown(() => bindCheckpointWeights(g, sharded));
      sharded.close();
      expect(e.message).toBe(
        `${path.join(dir, INDEX_FILE)}: tensor "a.weight": not in weight_map, though shard "s.safetensors" holds it: add it to weight_map`,
      );
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it("refuses a shape other than the checkpoint's, in the file that holds it", () => {
    const e = thrown(() => bind({ name: NORM, shape: [64], transforms: [] }));
    expect(e.message).toBe(`${FILE}: tensor "${NORM}": shape [128] but the model expects [64]`);
    expect([e.file, e.tensor]).toEqual([FILE, NORM]);
    expect(() => bind({ name: K, shape: [128, 64], transforms: [] })).toThrow(
      exactly(`${FILE}: tensor "${K}": shape [64,128] but the model expects [128,64]`),
    );
    expect(() => bind({ name: K, shape: [64, 128, 1], transforms: [] })).toThrow(
      exactly(`${FILE}: tensor "${K}": shape [64,128] but the model expects [64,128,1]`),
    );
    // the alternative bound is checked against its own declared shape, and named
    expect(() =>
      bind({
        name: "absent.weight",
        shape: [64, 128],
        transforms: [],
        or: [{ name: Q, shape: [64, 128], transforms: [] }],
      }),
    ).toThrow(exactly(`${FILE}: tensor "${Q}": shape [128,128] but the model expects [64,128]`));
  });
});
