/**
 * A client's retry of a request whose answer it did not get (a connection cut after the server acted): the OpenAI
 * SDKs count their retries in `x-stainless-retry-count` and send no idempotency key. Such a retry is answered as its
 * first attempt was, within `SDK_RETRY_WINDOW_SECONDS` (`batches/BatchCommands.ts`): the batch it made, the file
 * it deleted.
 */
import * as HttpServerRequest from "@effect/platform/HttpServerRequest"
import { Effect } from "effect"

/** Whether the request says it is a client's retry. */
export const resent = Effect.map(HttpServerRequest.HttpServerRequest, (r) => Number(r.headers["x-stainless-retry-count"] ?? 0) >= 1)
