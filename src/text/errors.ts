// Errors of the text layer: one line naming the file or the input at fault.
export class TokenizerError extends Error {
  override name = "TokenizerError";
}
