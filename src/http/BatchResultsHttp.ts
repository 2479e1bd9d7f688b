/**
 * The handler of `GET /v1/batches/{id}/results` (an extension: results while a batch runs), in the `batches` group:
 * a window of the output or error file's lines (`BatchStore.settledResults`, see `batches/partialResults.ts`), read
 * whole before the answer (one page, bounded), sent with its length, the last input line it holds in
 * `x-last-line` and where to go on from in `x-next-after`. A read that fails is an error status, never a 200 cut
 * short that a poller would take for the whole window.
 *
 * Once the file of that kind is gone (deleted, or expired), its lines are too: a 404 says so (the sweep then clears
 * what the rows held of them), rather than answers still read here after the user deleted their file.
 *
 * A page stays in memory until its client has taken it all, so a client that reads slowly, or not at all, holds
 * it: sixty that never read took the server from 550 MB to 1.4 GB in 40 s with 30 MB answers, and more would have
 * ended the process. So a node holds at most `RESULT_PAGES_AT_ONCE` pages, from before their read until their
 * answer has left (one more gets a 503 with `Retry-After`), and a client that takes none of its page for
 * `STALL_TIMEOUT` loses its connection and the page.
 */
import * as HttpServerResponse from "@effect/platform/HttpServerResponse"
import { type Duration, Effect } from "effect"
import type { BatchStoreShape } from "../batches/BatchStore.js"
import { notFound } from "../domain/Errors.js"
import type { FileStoreShape } from "../files/FileStore.js"
import { type BatchResultsParams, DEFAULT_RESULT_LINES } from "../domain/BatchResults.js"
import type { BatchId } from "../domain/Ids.js"
import type { Visibility } from "../domain/Projects.js"
import { type Budget, busy, cutWhenStalled, holdUntilAnswered, type Holder, inPieces, overShare, type Taken } from "./holding.js"

/** The header naming the last input line a response holds (0 when it holds none). */
export const LAST_LINE_HEADER = "x-last-line"
/** The header naming the `after` of the next call: it moves on even when a window of the kind holds no line. */
export const NEXT_AFTER_HEADER = "x-next-after"

/** A page beyond `RESULT_PAGES_AT_ONCE` (or its project's share, of which `holder` holds what it says). */
const pagesBusy = (pages: Budget, taken: Taken, holder: Holder | undefined) =>
  taken === "share"
    ? overShare(`Your project is reading too many result pages at once (it holds ${pages.heldBy(holder)}, as many as it may now); try again in a second.`, 1)
    : busy(`Too many result pages are being sent at once (${pages.limit}); try again in a second.`, 1)

/**
 * The response for `query` on batch `id` (`BatchNotFound` when `visibility` does not see it), holding one of `pages`
 * (taken by the request's `holder`) from before its read until it has left; a client that takes none of
 * it for `stallTimeout` is cut off.
 */
export const batchResults = (
  store: BatchStoreShape,
  files: FileStoreShape,
  pages: Budget,
  stallTimeout: Duration.Duration,
  holder: Effect.Effect<Holder | undefined>
) =>
(id: BatchId, visibility: Visibility, query: BatchResultsParams) =>
  Effect.gen(function*() {
    const { batch } = yield* store.get(id, visibility)
    const kind = query.kind === "error" ? "failed" : "succeeded"
    const fileId = kind === "succeeded" ? batch.output_file_id : batch.error_file_id
    if (fileId != null && (yield* Effect.either(files.get(fileId, "all")))._tag === "Left") {
      const which = kind === "succeeded" ? "output" : "error"
      return yield* notFound(`The ${which} file of batch ${id} (${fileId}) was deleted or has expired, and its results with it.`, "kind")
    }
    const by = yield* holder
    const taken = yield* holdUntilAnswered(pages, by)
    if (taken !== "taken") return pagesBusy(pages, taken, by)
    const window = yield* store.settledResults(id, kind, query.after ?? 0, query.limit ?? DEFAULT_RESULT_LINES)
    const body = yield* cutWhenStalled(stallTimeout, inPieces(window.bytes))
    return HttpServerResponse.stream(body, {
      contentType: "application/jsonl",
      headers: {
        // A stream's length is not known to the platform: given, the answer is not chunked (also when empty).
        "content-length": String(window.bytes.length),
        [LAST_LINE_HEADER]: String(window.lastLine),
        [NEXT_AFTER_HEADER]: String(window.nextAfter)
      }
    })
  }).pipe(Effect.scoped, Effect.withSpan("Batches.results", { attributes: { id } }))
