/**
 * A batch's lifecycle lines, one per event (never per request): created, validated or failed validation, picked
 * up by a node, finished. Each carries `batch_id` and the figures an operator asks about; the messages read on
 * their own in the pretty format, the fields are for queries on the JSON one.
 */
import { Effect, FiberRef, HashMap } from "effect"
import type { Batch, BatchError } from "../domain/Batches.js"
import type { BatchId } from "../domain/Ids.js"
import { echo, MAX_ECHO } from "../domain/Text.js"

/**
 * `effect` (a batch's own fiber) logging with the batch's id as its one annotation: the fiber is forked by the
 * request that created or cancelled the batch, and would otherwise carry that request's `request_id` for as long as
 * the batch runs.
 */
export const batchAnnotations = (id: BatchId) => <A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
  Effect.locally(effect, FiberRef.currentLogAnnotations, HashMap.set(HashMap.empty<string, unknown>(), "batch_id", id))

/** Errors of a failed validation quoted in its line, and the length each message is cut to. */
const QUOTED_ERRORS = 3
const MAX_ERROR_MESSAGE = 200

/** A line of `event` (`batch.created`, …: one field to select a kind of line by). */
const line = (id: BatchId, event: string, message: string, fields: Record<string, unknown> = {}) =>
  Effect.logInfo(message).pipe(Effect.annotateLogs({ event, batch_id: id, ...fields }))

/**
 * A value a client chose (a file id, a model, a message quoting the input), fit for a log line: cut to `max`
 * characters and its control characters escaped, so that it can neither bloat a line nor forge another one in the
 * pretty format.
 */
export const clientText = (text: string, max = MAX_ECHO) =>
  echo(text, max).replace(
    /[\u0000-\u001f\u007f\u2028\u2029]/g,
    (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`
  )

export const created = (batch: Batch, project: string) =>
  line(batch.id, "batch.created", `Batch created for ${batch.endpoint}`, {
    endpoint: batch.endpoint,
    project,
    input_file_id: clientText(batch.input_file_id)
  })

export const validated = (id: BatchId, total: number, model: string | null, project: string) => {
  const name = model === null ? null : clientText(model, 256)
  return line(id, "batch.validated", `Batch validated: ${total} request(s)${name === null ? "" : ` for ${name}`}`, { lines: total, model: name, project })
}

/** The first errors, each as `line N: code: message` (messages cut short: they may quote the input). */
export const validationErrors = (errors: ReadonlyArray<BatchError>) =>
  errors.slice(0, QUOTED_ERRORS).map((e) =>
    `${e.line === null ? "" : `line ${e.line}: `}${e.code}: ${clientText(e.message, MAX_ERROR_MESSAGE)}`
  )

export const validationFailed = (id: BatchId, errors: ReadonlyArray<BatchError>) => {
  const first = validationErrors(errors)
  const more = errors.length > first.length ? ` (and ${errors.length - first.length} more)` : ""
  return line(id, "batch.validation_failed", `Batch failed validation: ${first.join("; ")}${more}`, {
    status: "failed",
    error_count: errors.length, errors: first
  })
}

/**
 * This node starts working on a batch it was not: at start, an unfinished one (this node's before a restart, or
 * another's); later, slices of it no node holds (their node stopped, or the node running the batch shares them).
 * Which of those it is goes unsaid: the lines claim only what the node knows when it picks the batch up. `shared`:
 * other nodes may run batches on this database (PostgreSQL); on SQLite one process runs them all.
 */
export const pickedUp = (id: BatchId, atStart: boolean, shared: boolean) =>
  atStart
    ? line(id, "batch.picked_up", shared
      ? "Batch taken up as this node started: unfinished, some of it held by no node (another node may run the rest)"
      : "Batch taken up as this node started: left unfinished by the last process to run this database's batches", { reason: "restart" })
    : line(id, "batch.picked_up", "Batch picked up: slices of it no node holds (shared by the node running it, or left by one that stopped)", {
      reason: "free_work"
    })

/** Batches named in the shutdown's line at most (a queue of thousands would make a line of megabytes). */
const NAMED_LEFT = 50

/**
 * The batches a stopping node was working on (running, validating, waiting for a permit or their upstream): one line,
 * so that the log tells where their lines went (another node's `batch.picked_up` or `batch.took_over`, or this one's
 * next start).
 */
export const leftAtShutdown = (ids: ReadonlyArray<BatchId>) =>
  ids.length === 0 ? Effect.void : Effect.logInfo(
    `Shutting down with ${ids.length} batch(es) unfinished here, their work left to another node or this node's ` +
      `next start: ${ids.slice(0, NAMED_LEFT).join(", ")}${ids.length > NAMED_LEFT ? ", …" : ""}`
  ).pipe(Effect.annotateLogs({ event: "server.batches_left", count: ids.length, batch_ids: ids.slice(0, NAMED_LEFT) }))

/** Seconds from the batch's creation to its final status (the stamp of that status, else now). */
export const durationSeconds = (batch: Batch, nowSeconds: number) =>
  (batch.completed_at ?? batch.failed_at ?? batch.expired_at ?? batch.cancelled_at ?? nowSeconds) - batch.created_at

/** `project` when the caller knows it (a fault's last line is written without loading the batch again). */
export const finished = (batch: Batch, project?: string) =>
  Effect.flatMap(Effect.clockWith((clock) => clock.currentTimeMillis), (now) => {
    const { completed, failed, total } = batch.request_counts
    const seconds = durationSeconds(batch, Math.floor(now / 1000))
    return line(
      batch.id,
      "batch.finished",
      `Batch ${batch.status}: ${completed} of ${total} succeeded, ${failed} failed, ${batch.usage.total_tokens} tokens, in ${seconds} s`,
      {
        status: batch.status,
        total,
        completed,
        failed,
        input_tokens: batch.usage.input_tokens,
        cached_tokens: batch.usage.input_tokens_details.cached_tokens,
        output_tokens: batch.usage.output_tokens,
        reasoning_tokens: batch.usage.output_tokens_details.reasoning_tokens,
        total_tokens: batch.usage.total_tokens,
        duration_s: seconds,
        ...(project === undefined ? {} : { project }),
        ...(batch.errors === null ? {} : { errors: validationErrors(batch.errors.data) })
      }
    )
  })
