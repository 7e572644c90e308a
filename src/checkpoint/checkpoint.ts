/**
 * A Hugging Face checkpoint directory: either `model.safetensors`, or shards
 * listed by `model.safetensors.index.json`. Opening reads only headers; every
 * tensor named by the index is checked to exist in its shard up front, so a
 * broken checkpoint fails before a long build starts.
 */
import * as fs from "node:fs";
import * as nodePath from "node:path";
import { isFloatDtype, toFloat32 } from "./dtype.ts";
import { CheckpointError } from "./errors.ts";
import { openSafetensors, type SafetensorsFile, type TensorInfo } from "./safetensors.ts";

export const SINGLE_FILE = "model.safetensors";
export const INDEX_FILE = "model.safetensors.index.json";

export interface Checkpoint {
  readonly dir: string;
  /** Every tensor name, sorted. */
  names(): string[];
  has(name: string): boolean;
  info(name: string): TensorInfo & { file: string };
  /** Raw little-endian bytes of the tensor, in its stored dtype. */
  read(name: string): Uint8Array;
  /** The tensor decoded to fp32 (float dtypes only). */
  readF32(name: string): Float32Array;
  close(): void;
  /**
   * For a name the checkpoint lacks: the shard that holds it all the same, unlisted in the index's
   * weight_map (so a "missing tensor" refusal can say which file to mend); else undefined.
   */
  unlisted?(name: string): string | undefined;
}

export function openCheckpoint(dir: string): Checkpoint {
  const indexPath = nodePath.join(dir, INDEX_FILE);
  const singlePath = nodePath.join(dir, SINGLE_FILE);
  if (fs.existsSync(indexPath)) return openSharded(dir, indexPath);
  if (fs.existsSync(singlePath)) {
    const file = openSafetensors(singlePath);
    return new CheckpointImpl(dir, new Map(file.names().map((n) => [n, file])), [file]);
  }
  // existsSync follows links: a link whose target is gone (a Hugging Face cache snapshot whose blob never finished
  // downloading) is there all the same, and "no checkpoint found" would send the user looking for the wrong thing.
  for (const p of [indexPath, singlePath]) {
    const dangling = danglingLink(p);
    if (dangling) throw new CheckpointError(p, `does not exist: it is ${dangling}`);
  }
  // Older folders hold only PyTorch pickles (pytorch_model.bin, or its shards and index), which are not read:
  // say so and how to convert, rather than "no checkpoint found" beside a folder of weights.
  const pickle = ["pytorch_model.bin.index.json", "pytorch_model.bin"].find((f) =>
    fs.existsSync(nodePath.join(dir, f)),
  );
  if (pickle)
    throw new CheckpointError(
      dir,
      `holds ${pickle} (PyTorch pickle weights), which are not read: convert the checkpoint to safetensors (transformers: model.save_pretrained(dir, safe_serialization=True))`,
    );
  const what = fs.existsSync(dir) ? "" : " (directory does not exist)";
  throw new CheckpointError(dir, `no checkpoint found: looked for ${INDEX_FILE} and ${SINGLE_FILE}${what}`);
}

/** "a link to X, which does not exist (…)" for a symbolic link whose target is missing; else undefined. */
function danglingLink(p: string): string | undefined {
  if (!fs.lstatSync(p, { throwIfNoEntry: false })?.isSymbolicLink() || fs.existsSync(p)) return undefined;
  return `a link to ${fs.readlinkSync(p)}, which does not exist (an incomplete download?)`;
}

function readWeightMap(indexPath: string): Record<string, string> {
  let json: unknown;
  try {
    json = JSON.parse(fs.readFileSync(indexPath, "utf8"));
  } catch (e) {
    throw new CheckpointError(indexPath, `cannot read shard index: ${(e as Error).message}`);
  }
  const map = (json as { weight_map?: unknown } | null)?.weight_map;
  if (typeof map !== "object" || map === null || Array.isArray(map)) {
    throw new CheckpointError(indexPath, `missing or invalid "weight_map" object`);
  }
  for (const [name, shard] of Object.entries(map)) {
    if (typeof shard !== "string" || shard === "") {
      throw new CheckpointError(
        indexPath,
        `weight_map entry is not a file name: ${JSON.stringify(shard)}`,
        name,
      );
    }
    // Shards live beside the index; refuse anything that would escape the directory.
    if (nodePath.isAbsolute(shard) || shard.split(/[\\/]/).includes("..")) {
      throw new CheckpointError(indexPath, `shard path "${shard}" leaves the checkpoint directory`, name);
    }
  }
  return map as Record<string, string>;
}

