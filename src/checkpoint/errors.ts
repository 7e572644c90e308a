/**
 * Errors of the checkpoint layer. Each message is one line that starts with the
 * file it is about, so a user can act on it without a stack trace.
 */

/** A safetensors file, shard index or checkpoint directory is malformed or incomplete. */
export class CheckpointError extends Error {
  override name = "CheckpointError";
  constructor(
    /** The file (or directory) the problem is in. */
    readonly file: string,
    detail: string,
    /** The tensor concerned, where there is one. */
    readonly tensor?: string,
  ) {
    super(tensor === undefined ? `${file}: ${detail}` : `${file}: tensor "${tensor}": ${detail}`);
  }
}

/** A Hugging Face config.json is invalid or describes something we do not support. */
export class ConfigError extends Error {
  override name = "ConfigError";
  constructor(
    readonly file: string,
    detail: string,
    /** The config field concerned, where there is one (dotted path). */
    readonly field?: string,
  ) {
    super(`${file}: ${detail}`);
  }
}
