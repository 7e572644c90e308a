// openCheckpoint (src/checkpoint/checkpoint.ts) on small hand-made checkpoint directories: which file wins,
// what a sharded checkpoint exposes and from which shard, that every shard it opened is closed again (after
// close(), and when opening fails half-way), and the refusals, each one CheckpointError naming the file and
// what is wrong. Everything is written inside this file's own temporary folder.
import { execFileSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { INDEX_FILE, openCheckpoint, SINGLE_FILE } from "../../src/checkpoint/checkpoint.ts";
import { CheckpointError } from "../../src/checkpoint/errors.ts";
import { openSafetensors, type TensorToWrite, writeSafetensors } from "../../src/checkpoint/safetensors.ts";
import { thrown } from "../thrown.ts";

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "tsllm-ckpt-dir-"));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));
const newDir = () => fs.mkdtempSync(path.join(tmp, "c"));

/** Little-endian bytes of 16-bit patterns (written with DataView, not the code under test). */
function u16le(...bits: number[]): Uint8Array {
  const b = new Uint8Array(2 * bits.length);
  const dv = new DataView(b.buffer);
  bits.forEach((x, i) => dv.setUint16(2 * i, x, true));
  return b;
}
function f32le(...xs: number[]): Uint8Array {
  const b = new Uint8Array(4 * xs.length);
  const dv = new DataView(b.buffer);
  xs.forEach((x, i) => dv.setFloat32(4 * i, x, true));
  return b;
}
const t = (dtype: TensorToWrite["dtype"], data: Uint8Array, shape = [data.byteLength]): TensorToWrite => ({
  dtype,
  shape,
  data,
});
const index = (dir: string, weightMap: unknown) =>
  fs.writeFileSync(path.join(dir, INDEX_FILE), JSON.stringify({ metadata: {}, weight_map: weightMap }));
/** Open file descriptors of this process (Linux): a shard left open shows here. */
const openFds = () => fs.readdirSync("/proc/self/fd").length;

