import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { openCheckpoint } from "../../src/checkpoint/checkpoint.ts";
import { CheckpointError } from "../../src/checkpoint/errors.ts";
import { openSafetensors, writeSafetensors } from "../../src/checkpoint/safetensors.ts";
import { TINY_GPTJ, TINY_LLAMA } from "../fixtures.ts";
import { refF16 } from "./ref-float.ts";

// Independent decodes via DataView, from the format definitions.
function refBf16(bytes: Uint8Array, i: number): number {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const tmp = new DataView(new ArrayBuffer(4));
  tmp.setUint32(0, dv.getUint16(2 * i, true) << 16);
  return tmp.getFloat32(0);
}
function refF16At(bytes: Uint8Array, i: number): number {
  return refF16(new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getUint16(2 * i, true));
}

// Each 16-bit tensor read as fp32 equals the oracle at the given indices (the last element too), and is not zero.
function expectExactF32(
  ckpt: ReturnType<typeof openCheckpoint>,
  names: string[],
  indices: number[],
  ref: (raw: Uint8Array, i: number) => number,
) {
  for (const name of names) {
    const raw = ckpt.read(name);
    const f = ckpt.readF32(name);
    expect(f.length).toBe(raw.byteLength / 2);
    for (const i of [...indices, f.length - 1]) expect(f[i]).toBe(ref(raw, i));
    expect(f.some((x) => x !== 0)).toBe(true);
  }
}

describe("tiny-llama (single file, bf16)", () => {
  const ckpt = openCheckpoint(TINY_LLAMA);
  afterAll(() => ckpt.close());

  it("lists the Llama tensors with the shapes the config implies", () => {
    const names = ckpt.names();
    expect(names).toHaveLength(2 * 9 + 3);
    expect(names).toContain("model.embed_tokens.weight");
    expect(names).toContain("lm_head.weight");
    expect(ckpt.info("model.embed_tokens.weight")).toMatchObject({
      dtype: "BF16",
      shape: [512, 128],
      byteLength: 512 * 128 * 2,
    });
    // GQA: 4 heads × 32 for q, 2 KV heads × 32 for k and v.
    expect(ckpt.info("model.layers.0.self_attn.q_proj.weight").shape).toEqual([128, 128]);
    expect(ckpt.info("model.layers.1.self_attn.k_proj.weight").shape).toEqual([64, 128]);
    expect(ckpt.info("model.layers.1.self_attn.v_proj.weight").shape).toEqual([64, 128]);
    expect(ckpt.info("model.layers.0.mlp.gate_proj.weight").shape).toEqual([352, 128]);
    expect(ckpt.info("model.layers.0.mlp.down_proj.weight").shape).toEqual([128, 352]);
    expect(ckpt.info("model.norm.weight").shape).toEqual([128]);
    for (const n of names) expect(ckpt.info(n).dtype).toBe("BF16");
    expect(ckpt.has("model.norm.weight")).toBe(true);
    expect(ckpt.has("model.nope")).toBe(false);
  });

  it("decodes bf16 to fp32 exactly", () => {
    const names = ["model.embed_tokens.weight", "model.layers.1.mlp.up_proj.weight", "model.norm.weight"];
    expectExactF32(ckpt, names, [0, 1, 7, 100], refBf16);
  });

  it("names the tensor and the directory when a tensor is missing", () => {
    expect(() => ckpt.read("model.layers.9.mlp.up_proj.weight")).toThrow(CheckpointError);
    expect(() => ckpt.info("model.layers.9.mlp.up_proj.weight")).toThrow(
      new RegExp(`${TINY_LLAMA}.*"model\\.layers\\.9\\.mlp\\.up_proj\\.weight"`),
    );
  });

  it("reads the golden file's int32 tokens and metadata", () => {
    const g = openSafetensors(path.join(TINY_LLAMA, "golden.safetensors"));
    const lens = g.metadata.prompt_lens.split(",").map(Number);
    const ids = g.info("p0.input_ids");
    expect(ids.dtype).toBe("I32");
    expect(ids.shape).toEqual([lens[0] + Number(g.metadata.new_tokens)]);
    expect(g.info("p0.logits").shape).toEqual([ids.shape[0], 512]);
    g.close();
  });
});

