// Chat templates: where a model folder keeps them and how they render (@huggingface/jinja).
// transformers 5 writes chat_template.jinja; older folders keep `chat_template` in tokenizer_config.json,
// either one string or a list of {name, template} (e.g. "default" and "tool_use"); processors may
// write chat_template.json. The first one present wins, in that order, as in transformers.
import { Template } from "@huggingface/jinja";
import { TokenizerError } from "./errors.ts";

export interface ChatMessage {
  role: string;
  content: string;
  [k: string]: unknown;
}

export class ChatTemplate {
  private readonly tpl: Template;
  constructor(
    readonly source: string,
    text: string,
  ) {
    try {
      this.tpl = new Template(text);
    } catch (e) {
      throw new TokenizerError(
        `${source}: chat template does not parse: ${(e as Error).message.split("\n")[0]}`,
      );
    }
  }

  render(vars: Record<string, unknown>): string {
    try {
      return this.tpl.render(vars);
    } catch (e) {
      throw new TokenizerError(`chat template (${this.source}): ${(e as Error).message.split("\n")[0]}`);
    }
  }
}

/** The templates of a folder by name ("default" for the single-template forms). */
export function pickChatTemplate(src: {
  jinja: { file: string; text: string } | null;
  tokenizerConfig: { file: string; value: unknown };
  chatTemplateJson: { file: string; value: unknown };
}): Map<string, ChatTemplate> {
  const out = new Map<string, ChatTemplate>();
  if (src.jinja) {
    out.set("default", new ChatTemplate(src.jinja.file, src.jinja.text));
    return out;
  }
  for (const { file, value } of [src.tokenizerConfig, src.chatTemplateJson]) {
    if (value === undefined || value === null) continue;
    if (typeof value === "string") out.set("default", new ChatTemplate(`${file} chat_template`, value));
    else if (Array.isArray(value))
      for (const [i, e] of value.entries()) {
        const { name, template } = (e ?? {}) as { name?: unknown; template?: unknown };
        if (typeof name !== "string" || typeof template !== "string")
          throw new TokenizerError(
            `${file}: chat_template[${i}] must be {"name": string, "template": string}`,
          );
        out.set(name, new ChatTemplate(`${file} chat_template "${name}"`, template));
      }
    else throw new TokenizerError(`${file}: chat_template must be a string or a list of {name, template}`);
    return out;
  }
  return out;
}