describe("a single-file checkpoint", () => {
  it("lists its names sorted (not in file order) and hands out a copy", () => {
    const dir = newDir();
    writeSafetensors(path.join(dir, SINGLE_FILE), {
      zeta: t("U8", new Uint8Array([1])),
      alpha: t("U8", new Uint8Array([2])),
      mid: t("U8", new Uint8Array([3])),
    });
    const c = openCheckpoint(dir);
    const names = c.names();
    expect(names).toEqual(["alpha", "mid", "zeta"]);
    names.pop();
    expect(c.names()).toEqual(["alpha", "mid", "zeta"]);
    expect(c.dir).toBe(dir);
    expect(Array.from(c.read("zeta"))).toEqual([1]);
    expect(c.info("mid")).toEqual({
      dtype: "U8",
      shape: [1],
      byteLength: 1,
      // Stored in the order written, one byte each: zeta, alpha, then mid.
      fileOffset: c.info("zeta").fileOffset + 2,
      file: path.join(dir, SINGLE_FILE),
    });
    c.close();
  });

  it("close() closes the file", () => {
    const dir = newDir();
    writeSafetensors(path.join(dir, SINGLE_FILE), { x: t("U8", new Uint8Array([1])) });
    const before = openFds();
    const c = openCheckpoint(dir);
    expect(openFds()).toBe(before + 1);
    c.close();
    expect(openFds()).toBe(before);
    expect(thrown(() => c.read("x"), CheckpointError).message).toMatch(/read after close/);
  });

  it("decodes each float dtype to fp32 by its definition (hand-worked values)", () => {
    const dir = newDir();
    writeSafetensors(path.join(dir, SINGLE_FILE), {
      f32: t("F32", f32le(0.15625, -3), [2]),
      // fp16: 1, -2, (1 + 341/1024)/4, the smallest subnormal 2^-24
      f16: t("F16", u16le(0x3c00, 0xc000, 0x3555, 0x0001), [4]),
      // bf16: the top half of fp32 1, -5, 3.140625
      bf16: t("BF16", u16le(0x3f80, 0xc0a0, 0x4049), [3]),
      // E4M3 (bias 7): 0.0111.000 = 1, 0.1111.110 = 448, 1.0110.000 = -0.5
      e4m3: t("F8_E4M3", new Uint8Array([0x38, 0x7e, 0xb0])),
      // E5M2 (bias 15): 0.01111.00 = 1, 0.10000.00 = 2, 1.01111.00 = -1
      e5m2: t("F8_E5M2", new Uint8Array([0x3c, 0x40, 0xbc])),
    });
    const c = openCheckpoint(dir);
    expect(Array.from(c.readF32("f32"))).toEqual([0.15625, -3]);
    expect(Array.from(c.readF32("f16"))).toEqual([1, -2, 1365 / 4096, 2 ** -24]);
    expect(Array.from(c.readF32("bf16"))).toEqual([1, -5, 3.140625]);
    expect(Array.from(c.readF32("e4m3"))).toEqual([1, 448, -0.5]);
    expect(Array.from(c.readF32("e5m2"))).toEqual([1, 2, -1]);
    c.close();
  });

  it("refuses readF32 of an integer or fp64 tensor, and any access to an unknown tensor, naming it", () => {
    const dir = newDir();
    const file = path.join(dir, SINGLE_FILE);
    writeSafetensors(file, {
      ids: t("I32", new Uint8Array(8), [2]),
      mask: t("BOOL", new Uint8Array(2)),
      wide: t("F64", new Uint8Array(8), [1]),
    });
    const c = openCheckpoint(dir);
    for (const [name, dtype] of [
      ["ids", "I32"],
      ["mask", "BOOL"],
      ["wide", "F64"],
    ]) {
      const e = thrown(() => c.readF32(name), CheckpointError);
      expect(e.message).toBe(
        `${file}: tensor "${name}": dtype ${dtype} cannot be read as fp32 (not a float dtype)`,
      );
    }
    for (const f of [() => c.read("nope"), () => c.info("nope"), () => c.readF32("nope")]) {
      expect(thrown(f, CheckpointError).message).toBe(`${dir}: tensor "nope": no such tensor in checkpoint`);
    }
    expect(c.has("ids")).toBe(true);
    expect(c.has("nope")).toBe(false);
    c.close();
  });
});

