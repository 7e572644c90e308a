// Text ↔ token ids for a Hugging Face model folder or an engine directory that carries one:
// tokenizer.json through @huggingface/tokenizers, the chat template through @huggingface/jinja, and
// bos/eos/special tokens from tokenizer_config.json, special_tokens_map.json and generation_config.json
// (generation_config first for eos, as transformers' generate does).
import * as fs from "node:fs";
import * as path from "node:path";
import { Tokenizer } from "@huggingface/tokenizers";
import { type ChatMessage, type ChatTemplate, pickChatTemplate } from "./chat-template.ts";
import { TokenizerError } from "./errors.ts";

export { TokenizerError };

/** The files that make up a tokenizer, in the names transformers writes. tokenizer.json is required. */
export const TOKENIZER_FILES = [
  "tokenizer.json",
  "tokenizer_config.json",
  "special_tokens_map.json",
  "generation_config.json",
  "chat_template.jinja",
  "chat_template.json",
] as const;

/** Which of TOKENIZER_FILES a folder has; empty when it has no tokenizer.json. */
export function tokenizerFilesIn(dir: string): string[] {
  if (!fs.existsSync(path.join(dir, "tokenizer.json"))) return [];
  return TOKENIZER_FILES.filter((f) => fs.existsSync(path.join(dir, f)));
}

type Json = Record<string, unknown>;

function readJson(file: string): Json {
  try {
    const v = JSON.parse(fs.readFileSync(file, "utf8"));
    if (v === null || typeof v !== "object" || Array.isArray(v)) throw new Error("not a JSON object");
    return v as Json;
  } catch (e) {
    throw new TokenizerError(`${file}: ${(e as Error).message.split("\n")[0]}`);
  }
}

/** A special token as tokenizer_config.json / special_tokens_map.json write it: a string or an AddedToken dict. */
function tokenText(v: unknown): string | null {
  if (typeof v === "string") return v;
  if (v && typeof v === "object" && typeof (v as { content?: unknown }).content === "string")
    return (v as { content: string }).content;
  return null;
}

function idList(v: unknown): number[] {
  if (Number.isInteger(v)) return [v as number];
  if (Array.isArray(v)) return v.filter((x) => Number.isInteger(x)) as number[];
  return [];
}

export interface EncodeOptions {
  /** Add bos etc. as the tokenizer's post-processor says (transformers' add_special_tokens). Default true. */
  addSpecialTokens?: boolean;
}

export class TextTokenizer {
  readonly bosToken: string | null;
  readonly eosToken: string | null;
  /** End ids for generation: generation_config.json's eos_token_id, then the tokenizer's eos token. */
  readonly eosTokenIds: number[];
  /**
   * The tokenizer's own eos token id (transformers' tokenizer.eos_token_id), null without one: vLLM's primary eos, which
   * ends a request with stop_reason null while generation_config's other eos ids name themselves (src/server/app.ts).
   */
  readonly eosTokenId: number | null;
  readonly bosTokenId: number | null;
  /** Named special tokens (bos, eos, pad, unk, …) passed to the chat template. */
  readonly specialTokens: Record<string, string>;
  /** Highest token id the tokenizer can produce (checked against the model's vocabulary). */
  readonly maxTokenId: number;

  private constructor(
    readonly dir: string,
    readonly files: string[],
    private readonly tok: Tokenizer,
    private readonly templates: Map<string, ChatTemplate>,
    cfg: Json,
    specialMap: Json,
    gen: Json,
  ) {
    const special: Record<string, string> = {};
    for (const src of [specialMap, cfg])
      for (const [k, v] of Object.entries(src)) {
        const t = k.endsWith("_token") ? tokenText(v) : null;
        if (t !== null) special[k] = t;
      }
    this.specialTokens = special;
    this.bosToken = special.bos_token ?? null;
    this.eosToken = special.eos_token ?? null;
    const idOf = (t: string | null) => (t === null ? undefined : tok.token_to_id(t));
    this.bosTokenId = idList(gen.bos_token_id)[0] ?? idOf(this.bosToken) ?? null;
    const eos = idList(gen.eos_token_id);
    const tokEos = idOf(this.eosToken);
    this.eosTokenId = tokEos ?? null;
    if (tokEos !== undefined && !eos.includes(tokEos)) eos.push(tokEos);
    this.eosTokenIds = eos;
    let max = -1;
    for (const id of tok.get_vocab(true).values()) if (id > max) max = id;
    this.maxTokenId = max;
  }

