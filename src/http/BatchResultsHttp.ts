/**
 * The handler of `GET /v1/batches/{id}/results` (an extension: results while a batch runs), in the `batches` group:
 * a window of the output or error file's lines (`BatchStore.settledResults`, see `batches/partialResults.ts`), read
 * whole before the answer (one page, bounded), sent with its length, the last input line it holds in
 * `x-last-line` and where to go on from in `x-next-after`. A read that fails is an error status, never a 200 cut
 * short that a poller would take for the whole window.
 */
import * as HttpServerResponse from "@effect/platform/HttpServerResponse"
import { Effect } from "effect"
import type { BatchStoreShape } from "../batches/BatchStore.js"
import { type BatchResultsParams, DEFAULT_RESULT_LINES } from "../domain/BatchResults.js"
import type { BatchId } from "../domain/Ids.js"
import type { Visibility } from "../domain/Projects.js"

/** The header naming the last input line a response holds (0 when it holds none). */
export const LAST_LINE_HEADER = "x-last-line"
/** The header naming the `after` of the next call: it moves on even when a window of the kind holds no line. */
export const NEXT_AFTER_HEADER = "x-next-after"

/** The response for `query` on batch `id` (`BatchNotFound` when `visibility` does not see it). */
export const batchResults = (store: BatchStoreShape) =>
(id: BatchId, visibility: Visibility, query: BatchResultsParams) =>
  Effect.gen(function*() {
    yield* store.get(id, visibility)
    const kind = query.kind === "error" ? "failed" : "succeeded"
    const window = yield* store.settledResults(id, kind, query.after ?? 0, query.limit ?? DEFAULT_RESULT_LINES)
    return HttpServerResponse.uint8Array(window.bytes, {
      contentType: "application/jsonl",
      headers: {
        // Also when 0: the platform sets it only for a body that is not empty (an empty one would go chunked).
        "content-length": String(window.bytes.length),
        [LAST_LINE_HEADER]: String(window.lastLine),
        [NEXT_AFTER_HEADER]: String(window.nextAfter)
      }
    })
  }).pipe(Effect.withSpan("Batches.results", { attributes: { id } }))
