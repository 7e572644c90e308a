// Request bodies of the OpenAI-compatible endpoints, validated with zod. Unknown fields are refused (as
// OpenAI does) rather than silently ignored; OpenAI fields we do not implement are accepted only at
// their neutral value, so a client never gets a result computed differently from what it asked for.
import { z } from "zod";
import { SEED_RANGE, seedProblem } from "../executor/seed.ts";
import { ChatMessagesSchema } from "../text/chat-messages.ts";

const tokenId = z.number().int().min(0);
const neutral = <T extends z.ZodType>(t: T, value: unknown, what: string) =>
  t
    .refine((v) => v === null || v === undefined || v === value, {
      message: `${what} is not supported (only ${JSON.stringify(value)})`,
    })
    .optional();

const N_RANGE = "n must be an integer from 1 to 128";

const common = {
  model: z.string({ error: "model must be a string" }),
  temperature: z.number().min(0).max(2).nullable().optional(),
  top_p: z.number().gt(0).max(1).nullable().optional(),
  /** vLLM's extension: 0 or -1 = all. */
  top_k: z.number().int().min(-1).nullable().optional(),
  /** vLLM takes any int64; past 2^53 the JSON number has lost digits already, and two seeds may be one: refused. */
  seed: z
    .number({ error: `seed must be ${SEED_RANGE}` })
    .nullable()
    .refine((v) => v === null || seedProblem(v) === undefined, { message: `seed must be ${SEED_RANGE}` })
    .optional(),
  stop: z
    .union([z.string(), z.array(z.string()).max(16)], {
      error: "stop must be a string or a list of at most 16 strings",
    })
    .nullable()
    // vLLM's SamplingParams refuses "" (it would match anywhere); we dropped it silently.
    .refine((v) => v == null || (typeof v === "string" ? v !== "" : !v.includes("")), {
      message: "stop cannot contain an empty string",
    })
    .optional(),
  /** Choices per prompt (OpenAI's limit, 128): each its own request of the batch manager. */
  n: z
    .number({ error: N_RANGE })
    .int({ error: N_RANGE })
    .min(1, { error: N_RANGE })
    .max(128, { error: N_RANGE })
    .nullable()
    .optional(),
  stream: z.boolean().nullable().optional(),
  stream_options: z
    .object({
      include_usage: z.boolean().nullable().optional(),
      /** vLLM's extension: with include_usage, every chunk carries its choice's usage so far. */
      continuous_usage_stats: z.boolean().nullable().optional(),
    })
    .strict()
    .nullable()
    .optional(),
  /**
   * vLLM's extension (tsllm-run's --stop-token-ids): ids that also end generation, kept as the last token id, left out
   * of the text; ignore_eos does not affect them.
   */
  stop_token_ids: z
    .array(tokenId, { error: "stop_token_ids must be a list of token ids" })
    .nullable()
    .optional(),
  /** vLLM's extensions: generate exactly max_tokens; return the prompt and output token ids. */
  ignore_eos: z.boolean().optional(),
  return_token_ids: z.boolean().optional(),
  /** vLLM's extensions: the stop string that ended the text is part of it; special tokens kept in the text. */
  include_stop_str_in_output: z.boolean().nullable().optional(),
  skip_special_tokens: z.boolean().nullable().optional(),
  user: z.string().optional(),
  presence_penalty: neutral(z.number().nullable(), 0, "presence_penalty"),
  frequency_penalty: neutral(z.number().nullable(), 0, "frequency_penalty"),
  /**
   * vLLM's sampling extensions at their neutral values (vLLM's defaults), as a client written for vLLM may send them:
   * vLLM accepts them, and they were refused as unknown fields.
   */
  min_p: neutral(z.number().nullable(), 0, "min_p"),
  repetition_penalty: neutral(z.number().nullable(), 1, "repetition_penalty"),
  /**
   * {} biases no token: as neutral as null, and what some clients send by default (LangChain's OpenAI LLM); OpenAI
   * and vLLM accept it. A === comparison with null refused it.
   */
  logit_bias: z
    .record(z.string(), z.number())
    .nullable()
    .refine((v) => v === null || Object.keys(v).length === 0, {
      message: "logit_bias is not supported (only null or {})",
    })
    .optional(),
  /**
   * {"type": "text"} is OpenAI's default (plain text, what every reply here is); vLLM's completions take the field
   * too. json_object / json_schema / structural_tag would need guided decoding, which there is none of.
   */
  response_format: z
    .object({ type: z.string({ error: "response_format.type must be a string" }) })
    .strict()
    .nullable()
    .refine((v) => v === null || v.type === "text", {
      message: 'response_format is not supported (only {"type": "text"})',
    })
    .optional(),
};

/**
 * An OpenAI function tool, handed to the chat template as vLLM hands it on: each tool's model_dump(), in which a
 * description or parameters not given is None (FunctionDefinition's defaults), so a template dumping the tools
 * (Llama 3.1's `t | tojson`) writes "description": null as vLLM's prompt has it, not a dict without the key.
 */
