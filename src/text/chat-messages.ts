// Chat messages as users give them (a JSON file, an OpenAI request): validated once, here.
import { z } from "zod";
import type { ChatMessage } from "./chat-template.ts";
import { TokenizerError } from "./errors.ts";

/** OpenAI content: a string or a list of parts; only text parts can be rendered by a text model. */
const Content = z.union([
  z.string(),
  z.array(z.object({ type: z.literal("text"), text: z.string() })).min(1),
]);

export const ChatMessageSchema = z
  .object({ role: z.string().min(1), content: Content.nullable().optional() })
  .passthrough();

export const ChatMessagesSchema = z.array(ChatMessageSchema).min(1, "give at least one message");

/**
 * Message content as the template sees it: text parts joined into one string, one line apart, as vLLM joins them for
 * a template of string contents (so the same request gives the same prompt ids on both servers).
 */
export function toTemplateMessages(ms: z.infer<typeof ChatMessagesSchema>): ChatMessage[] {
  return ms.map((m) => ({
    ...m,
    content: typeof m.content === "string" ? m.content : (m.content ?? []).map((p) => p.text).join("\n"),
  }));
}

export function parseChatMessages(json: string, source: string): ChatMessage[] {
  let v: unknown;
  try {
    v = JSON.parse(json);
  } catch (e) {
    throw new TokenizerError(`${source}: invalid JSON: ${(e as Error).message}`);
  }
  const r = ChatMessagesSchema.safeParse(v);
  if (!r.success) {
    const i = r.error.issues[0];
    throw new TokenizerError(
      `${source}: expected a list of {"role", "content"} messages${i.path.length ? ` (at ${i.path.join(".")})` : ""}: ${i.message}`,
    );
  }
  return toTemplateMessages(r.data);
}
