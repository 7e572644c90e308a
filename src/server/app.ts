// tsllm-serve's HTTP app (fastify): OpenAI-compatible /v1/completions and /v1/chat/completions over the
// batch manager, streamed as server-sent events or not, plus /v1/models, /health, /metrics and vLLM's
// /tokenize, /detokenize, /version and /ping, with vLLM's CORS (./cors.ts).
// Every request is one or more TextGenerations (src/text/generate-text.ts); the batch manager is the
// only generation loop. A client that goes away cancels its requests, which frees their KV blocks.
import { randomInt, randomUUID } from "node:crypto";
import type { IncomingMessage, ServerResponse } from "node:http";
import type { Socket } from "node:net";
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from "fastify";
import type { ZodType } from "zod";
import { VERSION } from "../cli/common.ts";
import { seedU64 } from "../executor/seed.ts";
import type { BatchManager } from "../serving/types.ts";
import { toTemplateMessages } from "../text/chat-messages.ts";
import { generateText, type TextGeneration, type TextResult } from "../text/generate-text.ts";
import { type TextTokenizer, TokenizerError } from "../text/tokenizer.ts";
import { type CorsOptions, DEFAULT_CORS, registerCors } from "./cors.ts";
import { ApiError, toApiError } from "./errors.ts";
import { CLIENT_CLOSED_REQUEST, ServerMetrics } from "./metrics.ts";
import {
  ChatBody,
  CompletionBody,
  DetokenizeBody,
  describeIssue,
  TokenizeChatBody,
  TokenizePromptBody,
} from "./schemas.ts";

export interface ServeOptions {
  manager: BatchManager;
  tokenizer: TextTokenizer | null;
  /** Why there is no tokenizer, said when a request needs text. */
  noTokenizer?: string;
  /** The one model name served (GET /v1/models; other names get 404). */
  modelName: string;
  /** Requests waiting beyond this many are refused with 429 (default 4096). */
  maxQueue?: number;
  /** Requires "Authorization: Bearer <key>" on /v1/*. */
  apiKey?: string;
  /** The model as given to the server (the engine directory): /v1/models' root, vLLM's model path. Default: modelName. */
  modelPath?: string;
  /** vLLM's --allowed-origins, --allowed-methods, --allowed-headers, --allow-credentials (default DEFAULT_CORS). */
  cors?: CorsOptions;
}

export interface Server {
  app: FastifyInstance;
  metrics: ServerMetrics;
  /** SIGTERM: refuse new requests (503) from now on. */
  stopAccepting(): void;
}

const OPENAI_FINISH: Record<string, string> = {
  stop: "stop",
  length: "length",
  cancelled: "abort",
  error: "error",
};

/**
 * A finished choice's finish_reason, and vLLM's stop_reason: the stop string, or the id of `stopIds` (the request's
 * stop_token_ids), that ended it; null otherwise (an end token, the length), as vLLM's check_stop sets it. Sent with
 * every finished choice, as vLLM sends it: it was left out unless a stop string ended the choice (the openai Python
 * client's choice.stop_reason raised AttributeError), and a stop token id was never named.
 */
function finished(
  r: TextResult,
  stopIds: ReadonlySet<number>,
): { finish_reason: string; stop_reason: string | number | null } {
  const last = r.outputIds.at(-1);
  const byId = r.finishReason === "stop" && last !== undefined && stopIds.has(last) ? last : null;
  return { finish_reason: OPENAI_FINISH[r.finishReason], stop_reason: r.stopString ?? byId };
}

