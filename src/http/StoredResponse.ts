import * as HttpServerResponse from "@effect/platform/HttpServerResponse"

/**
 * A response object built from rows that their schema has already decoded, sent as it is: it is in the wire shape
 * already, and the endpoint's encoder (one more pass over every field) was the largest part of a read's cost. For
 * the reads clients poll; test/StoredResponse.test.ts checks that the bytes equal the encoder's.
 */
export const storedJson = (value: object) => HttpServerResponse.unsafeJson(value)