describe("tiny-gptj (sharded, fp16)", () => {
  const ckpt = openCheckpoint(TINY_GPTJ);
  afterAll(() => ckpt.close());
  const index = JSON.parse(fs.readFileSync(path.join(TINY_GPTJ, "model.safetensors.index.json"), "utf8"));

  it("exposes exactly the tensors of the index, each from its shard", () => {
    expect(ckpt.names()).toEqual(Object.keys(index.weight_map).sort());
    for (const [name, shard] of Object.entries(index.weight_map)) {
      const info = ckpt.info(name);
      expect(info.dtype).toBe("F16");
      expect(path.basename(info.file)).toBe(shard);
    }
    expect(ckpt.info("transformer.wte.weight").shape).toEqual([512, 128]);
    expect(ckpt.info("transformer.h.0.mlp.fc_in.weight").shape).toEqual([512, 128]);
    expect(ckpt.info("transformer.h.0.mlp.fc_out.weight").shape).toEqual([128, 512]);
    expect(ckpt.info("lm_head.bias").shape).toEqual([512]);
    // Sum of tensor sizes equals the index's total_size.
    const total = ckpt.names().reduce((s, n) => s + ckpt.info(n).byteLength, 0);
    expect(total).toBe(index.metadata.total_size);
  });

  it("decodes fp16 to fp32 exactly", () => {
    const names = ["transformer.wte.weight", "transformer.h.1.attn.q_proj.weight", "transformer.ln_f.weight"];
    expectExactF32(ckpt, names, [0, 3, 64], refF16At);
  });
});

describe("broken checkpoint directories", () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "tsllm-ckpt-"));
  afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));
  const tensor = { dtype: "F32" as const, shape: [2], data: new Uint8Array(8) };

  it("index naming a missing shard: names the shard file and a tensor in it", () => {
    const dir = fs.mkdtempSync(path.join(tmp, "d"));
    writeSafetensors(path.join(dir, "a.safetensors"), { x: tensor });
    fs.writeFileSync(
      path.join(dir, "model.safetensors.index.json"),
      JSON.stringify({ weight_map: { x: "a.safetensors", y: "b.safetensors" } }),
    );
    expect(() => openCheckpoint(dir)).toThrow(CheckpointError);
    expect(() => openCheckpoint(dir)).toThrow(
      /model\.safetensors\.index\.json.*"b\.safetensors" does not exist.*"y"/,
    );
  });

  it("index placing a tensor in a shard that lacks it", () => {
    const dir = fs.mkdtempSync(path.join(tmp, "d"));
    writeSafetensors(path.join(dir, "a.safetensors"), { x: tensor });
    fs.writeFileSync(
      path.join(dir, "model.safetensors.index.json"),
      JSON.stringify({ weight_map: { z: "a.safetensors" } }),
    );
    expect(() => openCheckpoint(dir)).toThrow(/"z".*"a\.safetensors" but that shard lacks it/);
  });

  it("index without weight_map, or with a path leaving the directory", () => {
    const dir = fs.mkdtempSync(path.join(tmp, "d"));
    const idx = path.join(dir, "model.safetensors.index.json");
    fs.writeFileSync(idx, JSON.stringify({ metadata: {} }));
    expect(() => openCheckpoint(dir)).toThrow(/weight_map/);
    fs.writeFileSync(idx, JSON.stringify({ weight_map: { x: "../a.safetensors" } }));
    expect(() => openCheckpoint(dir)).toThrow(/leaves the checkpoint directory/);
  });

  it("directory with neither file: names the dir and what was looked for", () => {
    const dir = fs.mkdtempSync(path.join(tmp, "empty"));
    expect(() => openCheckpoint(dir)).toThrow(
      new RegExp(
        `${dir}: no checkpoint found: looked for model\\.safetensors\\.index\\.json and model\\.safetensors`,
      ),
    );
  });

  it("readF32 of a non-float tensor names the tensor", () => {
    const dir = fs.mkdtempSync(path.join(tmp, "d"));
    writeSafetensors(path.join(dir, "model.safetensors"), {
      ids: { dtype: "I32", shape: [2], data: new Uint8Array(8) },
    });
    const c = openCheckpoint(dir);
    expect(c.read("ids").byteLength).toBe(8);
    expect(() => c.readF32("ids")).toThrow(/"ids".*I32/);
    c.close();
  });
});