export function buildServer(o: ServeOptions): Server {
  const { manager, tokenizer: tok } = o;
  const maxQueue = o.maxQueue ?? 4096;
  const metrics = new ServerMetrics(manager);
  const created = Math.floor(Date.now() / 1000);
  // The context one request can have: max_seq_len, or less where the KV pool holds fewer tokens (a request's last
  // token takes no KV slot). vLLM does not start with a pool below max_model_len; we serve the pool's length, and
  // say so as max_model_len. Sized to max_seq_len alone, /v1/models promised a context the pool refused, and every
  // chat without max_tokens on such a pool was refused as context_length_exceeded.
  const { maxSeqLen, kvBlocksTotal, tokensPerBlock } = manager.limits;
  const maxContext = Math.min(maxSeqLen, kvBlocksTotal * tokensPerBlock + 1);
  let accepting = true;
  /** app.close() has begun. */
  let closing = false;
  const app = Fastify({ logger: false, bodyLimit: 64 * 1024 * 1024 });
  // First, so that its hook answers a preflight before the API key check below runs.
  registerCors(app, o.cors ?? DEFAULT_CORS);

  // Any content type is read as JSON (curl and some clients omit it); a body that is not JSON is a 400.
  app.removeAllContentTypeParsers();
  app.addContentTypeParser("*", { parseAs: "string" }, (_req, body, done) => {
    try {
      done(null, JSON.parse(body as string));
    } catch (e) {
      done(new ApiError(400, `request body is not valid JSON: ${(e as Error).message}`), undefined);
    }
  });
  app.setErrorHandler((e, _req, reply) => sendError(reply, toApiError(e)));
  app.setNotFoundHandler((req, reply) => {
    // A path served under other methods (GET /v1/completions) is a 405 naming them in Allow, as vLLM's router
    // (Starlette's) answers, not a 404 saying the route does not exist.
    const url = req.url.split("?")[0];
    const allow = ["GET", "POST"].filter((method) => app.findRoute({ method, url }) !== null);
    if (allow.length) {
      reply.header("allow", allow.join(", "));
      return sendError(
        reply,
        new ApiError(
          405,
          `method ${req.method} not allowed on ${url} (allowed: ${allow.join(", ")})`,
          "invalid_request_error",
          null,
          "method_not_allowed",
        ),
      );
    }
    sendError(
      reply,
      new ApiError(404, `no route ${req.method} ${req.url}`, "invalid_request_error", null, "not_found"),
    );
  });
  // Counted when the response closes, not in onResponse: fastify runs that on "finish" only, which a response the
  // client cut off (a stream it aborted) never reaches, so such requests were missing from the count. "close" comes
  // once per response, finished or not. One the client closed before it was complete counts as 499 (nginx's "client
  // closed request"), streamed or not: the status it would have had (200 by default, though nothing was sent for a
  // non-streamed request) counted it as served.
  app.addHook("onRequest", async (req, reply) => {
    const res = reply.raw;
    res.once("close", () =>
      metrics.request(endpointOf(req), res.writableFinished ? reply.statusCode : CLIENT_CLOSED_REQUEST),
    );
  });
  // Closing (app.close(): tsllm-serve's SIGTERM drain, or a caller's) closes every connection without a request in
  // flight at once, and the others as their responses complete, as uvicorn (vLLM's server) does at shutdown. Left to
  // Node and fastify, a connection kept alive past a response that completed during the drain, or one a client opened
  // and never used (a request it aborted before sending it), held close() up to a minute and more.
  const inFlight = new Map<Socket, number>(); // requests in flight by connection
  app.server.on("connection", (socket: Socket) => {
    if (closing) return void socket.destroy();
    inFlight.set(socket, 0);
    socket.once("close", () => inFlight.delete(socket));
  });
  app.server.on("request", (req: IncomingMessage, res: ServerResponse) => {
    const socket = req.socket;
    const before = inFlight.get(socket);
    if (before === undefined) return; // (its connection closed already)
    inFlight.set(socket, before + 1);
    let over = false;
    const done = () => {
      const n = inFlight.get(socket);
      // (Once: "finish", then "close". A connection closed already stays out of the map.)
      if (over || n === undefined) return;
      over = true;
      inFlight.set(socket, n - 1);
      if (closing && n === 1) socket.destroySoon();
    };
    res.once("finish", done);
    res.once("close", done);
  });
  app.addHook("preClose", async () => {
    closing = true;
    for (const [socket, n] of inFlight) if (n === 0) socket.destroy();
  });
  // (A reply sent while closing says so, so that the client does not reuse its connection.)
  app.addHook("onSend", async (_req, reply) => {
    if (closing) reply.header("connection", "close");
  });
  app.addHook("onRequest", async (req) => {
    // The matched route as well as the raw URL: the router decodes percent-escapes, so "/%761/completions" is
    // /v1/completions, and checking req.url alone let it through without the key.
    const v1 = req.url.startsWith("/v1/") || (req.routeOptions.url ?? "").startsWith("/v1/");
    // Never on OPTIONS, as vLLM's AuthenticationMiddleware: a browser's preflight carries no Authorization header.
    if (o.apiKey && v1 && req.method !== "OPTIONS" && req.headers.authorization !== `Bearer ${o.apiKey}`)
      throw new ApiError(
        401,
        "invalid or missing API key (Authorization: Bearer …)",
        "authentication_error",
        null,
        "invalid_api_key",
      );
  });

  function sendError(reply: FastifyReply, e: ApiError) {
    if (reply.sent || reply.raw.headersSent) return;
    reply.code(e.status).send(e.body());
  }

  const health = async (_req: FastifyRequest, reply: FastifyReply) => {
    if (!accepting) return reply.code(503).send({ status: "shutting down" });
    return { status: "ok" };
  };
  app.get("/health", health);
  // vLLM's /ping (SageMaker's health check, GET or POST) answers as its /health does, 503 while draining included.
  app.get("/ping", health);
  app.post("/ping", health);
  // vLLM's /version: its own version there, ours here.
  app.get("/version", async () => ({ version: VERSION }));
  app.get("/metrics", async (_req, reply) => {
    reply.header("content-type", metrics.registry.contentType);
    return metrics.registry.metrics();
  });
  const unknownModel = (name: string) =>
    new ApiError(
      404,
      `model "${name}" does not exist (this server serves "${o.modelName}")`,
      "invalid_request_error",
      "model",
      "model_not_found",
    );
  const model = {
    id: o.modelName,
    object: "model",
    created,
    owned_by: "tsllm",
    // vLLM's ModelCard: root the model path it was started on, parent null (a base model, not a LoRA adapter).
    root: o.modelPath ?? o.modelName,
    parent: null,
    max_model_len: maxContext,
    vocab_size: manager.vocabSize,
  };
  app.get("/v1/models", async () => ({ object: "list", data: [model] }));
  // The openai client's models.retrieve(id).
  app.get<{ Params: { id: string } }>("/v1/models/:id", async (req) => {
    if (req.params.id !== o.modelName) throw unknownModel(req.params.id);
    return model;
  });

  /** Parses a body, checks the model and that we are accepting requests. */
  function admit<
    T extends { model?: string | null; stream?: boolean | null; stream_options?: object | null },
  >(schema: ZodType<T>, body: unknown): T {
    if (!accepting)
      throw new ApiError(503, "the server is shutting down", "service_unavailable", null, "shutting_down");
    if (body === null || typeof body !== "object" || Array.isArray(body))
      throw new ApiError(400, "request body must be a JSON object");
    const r = schema.safeParse(body);
    if (!r.success) {
      const { message, param } = describeIssue(r.error, body);
      throw new ApiError(400, message, "invalid_request_error", param);
    }
    // stream_options only shapes a stream: given without one it would be silently ignored (OpenAI and vLLM refuse it).
    if (r.data.stream_options != null && !r.data.stream)
      throw new ApiError(
        400,
        "stream_options: only allowed when stream is true",
        "invalid_request_error",
        "stream_options",
      );
    // (Optional on /tokenize and /detokenize only, as vLLM's.)
    if (r.data.model != null && r.data.model !== o.modelName) throw unknownModel(r.data.model);
    return r.data;
  }

  /** `idsHint`: say that the prompt may be given as token ids instead (the generation endpoints take them). */
  function needTokenizer(what: string, param = "prompt", idsHint = param === "prompt"): TextTokenizer {
    if (!tok)
      throw new ApiError(
        400,
        `${what} needs a tokenizer: ${o.noTokenizer ?? "this engine has none"}${idsHint ? "; give the prompt as token ids" : ""}`,
        "invalid_request_error",
        param,
      );
    return tok;
  }

  /**
   * The chat prompt's ids. A template that refuses the messages (raise_exception, e.g. "roles must alternate") or an
   * engine without a template is the request's problem to fix, not a server failure: 400 on messages, as vLLM does.
   */
  function renderChat(
    t: TextTokenizer,
    messages: ChatBody["messages"],
    tools: ChatBody["tools"],
    turn: { addGenerationPrompt: boolean; continueFinalMessage: boolean },
  ): { text: string; ids: number[] } {
    try {
      // Tools (only with tool_choice "none") reach the template as vLLM hands them on: the prompt it would render.
      const extra = tools ? { tools } : undefined;
      return t.applyChatTemplate(toTemplateMessages(messages), { ...turn, extra });
    } catch (e) {
      if (e instanceof TokenizerError)
        throw new ApiError(400, e.message, "invalid_request_error", "messages");
      throw e;
    }
  }

  /** What every choice of a request shares; `seed` is the request's (choice j samples with seed + j, as vLLM). */
  function samplingOf(b: CompletionBody | ChatBody) {
    const stop = b.stop == null ? [] : typeof b.stop === "string" ? [b.stop] : b.stop;
    if (stop.length) needTokenizer("stop", "stop");
    const stopTokenIds = b.stop_token_ids ?? undefined;
    if (stopTokenIds) inVocabulary(stopTokenIds, "stop_token_ids");
    return {
      sampling: {
        temperature: b.temperature ?? 1,
        topP: b.top_p ?? 1,
        topK: b.top_k == null || b.top_k < 0 ? 0 : b.top_k,
      },
      seed: b.seed ?? null,
      n: b.n ?? 1,
      stop,
      stopTokenIds,
      ignoreEos: b.ignore_eos ?? false,
      // Unset unless given (generateText's defaults: stop not included, special tokens skipped).
      includeStopStr: b.include_stop_str_in_output ?? undefined,
      skipSpecialTokens: b.skip_special_tokens ?? undefined,
    };
  }

  /**
   * The ids that a choice ending on names as its stop_reason, as vLLM's update_from_generation_config and check_stop
   * make them: the request's stop_token_ids, and (unless ignore_eos) the end ids other than the tokenizer's own eos
   * (generation_config's extra eos ids, Llama 3.1's <|eom_id|> beside <|eot_id|>), which vLLM folds into
   * stop_token_ids; less the tokenizer's eos unless ignore_eos (check_stop tests it first: stop_reason null). Without
   * a tokenizer there is no such eos (vLLM's skip_tokenizer_init): every end id is named. The extra eos ids were named
   * by none, so a Llama 3.1 reply ending on <|eom_id|> looked like one ending on <|eot_id|>.
   */
  function stopReasonIds({ stopTokenIds, ignoreEos }: ReturnType<typeof samplingOf>): Set<number> {
    const ids = new Set([...(stopTokenIds ?? []), ...(ignoreEos ? [] : manager.eosTokenIds)]);
    const eos = tok?.eosTokenId ?? null;
    if (!ignoreEos && eos !== null) ids.delete(eos);
    return ids;
  }

  /**
   * Submits n choices of every prompt, choice j of prompt i at index i·n + j (OpenAI's order); all or none (a
   * refusal cancels the ones already queued). Returns the generations, each one's prompt, and n.
   */
  function submitAll(
    prompts: number[][],
    maxTokens: (promptLen: number) => number,
    { seed, n, sampling, ...rest }: ReturnType<typeof samplingOf>,
  ): { gens: TextGeneration[]; choicePrompts: number[][]; n: number } {
    const choicePrompts = prompts.flatMap((p) => Array.from({ length: n }, () => p));
    // More choices than the queue ever takes: a 400, not a 429 the client (the openai one retries 429s) would retry
    // in vain.
    if (choicePrompts.length > maxQueue)
      throw new ApiError(
        400,
        `this request has ${choicePrompts.length} choices (${prompts.length} prompt(s) × n ${n}), more than the ` +
          `request queue ever holds (limit ${maxQueue})`,
        "invalid_request_error",
        prompts.length > 1 ? "prompt" : "n",
        null,
      );
    const { queued } = manager.stats();
    if (queued + choicePrompts.length > maxQueue)
      throw new ApiError(
        429,
        `the request queue is full (${queued} waiting, limit ${maxQueue}); retry later`,
        "rate_limit_error",
        null,
        "queue_full",
      );
    const gens: TextGeneration[] = [];
    try {
      choicePrompts.forEach((p, i) => {
        // Without a seed each choice samples differently, as OpenAI's API does; with one, choice j uses seed + j
        // (the n choices of one prompt differ, and each is the n = 1 request of that seed).
        // In u64 arithmetic: seed + j past 2^53 lost digits as a number (two choices of one request alike).
        const choiceSeed = seed === null ? randomInt(2 ** 31) : seedU64(seed, i % n);
        gens.push(
          generateText(manager, tok, {
            ...rest,
            sampling: { ...sampling, seed: choiceSeed },
            promptIds: p,
            maxNewTokens: maxTokens(p.length),
          }),
        );
      });
    } catch (e) {
      for (const g of gens) g.cancel();
      throw e;
    }
    return { gens, choicePrompts, n };
  }

  app.post("/v1/completions", async (req, reply) => {
    const b = admit(CompletionBody, req.body);
    const p = b.prompt;
    const prompts: number[][] =
      typeof p === "string"
        ? [needTokenizer("a text prompt").encode(p)]
        : typeof p[0] === "number"
          ? [p as number[]]
          : (p as (string | number[])[]).map((x) =>
              typeof x === "string" ? needTokenizer("a text prompt").encode(x) : x,
            );
    // Absent, max_tokens is 16 (OpenAI's and vLLM's default); null is vLLM's "the rest of the context" (get_max_tokens:
    // max_model_len - the prompt's length). Both were 16.
    const maxTokens =
      b.max_tokens === null
        ? (len: number) => restOfContext(len, `the prompt is ${len} tokens`, "a completion", "prompt")
        : () => b.max_tokens ?? 16;
    const sampling = samplingOf(b);
    const stopIds = stopReasonIds(sampling);
    const { gens, choicePrompts, n } = submitAll(prompts, maxTokens, sampling);
    const id = `cmpl-${randomUUID().replaceAll("-", "")}`;
    const head = {
      id,
      object: "text_completion",
      created: Math.floor(Date.now() / 1000),
      model: o.modelName,
    };
    const ids = b.return_token_ids || !tok;
    if (b.stream) {
      return streamSse(reply, gens, choicePrompts, n, streamUsage(b.stream_options), head, {
        ids,
        delta: (i, d) => ({
          choices: [
            {
              index: i,
              text: d.text,
              logprobs: null,
              finish_reason: null,
              ...(ids ? { token_ids: d.tokenIds } : {}),
            },
          ],
        }),
        end: (i, r) => ({
          choices: [
            {
              index: i,
              text: "",
              logprobs: null,
              ...finished(r, stopIds),
            },
          ],
        }),
      });
    }
    const results = await collect(reply, gens, choicePrompts);
    return {
      ...head,
      choices: results.map((r, i) => ({
        index: i,
        text: r.text,
        logprobs: null,
        ...finished(r, stopIds),
        ...(ids ? { token_ids: r.outputIds, prompt_token_ids: choicePrompts[i] } : {}),
      })),
      usage: usage(choicePrompts, n, results),
    };
  });

  app.post("/v1/chat/completions", async (req, reply) => {
    const b = admit(ChatBody, req.body);
    // vLLM's add_generation_prompt (default true) and continue_final_message (default false), as transformers'.
    const prompt = renderChat(needTokenizer("chat", "messages"), b.messages, b.tools, {
      addGenerationPrompt: b.add_generation_prompt ?? true,
      continueFinalMessage: b.continue_final_message ?? false,
    }).ids;
    // Without a limit, absent or null, a chat reply may use the rest of the context (a null max_tokens skipped the
    // context check and reached the batch manager as a negative max_new_tokens).
    const limit = b.max_completion_tokens ?? b.max_tokens ?? null;
    const maxTokens =
      limit ??
      restOfContext(
        prompt.length,
        `the messages are ${prompt.length} tokens through the chat template`,
        "a reply",
        "messages",
      );
    const sampling = samplingOf(b);
    const stopIds = stopReasonIds(sampling);
    const { gens, choicePrompts, n } = submitAll([prompt], () => maxTokens, sampling);
    const id = `chatcmpl-${randomUUID().replaceAll("-", "")}`;
    const head = {
      id,
      object: "chat.completion",
      created: Math.floor(Date.now() / 1000),
      model: o.modelName,
    };
    const ids = b.return_token_ids ?? false;
    if (b.stream) {
      const chunk = { ...head, object: "chat.completion.chunk" };
      return streamSse(reply, gens, choicePrompts, n, streamUsage(b.stream_options), chunk, {
        ids,
        start: (i) => ({
          choices: [
            { index: i, delta: { role: "assistant", content: "" }, logprobs: null, finish_reason: null },
          ],
        }),
        delta: (i, d) => ({
          choices: [
            {
              index: i,
              delta: { content: d.text },
              logprobs: null,
              finish_reason: null,
              ...(ids ? { token_ids: d.tokenIds } : {}),
            },
          ],
        }),
        end: (i, r) => ({
          choices: [
            {
              index: i,
              delta: {},
              logprobs: null,
              ...finished(r, stopIds),
            },
          ],
        }),
      });
    }
    const results = await collect(reply, gens, choicePrompts);
    return {
      ...head,
      choices: results.map((r, i) => ({
        index: i,
        message: { role: "assistant", content: r.text },
        logprobs: null,
        ...finished(r, stopIds),
        ...(ids ? { token_ids: r.outputIds } : {}),
      })),
      ...(ids ? { prompt_token_ids: prompt } : {}),
      usage: usage(choicePrompts, n, results),
    };
  });

  // vLLM's /tokenize and /detokenize (clients count tokens with them): the ids a prompt or a chat becomes here, as the
  // generation endpoints make them, and the text of ids (special tokens kept, as vLLM's tokenizer.decode keeps them).
  // They were 404s.
  app.post("/tokenize", async (req) => {
    const body = req.body;
    const tokenized = (tokens: number[]) => ({
      count: tokens.length,
      max_model_len: maxContext,
      tokens,
      token_strs: null,
    });
    if (body !== null && typeof body === "object" && "messages" in body) {
      const b = admit(TokenizeChatBody, body);
      const t = needTokenizer("tokenize", "messages");
      const chat = renderChat(t, b.messages, b.tools, {
        addGenerationPrompt: b.add_generation_prompt ?? true,
        continueFinalMessage: b.continue_final_message ?? false,
      });
      // The template writes the special tokens; vLLM adds the tokenizer's own (a second bos) only when asked.
      return tokenized(b.add_special_tokens ? t.encode(chat.text) : chat.ids);
    }
    const b = admit(TokenizePromptBody, body);
    const t = needTokenizer("tokenize", "prompt", false);
    return tokenized(t.encode(b.prompt, { addSpecialTokens: b.add_special_tokens ?? true }));
  });
  app.post("/detokenize", async (req) => {
    const b = admit(DetokenizeBody, req.body);
    const t = needTokenizer("detokenize", "tokens");
    return { prompt: t.decode(inVocabulary(b.tokens, "tokens")) };
  });

  /** `ids`, once each is a token of the vocabulary (the schemas check the rest: integers >= 0); else a 400 on `param`. */
  function inVocabulary(ids: number[], param: string): number[] {
    const outside = ids.find((id) => id >= manager.vocabSize);
    if (outside !== undefined)
      throw new ApiError(
        400,
        `${param}: token id ${outside} is outside the vocabulary (0..${manager.vocabSize - 1})`,
        "invalid_request_error",
        param,
      );
    return ids;
  }

  /**
   * The tokens a reply without a limit may use: the rest of the context. A prompt that leaves no room for one is the
   * prompt's fault, said so (the batch manager's refusal would name a max_tokens the client never gave).
   */
  function restOfContext(promptLen: number, what: string, reply: string, param: string): number {
    if (promptLen >= maxContext)
      throw new ApiError(
        400,
        `${what}, leaving no room for ${reply} in the context of ${maxContext} tokens (max_model_len)`,
        "invalid_request_error",
        param,
        "context_length_exceeded",
      );
    return maxContext - promptLen;
  }

  /**
   * vLLM's should_include_usage: include_usage adds a last chunk of the whole request's usage; continuous_usage_stats
   * (only with include_usage) puts each choice's usage so far on every chunk of it as well.
   */
  function streamUsage(so: ChatBody["stream_options"]): StreamUsage {
    const include = so?.include_usage ?? false;
    return { include, continuous: include && (so?.continuous_usage_stats ?? false) };
  }

  /** OpenAI's usage: each prompt's tokens once (not once per choice), every choice's completion tokens. */
  function usage(choicePrompts: number[][], n: number, results: TextResult[]) {
    const prompt_tokens = choicePrompts.reduce((a, p, i) => a + (i % n === 0 ? p.length : 0), 0);
    const completion_tokens = results.reduce((a, r) => a + r.outputIds.length, 0);
    return { prompt_tokens, completion_tokens, total_tokens: prompt_tokens + completion_tokens };
  }

  /**
   * Drives every generation through `each` and records each one in the metrics once it is over, however it ended. One
   * whose stream threw (a failure outside the batch manager's step, e.g. detokenising) counts as "error", as a failed
   * step does (both answer 500, or an error event), and the others are cancelled; the first failure is then rethrown.
   * Recorded only after Promise.all resolved, such a request (all its choices) was missing from
   * tsllm_request_success_total and the token and latency figures.
   */
  async function settle(
    gens: TextGeneration[],
    prompts: number[][],
    each: (g: TextGeneration, i: number) => Promise<TextResult>,
  ): Promise<TextResult[]> {
    const threw: { e: unknown }[] = [];
    const failed = new Set<number>();
    const results = await Promise.all(
      gens.map(async (g, i) => {
        try {
          return await each(g, i);
        } catch (e) {
          failed.add(i);
          if (threw.push({ e }) === 1) for (const h of gens) h.cancel();
          return g.done;
        }
      }),
    );
    results.forEach((r, i) =>
      metrics.finishedRequest(prompts[i].length, failed.has(i) ? "error" : r.finishReason, r.result),
    );
    if (threw.length) throw threw[0].e;
    return results;
  }

  /** Cancels the generations when the client goes away before the response is complete. */
  function cancelOnDisconnect(res: ServerResponse, gens: TextGeneration[]) {
    const cancel = () => {
      if (!res.writableFinished) for (const g of gens) g.cancel();
    };
    // Gone already (while the body was read): the "close" is past. vLLM aborts such a request too; listening for it
    // alone, the server generated it in full for nobody.
    if (res.destroyed) cancel();
    else res.on("close", cancel);
  }

  async function collect(
    reply: FastifyReply,
    gens: TextGeneration[],
    prompts: number[][],
  ): Promise<TextResult[]> {
    cancelOnDisconnect(reply.raw, gens);
    const results = await settle(gens, prompts, async (g) => {
      for await (const _ of g);
      return g.done;
    });
    const failed = results.find((r) => r.finishReason === "error");
    if (failed)
      throw new ApiError(
        500,
        `generation failed: ${failed.result.error?.message ?? "unknown error"}`,
        "server_error",
      );
    return results;
  }

  interface StreamUsage {
    include: boolean;
    continuous: boolean;
  }

  interface ChunkShapes {
    start?: (i: number) => object;
    delta: (i: number, d: { text: string; tokenIds: number[] }) => object;
    /** Chunks carry token ids: send one per token even while the text is held back. */
    ids: boolean;
    end: (i: number, r: TextResult) => object;
  }

  async function streamSse(
    reply: FastifyReply,
    gens: TextGeneration[],
    prompts: number[][],
    n: number,
    usageOf: StreamUsage,
    head: object,
    shape: ChunkShapes,
  ): Promise<void> {
    reply.hijack();
    const res = reply.raw;
    // The headers set on the reply so far (CORS's) as well: hijacked, the reply writes none itself.
    for (const [k, v] of Object.entries(reply.getHeaders())) if (v !== undefined) res.setHeader(k, v);
    res.writeHead(200, {
      "content-type": "text/event-stream; charset=utf-8",
      "cache-control": "no-cache",
      connection: "keep-alive",
    });
    const send = (x: object) => {
      if (!res.destroyed) res.write(`data: ${JSON.stringify(x)}\n\n`);
    };
    cancelOnDisconnect(res, gens);
    try {
      await streamChoices(gens, prompts, n, usageOf, head, shape, send);
    } catch (e) {
      // Headers are out: the failure can only be reported in the stream.
      for (const g of gens) g.cancel();
      send({ error: toApiError(e).body().error });
    }
    if (!res.destroyed) res.end("data: [DONE]\n\n");
  }

  async function streamChoices(
    gens: TextGeneration[],
    prompts: number[][],
    n: number,
    usageOf: StreamUsage,
    head: object,
    shape: ChunkShapes,
    send: (x: object) => void,
  ): Promise<void> {
    const results = await settle(gens, prompts, async (g, i) => {
      let completion = 0; // this choice's tokens so far
      const chunk = (x: object) => {
        const p = prompts[i].length;
        const usage = { prompt_tokens: p, completion_tokens: completion, total_tokens: p + completion };
        send({ ...head, ...x, ...(usageOf.continuous ? { usage } : {}) });
      };
      if (shape.start) chunk(shape.start(i));
      for await (const d of g) {
        completion += d.tokenIds.length;
        if (d.text || (shape.ids && d.tokenIds.length)) chunk(shape.delta(i, d));
      }
      const r = await g.done;
      completion = r.outputIds.length;
      if (r.finishReason === "error")
        send({
          error: new ApiError(
            500,
            `generation failed: ${r.result.error?.message ?? "unknown error"}`,
            "server_error",
          ).body().error,
        });
      else chunk(shape.end(i, r));
      return r;
    });
    if (usageOf.include) send({ ...head, choices: [], usage: usage(prompts, n, results) });
  }

  return {
    app,
    metrics,
    stopAccepting: () => {
      accepting = false;
    },
  };
}

function endpointOf(req: FastifyRequest): string {
  return req.routeOptions.url ?? "unknown";
}
