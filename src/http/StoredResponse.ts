import type * as HttpServerRequest from "@effect/platform/HttpServerRequest"
import * as HttpServerResponse from "@effect/platform/HttpServerResponse"
import { type Duration, Effect, type Scope } from "effect"
import { LIST_PAGE_BYTES, listPage } from "../domain/List.js"
import { type Budget, busy, cutWhenStalled, holdUntilAnswered, type Holder, inPieces, overShare, PIECE_BYTES } from "./holding.js"

/** The JSON bytes of each stored object or page sent, for as long as it lives. */
const bodies = new WeakMap<object, Uint8Array>()
const encoder = new TextEncoder()

/**
 * A response object built from rows that their schema has already decoded, sent as it is: it is in the wire shape
 * already, and the endpoint's encoder (one more pass over every field) was the largest part of a read's cost. For
 * the reads clients poll; test/StoredResponse.test.ts checks that the bytes equal the encoder's.
 *
 * `source` is what the store gave (a batch, a file): the same object for a read repeated before any commit
 * (`sharedPerRows`), so its JSON is written once for all the polls that ask for it meanwhile.
 */
export const storedJson = (source: object) => {
  let body = bodies.get(source)
  if (body === undefined) {
    body = encoder.encode(JSON.stringify(source))
    bodies.set(source, body)
  }
  return HttpServerResponse.uint8Array(body, { contentType: "application/json" })
}

/**
 * List pages larger than a piece that each list (batches, files) holds at once, from their answer's start until
 * their client has taken them.
 */
export const LARGE_PAGES_AT_ONCE = 16

/** What a page takes besides its objects: its other fields, two ids of at most 64 characters, at most. */
const PAGE_FRAME_BYTES = 256

/** A page of stored objects as the store gave it (the same object for a read repeated before any commit). */
export interface StoredPage {
  readonly data: ReadonlyArray<{ readonly id: string }>
  readonly hasMore: boolean
}

/**
 * The JSON of an OpenAI list page of `page`'s objects, as the list's class encodes it (`object`, `data`, `first_id`,
 * `last_id`, `has_more`), ended at `LIST_PAGE_BYTES`; written once per page.
 */
export const storedPageBytes = (page: StoredPage): Uint8Array => {
  let body = bodies.get(page)
  if (body === undefined) {
    const parts: Array<string> = []
    let bytes = PAGE_FRAME_BYTES
    for (const item of page.data) {
      const json = JSON.stringify(item)
      const size = Buffer.byteLength(json) + 1
      if (parts.length > 0 && bytes + size > LIST_PAGE_BYTES) break
      parts.push(json)
      bytes += size
    }
    const { first_id, has_more, last_id } = listPage(page.data.slice(0, parts.length), page.hasMore || parts.length < page.data.length)
    body = encoder.encode(
      `{"object":"list","data":[${parts.join(",")}],"first_id":${JSON.stringify(first_id)},"last_id":${JSON.stringify(last_id)},"has_more":${has_more}}`
    )
    bodies.set(page, body)
  }
  return body
}

/**
 * The answer of a list page. One of a piece or less is sent at once; a larger one holds one of `pages` (taken by
 * the request's `holder`: a 503, or a 429 past its project's share, when none is left) until it has left, and goes
 * in pieces, its connection closed once its client has taken none of it for `stall`.
 */
export const listAnswer = (pages: Budget, stall: Duration.Duration, holder: Effect.Effect<Holder | undefined>) =>
(page: StoredPage): Effect.Effect<HttpServerResponse.HttpServerResponse, never, HttpServerRequest.HttpServerRequest | Scope.Scope> => {
  const body = storedPageBytes(page)
  if (body.length <= PIECE_BYTES) return Effect.succeed(HttpServerResponse.uint8Array(body, { contentType: "application/json" }))
  return Effect.gen(function*() {
    const by = yield* holder
    const taken = yield* holdUntilAnswered(pages, by)
    if (taken === "share") {
      return overShare(`Your project is reading too many large list pages at once (it holds ${pages.heldBy(by)}, as many as it may now); try again in a second, or ask for fewer with 'limit'.`, 1)
    }
    if (taken === "full") return busy(`Too many large list pages are being sent at once (${pages.limit}); try again in a second.`, 1)
    return HttpServerResponse.stream(yield* cutWhenStalled(stall, inPieces(body)), {
      contentType: "application/json",
      headers: { "content-length": String(body.length) }
    })
  })
}