describe("a sharded checkpoint", () => {
  function sharded() {
    const dir = newDir();
    writeSafetensors(path.join(dir, "s1.safetensors"), {
      b: t("F16", u16le(0x3c00, 0xc000), [2]),
      a: t("U8", new Uint8Array([7, 8, 9])),
    });
    // A shard name with ".." inside a component is a plain file name, not a way out of the directory.
    writeSafetensors(path.join(dir, "s..2.safetensors"), {
      c: t("BF16", u16le(0x3f80), [1]),
      stray: t("U8", new Uint8Array([0])), // in the shard but not in the index
    });
    index(dir, { c: "s..2.safetensors", b: "s1.safetensors", a: "s1.safetensors" });
    return dir;
  }

  it("exposes exactly the index's tensors, each read from its own shard", () => {
    const dir = sharded();
    const c = openCheckpoint(dir);
    expect(c.names()).toEqual(["a", "b", "c"]);
    expect(c.has("stray")).toBe(false);
    expect(c.info("a").file).toBe(path.join(dir, "s1.safetensors"));
    expect(c.info("c").file).toBe(path.join(dir, "s..2.safetensors"));
    expect(Array.from(c.read("a"))).toEqual([7, 8, 9]);
    expect(Array.from(c.readF32("b"))).toEqual([1, -2]);
    expect(Array.from(c.readF32("c"))).toEqual([1]);
    c.close();
  });

  it("a shard named by several tensors is opened once, and close() closes every shard", () => {
    const dir = sharded();
    const before = openFds();
    const c = openCheckpoint(dir);
    expect(openFds()).toBe(before + 2);
    c.close();
    expect(openFds()).toBe(before);
    for (const name of ["a", "c"])
      expect(thrown(() => c.read(name), CheckpointError).message).toMatch(/read after close/);
  });

  it("the index wins over a model.safetensors beside it", () => {
    const dir = sharded();
    writeSafetensors(path.join(dir, SINGLE_FILE), { other: t("U8", new Uint8Array([1])) });
    const c = openCheckpoint(dir);
    expect(c.names()).toEqual(["a", "b", "c"]);
    c.close();
  });

  it("names the shard that holds a tensor the weight_map leaves out (for the missing-tensor refusal)", () => {
    const c = openCheckpoint(sharded());
    expect(c.unlisted?.("stray")).toBe("s..2.safetensors");
    expect(c.unlisted?.("a")).toBeUndefined(); // listed
    expect(c.unlisted?.("nowhere")).toBeUndefined();
    c.close();
  });

  it("a tensor two shards hold: the same bytes are accepted, different ones refused in one line", () => {
    // transformers loads every tensor of each shard, the last shard's copy winning: the weights would depend
    // on the loader. The listed copy was read without a word before.
    const dir = newDir();
    writeSafetensors(path.join(dir, "s2.safetensors"), {
      x: t("U8", new Uint8Array([1, 2])),
      y: t("U8", new Uint8Array([3])),
    });
    index(dir, { x: "s2.safetensors", y: "s2.safetensors", z: "s1.safetensors" });
    writeSafetensors(path.join(dir, "s1.safetensors"), {
      x: t("U8", new Uint8Array([1, 2])),
      z: t("U8", new Uint8Array([0])),
    });
    const c = openCheckpoint(dir);
    expect(Array.from(c.read("x"))).toEqual([1, 2]);
    c.close();
    writeSafetensors(path.join(dir, "s1.safetensors"), {
      x: t("U8", new Uint8Array([1, 9])),
      z: t("U8", new Uint8Array([0])),
    });
    const before = openFds();
    const e = thrown(() => openCheckpoint(dir), CheckpointError);
    expect(e.message).toBe(
      `${path.join(dir, INDEX_FILE)}: tensor "x": held by both "s1.safetensors" and "s2.safetensors" with different contents (weight_map names "s2.safetensors"): remove the stale copy`,
    );
    expect(openFds()).toBe(before);
  });

  it("closes the shards it had opened when a later one is missing", () => {
    const dir = newDir();
    writeSafetensors(path.join(dir, "s1.safetensors"), { x: t("U8", new Uint8Array([1])) });
    index(dir, { x: "s1.safetensors", y: "s2.safetensors" });
    const before = openFds();
    const e = thrown(() => openCheckpoint(dir), CheckpointError);
    expect(e.message).toBe(
      `${path.join(dir, INDEX_FILE)}: shard file "s2.safetensors" does not exist (it should hold tensor "y")`,
    );
    expect(openFds()).toBe(before);
  });

  it("closes the shards it had opened when a later one lacks its tensor", () => {
    const dir = newDir();
    writeSafetensors(path.join(dir, "s1.safetensors"), { x: t("U8", new Uint8Array([1])) });
    index(dir, { x: "s1.safetensors", y: "s1.safetensors" });
    const before = openFds();
    const e = thrown(() => openCheckpoint(dir), CheckpointError);
    expect(e.message).toBe(
      `${path.join(dir, INDEX_FILE)}: tensor "y": weight_map places this tensor in "s1.safetensors" but that shard lacks it`,
    );
    expect(openFds()).toBe(before);
  });
});

