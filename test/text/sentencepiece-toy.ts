// A SentencePiece-style tokenizer.json (Llama 2's decoder: ▁ → space, byte fallback, fuse, strip one leading
// space), built by hand: the decoder strips the space of whatever token it decodes first. The fixture's tokenizer
// is byte-level (Llama 3), whose decode never drops a space, so the tests that need this one build it here.
export const SP_VOCAB = {
  "<unk>": 0,
  "<s>": 1,
  "</s>": 2,
  "▁a": 3,
  "▁b": 4,
  a: 5,
  b: 6,
  "▁": 7,
  "<0xE6>": 8,
  "<0x9D>": 9,
  "<0xB1>": 10,
};

export const SP_TOKENIZER_JSON = {
  version: "1.0",
  added_tokens: ["<unk>", "<s>", "</s>"].map((content, id) => ({
    ...{ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true },
  })),
  normalizer: null,
  pre_tokenizer: null,
  post_processor: null,
  decoder: {
    type: "Sequence",
    decoders: [
      { type: "Replace", pattern: { String: "▁" }, content: " " },
      { type: "ByteFallback" },
      { type: "Fuse" },
      { type: "Strip", content: " ", start: 1, stop: 0 },
    ],
  },
  model: {
    ...{
      type: "BPE",
      dropout: null,
      unk_token: "<unk>",
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
    },
    ...{ fuse_unk: true, byte_fallback: true, ignore_merges: false, vocab: SP_VOCAB, merges: [] },
  },
};
