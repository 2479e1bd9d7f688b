/**
 * The handler of `GET /v1/batches/{id}/results` (an extension: results while a batch runs), in the `batches` group:
 * a window of the output or error file's lines (`BatchStore.settledResults`, see `batches/partialResults.ts`),
 * streamed, with the last input line it holds in `x-last-line`.
 */
import * as HttpServerResponse from "@effect/platform/HttpServerResponse"
import { Effect } from "effect"
import type { BatchStoreShape } from "../batches/BatchStore.js"
import { type BatchResultsParams, DEFAULT_RESULT_LINES } from "../domain/BatchResults.js"
import type { BatchId } from "../domain/Ids.js"
import type { Visibility } from "../domain/Projects.js"

/** The header naming the last input line a response holds. */
export const LAST_LINE_HEADER = "x-last-line"

/** The response for `query` on batch `id` (`BatchNotFound` when `visibility` does not see it). */
export const batchResults = (store: BatchStoreShape) =>
(id: BatchId, visibility: Visibility, query: BatchResultsParams) =>
  Effect.gen(function*() {
    yield* store.get(id, visibility)
    const after = query.after ?? 0
    const kind = query.kind === "error" ? "failed" : "succeeded"
    const window = yield* store.settledResults(id, kind, after, query.limit ?? DEFAULT_RESULT_LINES)
    return HttpServerResponse.stream(window.bytes, {
      contentType: "application/jsonl",
      // With no line, `after` itself: a poller passes `x-last-line` back as `after` whatever it got, and an empty
      // window must not send it back to line 0.
      headers: { [LAST_LINE_HEADER]: String(window.count > 0 ? window.lastLine : after) }
    })
  }).pipe(Effect.withSpan("Batches.results", { attributes: { id } }))