function openSharded(dir: string, indexPath: string): Checkpoint {
  const weightMap = readWeightMap(indexPath);
  const shards = new Map<string, SafetensorsFile>();
  const owner = new Map<string, SafetensorsFile>();
  try {
    for (const [name, shardName] of Object.entries(weightMap)) {
      let file = shards.get(shardName);
      if (!file) {
        const shardPath = nodePath.join(dir, shardName);
        if (!fs.existsSync(shardPath)) {
          const link = danglingLink(shardPath);
          throw new CheckpointError(
            indexPath,
            `shard file "${shardName}" does not exist (it should hold tensor "${name}")${link ? `: it is ${link}` : ""}`,
          );
        }
        file = openSafetensors(shardPath);
        shards.set(shardName, file);
      }
      if (!file.has(name)) {
        throw new CheckpointError(
          indexPath,
          `weight_map places this tensor in "${shardName}" but that shard lacks it`,
          name,
        );
      }
      owner.set(name, file);
    }
    // transformers loads every tensor of each shard it opens, so a tensor that two shards hold is read from
    // whichever comes last: when the copies differ, which weights the model gets depends on the loader.
    const unlisted = new Map<string, string>();
    for (const [shardName, file] of shards) {
      for (const name of file.names()) {
        const listed = owner.get(name);
        if (!listed) unlisted.set(name, shardName);
        else if (listed !== file && !sameTensor(listed, file, name)) {
          throw new CheckpointError(
            indexPath,
            `held by both "${shardName}" and "${nodePath.basename(listed.path)}" with different contents (weight_map names "${weightMap[name]}"): remove the stale copy`,
            name,
          );
        }
      }
    }
    const impl = new CheckpointImpl(dir, owner, [...shards.values()]);
    impl.unlisted = (name) => (owner.has(name) ? undefined : unlisted.get(name));
    return impl;
  } catch (e) {
    for (const f of shards.values()) f.close();
    throw e;
  }
}

/** Same dtype, shape and bytes (read only for the rare tensor two shards both hold). */
function sameTensor(a: SafetensorsFile, b: SafetensorsFile, name: string): boolean {
  const [x, y] = [a.info(name), b.info(name)];
  if (x.dtype !== y.dtype || x.shape.join(",") !== y.shape.join(",")) return false;
  return Buffer.from(a.read(name)).equals(b.read(name));
}

class CheckpointImpl implements Checkpoint {
  private readonly sortedNames: string[];
  unlisted?: (name: string) => string | undefined;
  constructor(
    readonly dir: string,
    private readonly owner: Map<string, SafetensorsFile>,
    private readonly files: SafetensorsFile[],
  ) {
    this.sortedNames = [...owner.keys()].sort();
  }

  names(): string[] {
    return [...this.sortedNames];
  }

  has(name: string): boolean {
    return this.owner.has(name);
  }

  private fileOf(name: string): SafetensorsFile {
    const f = this.owner.get(name);
    if (!f) throw new CheckpointError(this.dir, "no such tensor in checkpoint", name);
    return f;
  }

  info(name: string): TensorInfo & { file: string } {
    const f = this.fileOf(name);
    return { ...f.info(name), file: f.path };
  }

  read(name: string): Uint8Array {
    return this.fileOf(name).read(name);
  }

  readF32(name: string): Float32Array {
    const f = this.fileOf(name);
    const { dtype } = f.info(name);
    if (!isFloatDtype(dtype)) {
      throw new CheckpointError(f.path, `dtype ${dtype} cannot be read as fp32 (not a float dtype)`, name);
    }
    return toFloat32(dtype, f.read(name));
  }

  close(): void {
    for (const f of this.files) f.close();
  }
}