  /** Loads the tokenizer files of `dir` (only `files` when given: an engine's recorded list). */
  static load(dir: string, files?: string[]): TextTokenizer {
    const have = files ?? tokenizerFilesIn(dir);
    if (!have.includes("tokenizer.json")) throw new TokenizerError(`${dir}: no tokenizer.json`);
    const file = (name: string) => (have.includes(name) ? path.join(dir, name) : null);
    const opt = (name: string): Json => {
      const f = file(name);
      return f ? readJson(f) : {};
    };
    const cfg = opt("tokenizer_config.json");
    const tokJson = readJson(file("tokenizer.json")!);
    let tok: Tokenizer;
    try {
      // transformers (since 4.45) cleans up spaces before punctuation only when the folder asks for it;
      // tokenizers.js defaults to cleaning, which would turn " ." into ".".
      tok = new Tokenizer(tokJson, {
        ...cfg,
        clean_up_tokenization_spaces: cfg.clean_up_tokenization_spaces ?? false,
      });
    } catch (e) {
      throw new TokenizerError(`${path.join(dir, "tokenizer.json")}: ${(e as Error).message.split("\n")[0]}`);
    }
    const jinja = file("chat_template.jinja");
    const templates = pickChatTemplate({
      jinja: jinja ? { file: jinja, text: fs.readFileSync(jinja, "utf8") } : null,
      tokenizerConfig: { file: path.join(dir, "tokenizer_config.json"), value: cfg.chat_template },
      chatTemplateJson: {
        file: path.join(dir, "chat_template.json"),
        value: opt("chat_template.json").chat_template,
      },
    });
    return new TextTokenizer(
      dir,
      have,
      tok,
      templates,
      cfg,
      opt("special_tokens_map.json"),
      opt("generation_config.json"),
    );
  }

  encode(text: string, o: EncodeOptions = {}): number[] {
    return this.tok.encode(text, { add_special_tokens: o.addSpecialTokens ?? true }).ids;
  }

  decode(
    ids: number[],
    o: { skipSpecialTokens?: boolean; cleanUpTokenizationSpaces?: boolean } = {},
  ): string {
    if (ids.length === 0) return "";
    return this.tok.decode(ids, {
      skip_special_tokens: o.skipSpecialTokens ?? false,
      // Unset: the folder's own setting (clean_up_tokenization_spaces, see load()).
      clean_up_tokenization_spaces: o.cleanUpTokenizationSpaces,
    });
  }

  /** Ids of tokens marked special (skipped by decode with skipSpecialTokens). */
  isSpecial(id: number): boolean {
    return this.tok.get_added_tokens_decoder().get(id)?.special ?? false;
  }

  get hasChatTemplate(): boolean {
    return this.templates.size > 0;
  }

  /**
   * What transformers' apply_chat_template(messages, add_generation_prompt, tokenize=True) gives: the
   * rendered text, then its ids encoded without adding special tokens (the template writes them).
   * `name` picks one of several named templates ("default" otherwise).
   */
  applyChatTemplate(
    messages: ChatMessage[],
    o: {
      addGenerationPrompt?: boolean;
      /** End the text inside the last message, for the model to go on writing it (transformers' option). */
      continueFinalMessage?: boolean;
      name?: string;
      extra?: Record<string, unknown>;
    } = {},
  ): { text: string; ids: number[] } {
    if (this.templates.size === 0)
      throw new TokenizerError(
        `${this.dir}: the tokenizer has no chat template (none in chat_template.jinja or tokenizer_config.json)`,
      );
    const name = o.name ?? "default";
    const t = this.templates.get(name);
    if (!t)
      throw new TokenizerError(
        `${this.dir}: no chat template named "${name}" (have: ${[...this.templates.keys()].join(", ")})`,
      );
    const addGenerationPrompt = o.addGenerationPrompt ?? true;
    if (o.continueFinalMessage && addGenerationPrompt)
      throw new TokenizerError(
        "continue_final_message and add_generation_prompt cannot both be true: continuing the last message " +
          "adds no new turn",
      );
    let text = t.render({
      ...this.specialTokens,
      ...o.extra,
      messages,
      add_generation_prompt: addGenerationPrompt,
    });
    if (o.continueFinalMessage) {
      // transformers reads chat[-1] (an IndexError on no messages): nothing to continue is refused, not the whole chat.
      const last = messages.at(-1);
      if (!last)
        throw new TokenizerError("continue_final_message: there are no messages, so no last one to continue");
      text = cutAfterFinalMessage(text, last.content);
    }
    return { text, ids: this.encode(text, { addSpecialTokens: false }) };
  }
}

/**
 * The rendered chat up to the end of the last message's text, as transformers' apply_chat_template does with
 * continue_final_message: at its last occurrence, with the message's trailing whitespace kept only where the
 * template kept it (a template that trims would otherwise be cut one space past the text).
 */
function cutAfterFinalMessage(rendered: string, content: string): string {
  const core = content.trim();
  const at = rendered.lastIndexOf(core);
  if (at < 0)
    throw new TokenizerError(
      "continue_final_message: the last message's text is not in the chat the template rendered, so there is " +
        "no place to continue it from",
    );
  const kept = content.trimStart().length;
  return rendered.slice(0, at + (rendered.slice(at, at + kept) === content ? kept : core.length));
}
