/**
 * How a command ends other than with success: the exit code, and what to tell the user on stderr (nothing when the
 * command already said it, as a watch's summary does).
 */
import { Data } from "effect"

/** 1: the server refused, could not be reached or failed, or results could not be written. */
export const EXIT_FAILED = 1
/** 2: nothing was done: the input file or the command line is wrong. */
export const EXIT_INVALID = 2
/**
 * 3: the watched batch ended, the files it has written, but not every request succeeded (some failed, or it ended
 * `failed`, `expired` or `cancelled`): results to look at, not a call to make again, which 1 says.
 */
export const EXIT_NOT_ALL_SUCCEEDED = 3
/** 130: stopped by Ctrl-C (128 + SIGINT), as shells report it. */
export const EXIT_INTERRUPTED = 130
/** 143: stopped by SIGTERM (128 + 15), as a CI runner or `timeout` stops a job: handled as a Ctrl-C off a terminal. */
const EXIT_TERMINATED = 143

/** The signals that stop a command, each with its exit code. */
export const STOP_SIGNALS = { SIGINT: EXIT_INTERRUPTED, SIGTERM: EXIT_TERMINATED } as const
export type StopSignal = keyof typeof STOP_SIGNALS
export const STOP_SIGNAL_NAMES = Object.keys(STOP_SIGNALS) as ReadonlyArray<StopSignal>

export class CliFailure extends Data.TaggedError("CliFailure")<{
  readonly exitCode: number
  readonly message?: string
  /**
   * Set when the failure may pass by itself (the connection lost or refused, a timeout, a 408, 429 or 5xx): why, in
   * a few words. A watch tries such a call again (`patience.ts`); anything else (a 404, a 401) is final.
   */
  readonly transient?: string
  /** Set when the server answered (with an error status): the call was refused, not lost on the way. */
  readonly answered?: boolean
  /** The error status the server answered with, when it did. */
  readonly status?: number
  /**
   * Set when the answer was a 429 or a 503, which say the server did nothing (a rate, a full queue): how long it
   * asked to wait (`retry-after-ms`, `retry-after`), so that even a call not to be repeated blindly may be made again.
   */
  readonly busyForMs?: number
}> {}

export const failed = (message: string) => new CliFailure({ exitCode: EXIT_FAILED, message })

/**
 * A file system error in words: `ENOSPC: no space left on device, write`, not the platform's
 * `Unknown: FileSystem.writeAll (20): …` (its reason, module and method, which say nothing to a user).
 */
export const systemErrorText = (error: { readonly _tag?: string; readonly message: string; readonly description?: string | undefined }): string =>
  error._tag === "SystemError" && error.description !== undefined ? error.description : error.message

/** Why a directory cannot take the results, in words (a code alone, `EEXIST`, read as a crash). */
export const unwritableDirectory = (error: unknown): string => {
  const code = (error as NodeJS.ErrnoException).code
  switch (code) {
    case "EEXIST":
      return "it is a file, not a directory"
    case "ENOTDIR":
      return "a part of its path is a file, not a directory"
    case "EACCES":
    case "EPERM":
      return "permission denied"
    case "EROFS":
      return "a read-only file system"
    case "ENOSPC":
      return "no space left on the device"
    default:
      return code ?? String(error)
  }
}