describe("refusals", () => {
  it("a directory that does not exist, or holds neither file, says so", () => {
    const gone = path.join(tmp, "no-such-dir");
    const what = `no checkpoint found: looked for ${INDEX_FILE} and ${SINGLE_FILE}`;
    expect(thrown(() => openCheckpoint(gone), CheckpointError).message).toBe(
      `${gone}: ${what} (directory does not exist)`,
    );
    const empty = newDir();
    expect(thrown(() => openCheckpoint(empty), CheckpointError).message).toBe(`${empty}: ${what}`);
  });

  it("a folder of PyTorch pickles only (pytorch_model.bin, or its index) is named, with how to convert", () => {
    const convert =
      "(PyTorch pickle weights), which are not read: convert the checkpoint to safetensors (transformers: model.save_pretrained(dir, safe_serialization=True))";
    for (const f of ["pytorch_model.bin", "pytorch_model.bin.index.json"]) {
      const dir = newDir();
      fs.writeFileSync(path.join(dir, f), "x");
      expect(thrown(() => openCheckpoint(dir), CheckpointError).message).toBe(
        `${dir}: holds ${f} ${convert}`,
      );
    }
  });

  it("an index that is not JSON, or has no weight_map object", () => {
    const dir = newDir();
    const idx = path.join(dir, INDEX_FILE);
    fs.writeFileSync(idx, "{ not json");
    expect(thrown(() => openCheckpoint(dir), CheckpointError).message).toMatch(
      new RegExp(`^${idx}: cannot read shard index: .*JSON`),
    );
    for (const text of [
      "null",
      "[]",
      "{}",
      '{"weight_map": null}',
      '{"weight_map": []}',
      '{"weight_map": "a"}',
    ]) {
      fs.writeFileSync(idx, text);
      expect(thrown(() => openCheckpoint(dir), CheckpointError).message).toBe(
        `${idx}: missing or invalid "weight_map" object`,
      );
    }
  });

  it("a weight_map entry that is not a file name", () => {
    const dir = newDir();
    const idx = path.join(dir, INDEX_FILE);
    for (const [shard, shown] of [
      [3, "3"],
      ["", '""'],
      [null, "null"],
      [["a"], '["a"]'],
    ]) {
      index(dir, { w: shard });
      expect(thrown(() => openCheckpoint(dir), CheckpointError).message).toBe(
        `${idx}: tensor "w": weight_map entry is not a file name: ${shown}`,
      );
    }
  });

  it("a shard path that leaves the directory (by .. with either separator, or absolute)", () => {
    const dir = newDir();
    const idx = path.join(dir, INDEX_FILE);
    for (const shard of [
      "../x.safetensors",
      "a/../../x.safetensors",
      "..\\x.safetensors",
      "a\\..",
      "/x.safetensors",
    ]) {
      index(dir, { w: shard });
      expect(thrown(() => openCheckpoint(dir), CheckpointError).message).toBe(
        `${idx}: tensor "w": shard path "${shard}" leaves the checkpoint directory`,
      );
    }
  });

  // Linux opens a directory for reading; the safetensors reader then failed at its first read with a bare
  // "EISDIR: illegal operation on a directory, read", naming no file.
  it("a model.safetensors that is a directory", () => {
    const dir = newDir();
    fs.mkdirSync(path.join(dir, SINGLE_FILE));
    expect(thrown(() => openCheckpoint(dir), CheckpointError).message).toBe(
      `${path.join(dir, SINGLE_FILE)}: is a directory, not a safetensors file`,
    );
  });

  it("a safetensors file opened alone (a --golden file) that is a directory", () => {
    const dir = newDir();
    const before = openFds();
    expect(thrown(() => openSafetensors(dir), CheckpointError).message).toBe(
      `${dir}: is a directory, not a safetensors file`,
    );
    expect(openFds()).toBe(before);
  });

  it("a model.safetensors that is a FIFO is refused at once (opening it for reading would wait for a writer)", () => {
    const dir = newDir();
    const fifo = path.join(dir, SINGLE_FILE);
    execFileSync("mkfifo", [fifo]);
    expect(thrown(() => openCheckpoint(dir), CheckpointError).message).toBe(
      `${fifo}: is not a regular file (a FIFO, socket or device)`,
    );
  });

  it("a shard that is a directory (a sub-folder, or the checkpoint directory itself)", () => {
    const dir = newDir();
    fs.mkdirSync(path.join(dir, "sub"));
    for (const shard of ["sub", "."]) {
      index(dir, { w: shard });
      const before = openFds();
      expect(thrown(() => openCheckpoint(dir), CheckpointError).message).toBe(
        `${path.join(dir, shard)}: is a directory, not a safetensors file`,
      );
      expect(openFds()).toBe(before);
    }
  });
});
