/**
 * Rerunning what did not succeed (an extension): `POST /v1/batches/{batch_id}/retry` creates a new batch of the input
 * lines of a finished batch's requests that failed (`error`), were left unrun by the window's end (`expired`) or by
 * a cancel (`cancelled`). Here: which batches can be rerun and the rerun's metadata (pure), and the `Rerun` service,
 * which counts those requests and writes the new input file: the original input file streamed, its lines picked by
 * number against the chosen line numbers read a page at a time, so neither is ever whole in memory.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import type { Fragment } from "@effect/sql/Statement"
import { Cause, Chunk, Context, Data, Effect, Layer, Stream } from "effect"
import { type Batch, RerunKind, terminalStatuses } from "../domain/Batches.js"
import type { FileObject } from "../domain/Files.js"
import type { BatchId, FileId } from "../domain/Ids.js"
import { FileStore } from "../files/FileStore.js"
import { isMissingBlob } from "../storage/BlobStore.js"
import type { BatchRecord } from "./BatchStore.js"
import { pendingError } from "./finishing.js"
import { type JsonlLine, jsonlLines, MAX_LINE_BYTES } from "./lines.js"
import { MAX_METADATA_PAIRS, type Problem } from "./validation.js"

/** The metadata key naming the batch a rerun reruns. */
export const RETRY_OF = "retry_of"

/** What a rerun reruns when the caller does not choose. */
export const ALL_KINDS: ReadonlyArray<RerunKind> = RerunKind.literals

/** Line numbers read at a time while picking the lines. */
const PAGE = 1000

/** Why `batch` cannot be rerun at all (not finished, or none of its requests ran); undefined when it can. */
export const refusal = (batch: Batch): string | undefined => {
  if (!terminalStatuses.includes(batch.status)) {
    return `Batch ${batch.id} is ${batch.status}: only a finished batch (completed, failed, expired or cancelled) can be rerun.`
  }
  if (batch.in_progress_at !== null) return undefined
  const failedValidation = batch.status === "failed" && !(batch.errors?.data ?? []).some((e) => e.code === "internal_error")
  return failedValidation
    ? `Batch ${batch.id} failed validation (its errors say why, with the lines), so none of its requests ran and ` +
      "there is nothing to rerun: fix its input and create a new batch."
    : `None of batch ${batch.id}'s requests ran (it was ${batch.status} before its validation ended), so there is ` +
      "nothing to rerun: create a new batch from its input file."
}

/** The kinds `only` names (all when left out), each once, in `ALL_KINDS`' order. */
export const chosenKinds = (only: ReadonlyArray<RerunKind> | undefined): ReadonlyArray<RerunKind> =>
  ALL_KINDS.filter((kind) => (only ?? ALL_KINDS).includes(kind))

const kindWords: Record<RerunKind, string> = { error: "failed", expired: "expired", cancelled: "was cancelled" }

/** The 409's message when no request of batch `id` is of `kinds`. */
export const nothingToRerun = (id: BatchId, kinds: ReadonlyArray<RerunKind>): string => {
  const words = kinds.map((k) => kindWords[k])
  const said = words.length === 1 ? words[0] : `${words.slice(0, -1).join(", ")} or ${words[words.length - 1]}`
  return `No request of batch ${id} ${said}: there is nothing to rerun.`
}

/** The name of the input file made for the rerun `id`. */
export const rerunFilename = (id: BatchId): string => `${id}_retry.jsonl`

/**
 * The rerun's metadata: the caller's `given` (when it sent `metadata`) or else the original's, with `retry_of`
 * naming the original. When that makes more keys than OpenAI allows, a problem that says what to send instead;
 * anything else is left for `validateCreateBatch` to check as it checks a create's.
 */
export const rerunMetadata = (original: Batch, given: unknown): Problem | { readonly metadata: unknown } => {
  const base = given === undefined ? original.metadata : given
  if (base !== null && (typeof base !== "object" || Array.isArray(base))) return { metadata: base }
  const metadata = { ...base, [RETRY_OF]: original.id }
  if (Object.keys(metadata).length <= MAX_METADATA_PAIRS) return { metadata }
  return {
    code: "invalid_value",
    param: "metadata",
    message: given === undefined
      ? `Batch ${original.id}'s metadata has ${MAX_METADATA_PAIRS} keys, the most allowed, and the rerun's adds ` +
        `'${RETRY_OF}': send 'metadata' with at most ${MAX_METADATA_PAIRS - 1} keys for the rerun instead.`
      : `Invalid 'metadata': a rerun's may have at most ${MAX_METADATA_PAIRS - 1} keys, as '${RETRY_OF}' is added.`
  }
}

/** The original input file is gone (deleted or expired): its lines cannot be read again. */
export class InputFileGone extends Data.TaggedError("InputFileGone")<{ readonly id: FileId }> {}
/** The new input file would be larger than `maxBytes` (what the project's storage quota leaves). */
export class InputTooLarge extends Data.TaggedError("InputTooLarge")<{ readonly maxBytes: number }> {}

/** Where the new input file goes. */
export interface RerunTarget {
  readonly id: FileId
  readonly filename: string
  readonly project: string
  readonly maxBytes: number
  /** When the copy expires (`FileMetadata`); none: the batch files' default. */
  readonly expiresAfterSeconds?: number | undefined
}

