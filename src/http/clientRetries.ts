/**
 * A client's retry of a request whose answer it did not get (a connection cut after the server acted): the OpenAI
 * SDKs count their retries in `x-stainless-retry-count` and send no idempotency key. A delete's retry, within
 * `SDK_RETRY_WINDOW_SECONDS` of the delete that removed its file, is answered as that delete was. (Not a create's: a
 * retry cannot be told from the client's next create of the same batch, refused at first with a 429 or a 503, and
 * answering it with the earlier batch merged the two silently; a create is made safe by its `idempotency_key`.)
 */
import * as HttpServerRequest from "@effect/platform/HttpServerRequest"
import { Effect } from "effect"

/** How long after a delete its retry is answered `deleted: true`: retries after a lost connection come within seconds. */
export const SDK_RETRY_WINDOW_SECONDS = 120

/** Whether the request says it is a client's retry. */
export const resent = Effect.map(HttpServerRequest.HttpServerRequest, (r) => Number(r.headers["x-stainless-retry-count"] ?? 0) >= 1)
