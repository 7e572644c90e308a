// The tokenizer an engine carries: tsllm-compile copies a model folder's tokenizer files into the engine
// directory and records their names in config.json; tsllm-run/-serve/-tokenize load them back. A
// directory given to the tools may be an engine directory or a Hugging Face model folder.
import * as fs from "node:fs";
import * as path from "node:path";
import { isPlainFileName } from "../engine/format.ts";
import { TokenizerError } from "./errors.ts";
import { TextTokenizer, tokenizerFilesIn } from "./tokenizer.ts";

/**
 * What compile copies: --tokenizer DIR, else the checkpoint folder's tokenizer if it has one. Returns the
 * files (name → contents) and the names for config.json, or null; throws on a broken tokenizer.
 */
export function tokenizerForEngine(
  o: { tokenizer?: string; checkpoint?: string },
  vocabSize: number,
  log?: (line: string) => void,
): { files: Record<string, string>; names: string[] } | null {
  if (o.tokenizer && tokenizerFilesIn(o.tokenizer).length === 0)
    throw new TokenizerError(`--tokenizer ${o.tokenizer}: no tokenizer.json there`);
  const dir =
    o.tokenizer ?? (o.checkpoint && tokenizerFilesIn(o.checkpoint).length ? o.checkpoint : undefined);
  if (!dir) {
    log?.("no tokenizer: the engine takes token ids only (--tokenizer DIR adds one)");
    return null;
  }
  const tok = TextTokenizer.load(dir);
  if (tok.maxTokenId >= vocabSize)
    throw new TokenizerError(
      `${dir}: the tokenizer has token id ${tok.maxTokenId}, beyond the model's vocab_size ${vocabSize}`,
    );
  const files: Record<string, string> = {};
  for (const f of tok.files) files[f] = fs.readFileSync(path.join(dir, f), "utf8");
  log?.(
    `tokenizer: ${tok.files.join(", ")} from ${dir}${tok.hasChatTemplate ? " (with a chat template)" : ""}`,
  );
  return { files, names: tok.files };
}

function engineConfigOf(dir: string): { tokenizer?: { files?: unknown } } | null {
  const cfg = path.join(dir, "config.json");
  if (!fs.existsSync(cfg)) return null;
  try {
    const j = JSON.parse(fs.readFileSync(cfg, "utf8"));
    return j && typeof j === "object" && "format_version" in j && "ranks" in j ? j : null;
  } catch {
    return null;
  }
}

/** The tokenizer of an engine directory or a model folder; null (with why) when it has none. */
export function findTokenizer(dir: string): { tok: TextTokenizer } | { tok: null; why: string } {
  const engine = engineConfigOf(dir);
  if (engine) {
    const files = engine.tokenizer?.files;
    if (!Array.isArray(files))
      return {
        tok: null,
        why: `engine ${dir} has no tokenizer (rebuild from a folder with tokenizer.json, or with --tokenizer DIR); token ids still work`,
      };
    const bad = files.find((f) => typeof f !== "string" || !isPlainFileName(f));
    if (bad !== undefined)
      throw new TokenizerError(
        `${path.join(dir, "config.json")}: tokenizer file ${JSON.stringify(bad)} is not a plain file name`,
      );
    return { tok: TextTokenizer.load(dir, files as string[]) };
  }
  if (tokenizerFilesIn(dir).length === 0) return { tok: null, why: `${dir} has no tokenizer.json` };
  return { tok: TextTokenizer.load(dir) };
}

/** The tokenizer, or a one-line error saying there is none and what to do. */
export function requireTokenizer(dir: string, forWhat: string): TextTokenizer {
  const r = findTokenizer(dir);
  if (!r.tok) throw new TokenizerError(`${forWhat} needs a tokenizer: ${r.why}`);
  return r.tok;
}