const Tool = z
  .object({
    type: z.literal("function"),
    function: z
      .object({
        name: z.string(),
        description: z.string().nullable().default(null),
        parameters: z.record(z.string(), z.unknown()).nullable().default(null),
        strict: z.boolean().nullable().optional(),
      })
      .strict(),
  })
  .strict();

const TOOLS_REFUSAL = 'tools is not supported (only null, [], or any with tool_choice "none")';

export const CompletionBody = z
  .object({
    ...common,
    prompt: z.union(
      [z.string(), z.array(tokenId).min(1), z.array(z.union([z.string(), z.array(tokenId).min(1)])).min(1)],
      {
        error: "prompt must be a string, a list of strings, a list of token ids or a list of such lists",
      },
    ),
    max_tokens: z.number().int().min(1).nullable().optional(),
    echo: neutral(z.boolean().nullable(), false, "echo"),
    best_of: neutral(z.number().nullable(), 1, "best_of"),
    logprobs: neutral(z.number().nullable(), null, "logprobs"),
    suffix: neutral(z.string().nullable(), null, "suffix"),
  })
  .strict();
export type CompletionBody = z.infer<typeof CompletionBody>;

export const ChatBody = z
  .object({
    ...common,
    messages: ChatMessagesSchema,
    max_tokens: z.number().int().min(1).nullable().optional(),
    max_completion_tokens: z.number().int().min(1).nullable().optional(),
    /** vLLM's extensions, transformers' apply_chat_template options: open the assistant turn; continue the last message. */
    add_generation_prompt: z.boolean().nullable().optional(),
    continue_final_message: z.boolean().nullable().optional(),
    logprobs: neutral(z.boolean().nullable(), false, "logprobs"),
    tools: z.array(Tool).nullable().optional(),
    /**
     * "none": the reply is a message, no tool is called, as OpenAI defines it; that is every reply here, so it is
     * accepted with or without tools (vLLM too, its tools still rendered into the prompt). "auto", "required" or a
     * named function would need tool-call parsing, which there is none of.
     */
    tool_choice: neutral(z.unknown(), "none", "tool_choice"),
  })
  .strict()
  // Tools without tool_choice mean "auto" in OpenAI's API (and vLLM's): a reply that may call them, not honoured. An
  // empty list is no tools (vLLM's tool_choice stays "none" then; LangChain-style clients send []).
  .refine((b) => b.tools == null || b.tools.length === 0 || b.tool_choice === "none", {
    message: TOOLS_REFUSAL,
    path: ["tools"],
  });
export type ChatBody = z.infer<typeof ChatBody>;

/**
 * vLLM's POST /tokenize and /detokenize (outside /v1, as vLLM serves them): `model` optional, the served one if given.
 * A prompt is encoded as /v1/completions encodes it (special tokens added unless add_special_tokens is false); messages
 * through the chat template as /v1/chat/completions renders them (add_special_tokens false by default, as vLLM's).
 */
const tokenizeCommon = {
  model: z.string({ error: "model must be a string" }).nullable().optional(),
  add_special_tokens: z.boolean().nullable().optional(),
  return_token_strs: neutral(z.boolean().nullable(), false, "return_token_strs"),
};

export const TokenizePromptBody = z.object({ ...tokenizeCommon, prompt: z.string() }).strict();
export type TokenizePromptBody = z.infer<typeof TokenizePromptBody>;

export const TokenizeChatBody = z
  .object({
    ...tokenizeCommon,
    messages: ChatMessagesSchema,
    add_generation_prompt: z.boolean().nullable().optional(),
    continue_final_message: z.boolean().nullable().optional(),
    tools: z.array(Tool).nullable().optional(),
  })
  .strict();
export type TokenizeChatBody = z.infer<typeof TokenizeChatBody>;

export const DetokenizeBody = z
  .object({
    model: z.string({ error: "model must be a string" }).nullable().optional(),
    tokens: z.array(tokenId, { error: "tokens must be a list of token ids" }),
  })
  .strict();
export type DetokenizeBody = z.infer<typeof DetokenizeBody>;

/** The first problem of a failed parse as OpenAI words it: a message and the parameter at fault. */
export function describeIssue(e: z.ZodError, body: unknown): { message: string; param: string | null } {
  const i = e.issues[0];
  if (i.code === "unrecognized_keys") {
    const key = i.keys[0];
    const at = [...i.path, key].join(".");
    return { message: `Unrecognized request argument supplied: ${at}`, param: at };
  }
  const param = i.path.length ? i.path.join(".") : null;
  if (i.path.length === 1 && !(String(i.path[0]) in (body as object)))
    return { message: `${param}: required`, param };
  return { message: param ? `${param}: ${i.message}` : i.message, param };
}
