// tsllm-tokenize: text ↔ ids with an engine's (or a model folder's) tokenizer, as JSON (like llama-tokenize).
import * as fs from "node:fs";
import { parseChatMessages } from "../text/chat-messages.ts";
import { requireTokenizer } from "../text/engine-files.ts";
import { readUtf8File } from "../text/utf8.ts";
import { command, main, nonEmpty, parseIds } from "./common.ts";

const program = command(
  "tsllm-tokenize",
  "Encode TEXT as tokenizer(text) does (special tokens as the post-processor adds them), render a chat " +
    "with the chat template as apply_chat_template(messages, add_generation_prompt=True, tokenize=True), " +
    "or decode ids. Prints JSON.",
)
  // "" (an unset variable) would read the working folder's tokenizer.json, and its refusal named no folder.
  .argument("<dir>", "engine directory (with a tokenizer) or Hugging Face model folder", nonEmpty("<dir>"))
  .argument("[text]", "text to encode")
  .option("--chat <file>", "JSON list of messages [{role, content}] (- for stdin)", nonEmpty("--chat"))
  .option("--decode <ids>", "comma-separated token ids to decode")
  .option("--no-special", "encode without adding special tokens; decode skipping them")
  .option("--info", "print the tokenizer's files, special tokens and end ids");

/** tsllm-tokenize on `argv` (as process.argv: node, script, then the arguments). */
export async function tsllmTokenize(argv: readonly string[]): Promise<void> {
  program.parse(argv);
  const [dir, text] = program.args;
  const o = program.opts();
  const given = [text !== undefined, !!o.chat, o.decode !== undefined, !!o.info].filter(Boolean).length;
  if (given !== 1) throw new Error("give exactly one of TEXT, --chat FILE, --decode IDS or --info");
  const tok = requireTokenizer(dir, "tsllm-tokenize");
  let out: unknown;
  if (o.info)
    out = {
      files: tok.files,
      special_tokens: tok.specialTokens,
      bos_token_id: tok.bosTokenId,
      eos_token_ids: tok.eosTokenIds,
      max_token_id: tok.maxTokenId,
      chat_template: tok.hasChatTemplate,
    };
  else if (o.decode !== undefined) {
    const ids = parseIds(o.decode, "--decode");
    // The tokenizer drops ids it has no token for without a word: refuse them, as tsllm-run refuses them.
    const bad = ids.find((id) => id > tok.maxTokenId);
    if (bad !== undefined)
      throw new Error(`--decode: token id ${bad} is not in the tokenizer (allowed: 0..${tok.maxTokenId})`);
    out = { ids, text: tok.decode(ids, { skipSpecialTokens: !o.special }) };
  } else if (o.chat) {
    const messages = parseChatMessages(readChat(o.chat), o.chat === "-" ? "stdin" : o.chat);
    out = { messages, ...tok.applyChatTemplate(messages, { addGenerationPrompt: true }) };
  } else out = { text, ids: tok.encode(text, { addSpecialTokens: o.special }) };
  process.stdout.write(`${JSON.stringify(out)}\n`);
}

await main(() => tsllmTokenize(process.argv));

function readChat(f: string): string {
  // transformers reads a file of messages as UTF-8 or not at all: read "utf8", other bytes became U+FFFD, and the
  // ids printed were of another text than the file's.
  if (f === "-") return readUtf8File(0, "stdin");
  if (!fs.existsSync(f)) throw new Error(`--chat ${f}: file not found`);
  return readUtf8File(f, `--chat ${f}`);
}
