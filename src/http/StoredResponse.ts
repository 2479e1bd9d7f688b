import * as HttpServerResponse from "@effect/platform/HttpServerResponse"

/** The JSON bytes of each stored object or page sent, for as long as it lives. */
const bodies = new WeakMap<object, Uint8Array>()
const encoder = new TextEncoder()

/**
 * A response object built from rows that their schema has already decoded, sent as it is: it is in the wire shape
 * already, and the endpoint's encoder (one more pass over every field) was the largest part of a read's cost. For
 * the reads clients poll; test/StoredResponse.test.ts checks that the bytes equal the encoder's.
 *
 * `source` is what the store gave (a batch, a file, a page): the same object for a read repeated before any commit
 * (`sharedPerRows`), so its JSON is written once for all the polls that ask for it meanwhile; `value` makes the
 * object sent from it (the source itself by default).
 */
export const storedJson = (source: object, value: () => object = () => source) => {
  let body = bodies.get(source)
  if (body === undefined) {
    body = encoder.encode(JSON.stringify(value()))
    bodies.set(source, body)
  }
  return HttpServerResponse.uint8Array(body, { contentType: "application/json" })
}
