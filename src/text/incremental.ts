// Streaming text out of streaming token ids. Two small state machines every streaming front end needs:
//  - IncrementalDecoder: a byte-level token may end in the middle of a UTF-8 character (東 is three
//    tokens in a byte-level BPE), and SentencePiece decoders strip a leading space from the first token.
//    So each new token is decoded together with a few tokens before it and only the text that grew, and
//    is complete (no trailing U+FFFD), is released: the prefix/read offsets of vLLM's detokenizer and
//    tokenizers' DecodeStream.
//  - StopStrings: text that may be the start of a stop string is held back until it is known not to be;
//    a stop string ends generation and is not part of the output (OpenAI semantics).
//    Text is released only up to where a stop string could still begin.

export interface Decoder {
  decode(ids: number[], o?: { skipSpecialTokens?: boolean; cleanUpTokenizationSpaces?: boolean }): string;
}

const REPLACEMENT = "\uFFFD";

/** The most prompt tokens a stream is primed with (vLLM tries suffixes of 4 to 23 tokens). */
const CONTEXT_MAX = 23;

/**
 * The prompt's last tokens to decode the first generated ones after, as vLLM's FastIncrementalDetokenizer primes its
 * DecodeStream: the shortest suffix of 4 to 23 tokens that decodes without U+FFFD (checked with special tokens
 * skipped, the default of the tokenizers decode it calls); a prompt of 4 tokens or fewer, or one with no such suffix,
 * whole. The whole prompt, not none: a prompt ending inside a character (token-id prompts can) has that character
 * finished by the reply ("東" where a reply decoded alone gave U+FFFD), and one starting inside a character keeps a
 * SentencePiece reply's first space.
 */
export function promptContext(tok: Decoder, prompt: readonly number[]): number[] {
  const o = { skipSpecialTokens: true, cleanUpTokenizationSpaces: false };
  if (prompt.length > 4)
    for (let n = 4; n <= Math.min(prompt.length, CONTEXT_MAX); n++) {
      const s = prompt.slice(prompt.length - n);
      if (!tok.decode(s, o).includes(REPLACEMENT)) return s;
    }
  return [...prompt];
}

export class IncrementalDecoder {
  private ids: number[];
  private prefix = 0;
  private read: number;
  /** How many of `ids` are the context's (the prompt's bytes are never flushed as the reply's text). */
  private readonly contextLength: number = 0;

  /**
   * `context`: tokens before the first pushed one (promptContext of the prompt), decoded but never released. A
   * SentencePiece decoder strips the space of the first token it decodes, so without it a reply's first word lost its
   * space ("▁Paris" gave "Paris"; vLLM, which decodes after the prompt, gives " Paris").
   */
  constructor(
    private readonly tok: Decoder,
    private readonly skipSpecialTokens = true,
    context: readonly number[] = [],
  ) {
    // Primed token by token, what is released thrown away, as vLLM steps its DecodeStream through the prompt
    // suffix: the offsets then stop at the context's last whole character, so a character the context ends inside
    // is released whole once the reply completes it (offsets at the context's end cut it: its U+FFFD and the whole
    // character have one length, so the reply's text never grew and the character was lost).
    this.ids = [];
    this.read = 0;
    for (const id of context) this.push(id);
    this.contextLength = context.length;
  }

  /**
   * Never transformers' clean-up of spaces (" ." → ".", " 's" → "'s"; on where the tokenizer folder asks for it, as
   * Llama 3's does), as vLLM's incremental detokenizer: it would remove a space already released, and
   * shift the text under the offsets, so the next delta lost a character ("a", " ", ".", "b" streamed "a b").
   */
  private options() {
    return { skipSpecialTokens: this.skipSpecialTokens, cleanUpTokenizationSpaces: false };
  }

  /** Adds one token; returns the text it completes (possibly "", while a character is split). */
  push(id: number): string {
    this.ids.push(id);
    const o = this.options();
    const before = this.tok.decode(this.ids.slice(this.prefix, this.read), o);
    const now = this.tok.decode(this.ids.slice(this.prefix), o);
    if (now.length <= before.length || now.endsWith(REPLACEMENT)) return "";
    this.prefix = this.read;
    this.read = this.ids.length;
    return now.slice(before.length);
  }

  /** Whatever is still held back (an incomplete character at the end decodes as U+FFFD, as HF does). */
  flush(): string {
    // Nothing pushed after the context: what is held is the prompt's cut character, not the reply's (a reply that was
    // only its end token would otherwise read U+FFFD).
    if (this.ids.length === this.contextLength) return "";
    const o = this.options();
    const before = this.tok.decode(this.ids.slice(this.prefix, this.read), o);
    const now = this.tok.decode(this.ids.slice(this.prefix), o);
    this.prefix = this.read = this.ids.length;
    return now.length > before.length ? now.slice(before.length) : "";
  }
}

export class StopStrings {
  private held = "";
  /** Set once a stop string was seen: the matched string. */
  matched: string | null = null;

  /** `includeStop`: the text ends after the stop string rather than before it (vLLM's include_stop_str_in_output). */
  constructor(
    private readonly stops: string[],
    private readonly includeStop = false,
  ) {
    this.stops = stops.filter((s) => s.length > 0);
  }

  /** Feeds new text; returns what can be released now (never past a stop string). */
  push(text: string): string {
    if (this.matched !== null) return "";
    const buf = this.held + text;
    // The stop that completes first wins: generation would have ended there, before any later one.
    let cut = -1;
    let end = Infinity;
    for (const s of this.stops) {
      const at = buf.indexOf(s);
      if (at >= 0 && (at + s.length < end || (at + s.length === end && at < cut))) {
        cut = at;
        end = at + s.length;
        this.matched = s;
      }
    }
    if (cut >= 0) {
      this.held = "";
      return buf.slice(0, this.includeStop ? end : cut);
    }
    // Hold back the longest tail of buf that begins some stop string.
    let keep = 0;
    for (const s of this.stops)
      for (let n = Math.min(s.length - 1, buf.length); n > keep; n--)
        if (buf.endsWith(s.slice(0, n))) {
          keep = n;
          break;
        }
    this.held = buf.slice(buf.length - keep);
    return buf.slice(0, buf.length - keep);
  }

  /** At the end of generation: the held-back text was not a stop string after all. */
  flush(): string {
    const t = this.matched === null ? this.held : "";
    this.held = "";
    return t;
  }
}

/** Token ids → streamed text with stop strings applied; `done` once a stop string matched. */
export class TextStream {
  private readonly dec: IncrementalDecoder;
  private readonly stop: StopStrings;
  text = "";

  /**
   * `prompt`: the request's prompt ids, whose last tokens the first output tokens are decoded after (vLLM);
   * `includeStop`: a stop string that ends the text is part of it.
   */
  constructor(
    tok: Decoder,
    stops: string[] = [],
    skipSpecialTokens = true,
    prompt: readonly number[] = [],
    includeStop = false,
  ) {
    this.dec = new IncrementalDecoder(tok, skipSpecialTokens, promptContext(tok, prompt));
    this.stop = new StopStrings(stops, includeStop);
  }

  get stopped(): boolean {
    return this.stop.matched !== null;
  }

  /** The stop string that ended the text, if any. */
  get stopString(): string | null {
    return this.stop.matched;
  }

  push(id: number): string {
    return this.emit(this.stop.push(this.dec.push(id)));
  }

  flush(): string {
    if (this.stopped) return "";
    return this.emit(this.stop.push(this.dec.flush()) + this.stop.flush());
  }

  private emit(t: string): string {
    this.text += t;
    return t;
  }
}
