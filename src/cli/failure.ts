/**
 * How a command ends other than with success: the exit code, and what to tell the user on stderr (nothing when the
 * command already said it, as a watch's summary does).
 */
import { Data } from "effect"

/** 1: the server refused or failed, or a batch did not succeed in full. */
export const EXIT_FAILED = 1
/** 2: nothing was done: the input file or the command line is wrong. */
export const EXIT_INVALID = 2
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