export interface RerunShape {
  /** How many of batch `id`'s requests ended as one of `kinds`. */
  readonly count: (id: BatchId, kinds: ReadonlyArray<RerunKind>) => Effect.Effect<number>
  /**
   * A new input file (purpose `batch`) of the input lines of `original`'s requests that ended as one of `kinds`,
   * in their order, each as its validation read it (the line's bytes without a byte order mark or a CR before
   * the newline). `check` is the file's `FileStore.create` check.
   */
  readonly writeInput: <E = never>(
    original: BatchRecord,
    kinds: ReadonlyArray<RerunKind>,
    target: RerunTarget,
    check?: Effect.Effect<void, E>
  ) => Effect.Effect<FileObject, InputFileGone | InputTooLarge | E>
}

export class Rerun extends Context.Tag("Rerun")<Rerun, RerunShape>() {}

export const make = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  const files = yield* FileStore
  const expired = pendingError.expire.code
  const cancelled = pendingError.cancelDone.code

  /**
   * The requests (`r`) whose outcome (`o`) is of `kind`. An `error` is an answer other than a 2xx or an error other
   * than the two of requests left unrun; a request without an outcome (the outer join's NULLs) is one too: only a
   * batch failed by a fault (`internal_error`) leaves some, and they did not succeed either.
   */
  const ofKind = (kind: RerunKind): Fragment => {
    switch (kind) {
      case "expired":
        return sql`o.error_code = ${expired}`
      case "cancelled":
        return sql`o.error_code = ${cancelled}`
      case "error":
        return sql`((o.status_code IS NULL OR o.status_code < 200 OR o.status_code >= 300)
          AND COALESCE(o.error_code, '') <> ${expired} AND COALESCE(o.error_code, '') <> ${cancelled})`
    }
  }
  const chosen = (id: BatchId, kinds: ReadonlyArray<RerunKind>) =>
    sql`batch_requests r LEFT JOIN batch_results o ON o.batch_id = r.batch_id AND o.line = r.line
      WHERE r.batch_id = ${id} AND ${sql.or(kinds.map(ofKind))}`

  const count = (id: BatchId, kinds: ReadonlyArray<RerunKind>) =>
    sql<{ readonly n: number | string }>`SELECT COUNT(*) AS n FROM ${chosen(id, kinds)}`.pipe(
      Effect.map((rows) => Number(rows[0]?.n ?? 0)),
      Effect.orDie,
      Effect.withSpan("Rerun.count", { attributes: { id } })
    )

  const linesAfter = (id: BatchId, kinds: ReadonlyArray<RerunKind>, after: number) =>
    sql<{ readonly line: number | string }>`
      SELECT r.line AS line FROM ${chosen(id, kinds)} AND r.line > ${after} ORDER BY r.line LIMIT ${PAGE}`.pipe(
      Effect.map((rows) => rows.map((r) => Number(r.line))),
      Effect.orDie
    )

  const writeInput = <E = never>(original: BatchRecord, kinds: ReadonlyArray<RerunKind>, target: RerunTarget, check?: Effect.Effect<void, E>) =>
    Effect.gen(function*() {
      const { id, input_file_id } = original.batch
      const input = yield* files.content(input_file_id, { project: original.project }).pipe(
        Effect.catchTag("FileNotFound", () => Effect.fail(new InputFileGone({ id: input_file_id })))
      )
      // The chosen line numbers, a page at a time: `page[at]` is the next one not yet passed.
      let page: ReadonlyArray<number> = []
      let at = 0
      let lastPage = false
      let written = 0
      const encoder = new TextEncoder()
      const pick = (items: Chunk.Chunk<JsonlLine>) =>
        Effect.gen(function*() {
          const out: Array<Uint8Array> = []
          for (const item of items) {
            for (;;) {
              while (at < page.length && page[at]! < item.line) at++
              if (at < page.length || lastPage) break
              const after = page.length === 0 ? 0 : page[page.length - 1]!
              page = yield* linesAfter(id, kinds, after)
              at = 0
              lastPage = page.length < PAGE
            }
            // A line too long to read never ran, so it is never chosen.
            if (page[at] !== item.line || item._tag !== "Line") continue
            const bytes = encoder.encode(`${item.text}\n`)
            written += bytes.length
            if (written > target.maxBytes) return yield* new InputTooLarge({ maxBytes: target.maxBytes })
            out.push(bytes)
          }
          return Chunk.unsafeFromArray(out)
        })
      // Deleted as it was read: gone, not a shorter file (the rest of its lines left out of the rerun). Its bytes'
      // fault only: one of the copy's own storage stays a fault.
      const read = input.stream.pipe(Stream.catchAllCause((cause) =>
        isMissingBlob(Cause.squash(cause)) ? Stream.fail(new InputFileGone({ id: input_file_id })) : Stream.failCause(cause)))
      const lines = read.pipe(jsonlLines(MAX_LINE_BYTES), Stream.mapChunksEffect(pick))
      const { expiresAfterSeconds, filename, project } = target
      return yield* files.create({ id: target.id, filename, purpose: "batch", project, expiresAfterSeconds }, lines, check)
    }).pipe(Effect.withSpan("Rerun.writeInput", { attributes: { id: original.batch.id } }))

  return Rerun.of({ count, writeInput })
})

export const RerunLive: Layer.Layer<Rerun, never, SqlClient.SqlClient | FileStore> = Layer.effect(Rerun, make)
