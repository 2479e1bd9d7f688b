/**
 * The handler of `GET /v1/batches/{id}/results` (an extension: results while a batch runs), in the `batches` group:
 * a window of the output or error file's lines (`BatchStore.settledResults`, see `batches/partialResults.ts`), read
 * whole before the answer (one page, bounded), sent with its length, the last input line it holds in
 * `x-last-line` and where to go on from in `x-next-after`. A read that fails is an error status, never a 200 cut
 * short that a poller would take for the whole window.
 *
 * A page stays in memory until its client has taken it all, so a client that reads slowly, or not at all, holds
 * it: sixty that never read took the server from 550 MB to 1.4 GB in 40 s with 30 MB answers, and more would have
 * ended the process. So a node holds at most `RESULT_PAGES_AT_ONCE` pages, from before their read until their
 * answer has left, and a client that takes none of its page for `STALL_TIMEOUT` loses its connection and
 * the page. A request waits twice that long for a page's turn (a page whose client stopped reading is let go within
 * one), then gets a 503 with `Retry-After`: the pages are held by clients that are reading, slowly.
 */
import * as HttpServerResponse from "@effect/platform/HttpServerResponse"
import { Chunk, Deferred, Duration, Effect, Exit, Fiber, Option, Stream } from "effect"
import type { BatchStoreShape } from "../batches/BatchStore.js"
import { type BatchResultsParams, DEFAULT_RESULT_LINES } from "../domain/BatchResults.js"
import type { BatchId } from "../domain/Ids.js"
import type { Visibility } from "../domain/Projects.js"
import { busy, cutWhenStalled, onceAnswered } from "./holding.js"

/** The header naming the last input line a response holds (0 when it holds none). */
export const LAST_LINE_HEADER = "x-last-line"
/** The header naming the `after` of the next call: it moves on even when a window of the kind holds no line. */
export const NEXT_AFTER_HEADER = "x-next-after"

/** A page is written in pieces of this size, so that a slow but steady reader shows progress (`cutWhenStalled`). */
const PIECE_BYTES = 64 * 1024

/** The pages a node holds at once (`RESULT_PAGES_AT_ONCE`), and how long their clients may stall. */
export interface ResultPages {
  readonly permits: Effect.Semaphore
  readonly atOnce: number
  readonly stallTimeout: Duration.Duration
}

export const makeResultPages = (atOnce: number, stallTimeout: Duration.Duration) =>
  Effect.map(Effect.makeSemaphore(atOnce), (permits): ResultPages => ({ permits, atOnce, stallTimeout }))

/** Waiting for a page's turn gave up. */
const pagesBusy = (pages: ResultPages) =>
  busy(`Too many result pages are being sent at once (${pages.atOnce}); try again in a second.`, 1)

/**
 * Runs `page` holding one of `pages` until its answer has been sent or its connection closed (`onceAnswered`). Waits
 * at most twice the stall timeout for it, then answers the 503 instead. The permit is held by a fiber of its own,
 * which outlives the handler's: it is released however the request ends.
 */
const holdingPage = <E, R>(pages: ResultPages, page: Effect.Effect<HttpServerResponse.HttpServerResponse, E, R>) =>
  Effect.gen(function*() {
    const taken = yield* Deferred.make<void>()
    const sent = yield* Deferred.make<void>()
    // Its end in place before the holder starts: an interruption in between leaves no permit held for ever.
    yield* onceAnswered(() => Deferred.unsafeDone(sent, Exit.void))
    const holder = yield* Effect.forkDaemon(
      pages.permits.withPermits(1)(Effect.zipRight(Deferred.succeed(taken, undefined), Deferred.await(sent)))
    )
    if (Option.isNone(yield* Effect.timeoutOption(Deferred.await(taken), Duration.times(pages.stallTimeout, 2)))) {
      yield* Fiber.interrupt(holder)
      return pagesBusy(pages)
    }
    return yield* page
  }).pipe(Effect.scoped)

/** `bytes` in `PIECE_BYTES` pieces (views, not copies), one per stream chunk so that each waits for the last. */
const inPieces = (bytes: Uint8Array) =>
  Stream.fromChunks(
    ...Array.from(
      { length: Math.ceil(bytes.length / PIECE_BYTES) },
      (_, i) => Chunk.of(bytes.subarray(i * PIECE_BYTES, (i + 1) * PIECE_BYTES))
    )
  )

/** The response for `query` on batch `id` (`BatchNotFound` when `visibility` does not see it). */
export const batchResults = (store: BatchStoreShape, pages: ResultPages) =>
(id: BatchId, visibility: Visibility, query: BatchResultsParams) =>
  Effect.gen(function*() {
    yield* store.get(id, visibility)
    const kind = query.kind === "error" ? "failed" : "succeeded"
    return yield* holdingPage(
      pages,
      Effect.flatMap(store.settledResults(id, kind, query.after ?? 0, query.limit ?? DEFAULT_RESULT_LINES), (window) =>
        Effect.map(cutWhenStalled(pages.stallTimeout, inPieces(window.bytes)), (body) =>
          HttpServerResponse.stream(body, {
          contentType: "application/jsonl",
          headers: {
            // A stream's length is not known to the platform: given, the answer is not chunked (also when empty).
            "content-length": String(window.bytes.length),
            [LAST_LINE_HEADER]: String(window.lastLine),
            [NEXT_AFTER_HEADER]: String(window.nextAfter)
          }
        })))
    )
  }).pipe(Effect.withSpan("Batches.results", { attributes: { id } }))
