// Text generation over the batch manager (src/serving/): submits token ids, turns the request's token
// stream into text deltas (incremental detokenisation, stop strings) and reports how it ended. The one
// layer tsllm-run and tsllm-serve share; the batch manager stays the only generation loop.
import type {
  BatchManager,
  FinishReason,
  GenerationRequest,
  RequestHandle,
  RequestResult,
} from "../serving/types.ts";
import { TextStream } from "./incremental.ts";
import type { TextTokenizer } from "./tokenizer.ts";

export interface TextRequest extends GenerationRequest {
  /** Stop strings: generation ends when the text contains one; it is not part of the output. */
  stop?: readonly string[];
  /** Leave special tokens (e.g. <|eot_id|>) out of the text (default true, as servers do). */
  skipSpecialTokens?: boolean;
  /**
   * The stop string, or the end / stop token's text, that ended generation is part of the text (vLLM's
   * include_stop_str_in_output; default false).
   */
  includeStopStr?: boolean;
}

export interface TextDelta {
  /** New text (may be "" while a character or a possible stop string is incomplete). */
  text: string;
  /** The token ids this delta consumed. */
  tokenIds: number[];
}

export interface TextResult {
  /** Generated ids up to and including the token that ended generation. */
  outputIds: number[];
  /** Decoded output, as decoded after the prompt's last tokens (vLLM's output text; empty without a tokenizer). */
  text: string;
  finishReason: FinishReason;
  /** The stop string that ended generation, if one did. */
  stopString?: string;
  result: RequestResult;
}

export interface TextGeneration extends AsyncIterable<TextDelta> {
  readonly handle: RequestHandle;
  /** Resolves once the stream was consumed (or cancelled) and the request finished. */
  readonly done: Promise<TextResult>;
  cancel(): void;
}

/**
 * Submits `req` (throws RequestRejectedError at once, as submit does) and returns its text stream. Iterate
 * it to drive it; without a tokenizer the deltas carry ids only and stop strings are refused.
 */
export function generateText(
  manager: BatchManager,
  tok: TextTokenizer | null,
  req: TextRequest,
): TextGeneration {
  if (!tok && req.stop?.length) throw new Error("stop strings need a tokenizer");
  const handle = manager.submit(req);
  const skip = req.skipSpecialTokens ?? true;
  const text = tok
    ? new TextStream(tok, [...(req.stop ?? [])], skip, req.promptIds, req.includeStopStr)
    : null;
  // The token that ends generation (an end or stop token id) is left out of the text unless the stop is asked for, as
  // vLLM's detokenizer skips it: a non-special --stop-token-ids token (".") showed up in the text, and so would
  // <|eot_id|> with special tokens kept. The manager ends a request at the first of these, so it is the last token.
  const endIds = new Set([
    ...(req.ignoreEos ? [] : (req.endIds ?? manager.eosTokenIds ?? [])),
    ...(req.stopTokenIds ?? []),
  ]);
  const ids: number[] = [];
  let stopString: string | undefined;
  let finished!: (r: TextResult) => void;
  const done = new Promise<TextResult>((res) => {
    finished = res;
  });
  const finish = async () => {
    const result = await handle.done;
    const stoppedByText = stopString !== undefined;
    finished({
      outputIds: ids,
      text: text?.text ?? "",
      finishReason: stoppedByText ? "stop" : result.finishReason,
      ...(stoppedByText ? { stopString } : {}),
      result,
    });
  };
  let started = false;
  async function* deltas(): AsyncGenerator<TextDelta> {
    started = true;
    let ended = false;
    try {
      for await (const ev of handle) {
        ids.push(ev.tokenId);
        const ends = endIds.has(ev.tokenId) && !req.includeStopStr;
        const t = text && !ends ? text.push(ev.tokenId) : "";
        if (text?.stopped) {
          stopString = text.stopString ?? undefined;
          handle.cancel();
          ended = true;
          yield { text: t, tokenIds: [ev.tokenId] };
          return;
        }
        yield { text: t, tokenIds: [ev.tokenId] };
      }
      ended = true;
      const tail = text ? text.flush() : "";
      // The flushed end (a cut-off character, as U+FFFD) can complete a stop string too.
      if (text?.stopped) stopString = text.stopString ?? undefined;
      if (tail) yield { text: tail, tokenIds: [] };
    } finally {
      // A consumer that stops iterating early no longer wants the request.
      if (!ended) handle.cancel();
      await finish();
    }
  }
  const it = deltas();
  return {
    handle,
    done,
    cancel: () => {
      handle.cancel();
      // A stream never read never reaches the generator's finally: settle `done` here (a later read finds the
      // request finished, and a second settle of the promise is a no-op).
      if (!started) void finish();
    },
    [Symbol.asyncIterator]: () => it,
  };
}
