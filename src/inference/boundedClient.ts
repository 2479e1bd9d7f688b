/**
 * The limits `UpstreamHttpClient` holds its own calls to, put around an `HttpClient` of an app's own
 * (`InferenceOverHttpClient`): an attempt that has not answered in full (headers and body) within `timeoutMs` fails
 * as a timeout, and an answer announcing or passing `maxBodyBytes` is refused as too large, its body read no
 * further. Without them a client that hangs held its batch until expiry, and a huge answer was stored.
 */
import * as HttpClient from "@effect/platform/HttpClient"
import type * as HttpClientError from "@effect/platform/HttpClientError"
import type * as HttpClientRequest from "@effect/platform/HttpClientRequest"
import type * as HttpClientResponse from "@effect/platform/HttpClientResponse"
import { Duration, Effect, FiberRef, Stream } from "effect"
import { BufferedResponse } from "./bufferedResponse.js"
import { callFailure, currentRequestWritten } from "./upstreamCall.js"

export interface Bounds {
  /** Time limit of one attempt: from sending the request to the last byte of the answer. */
  readonly timeoutMs: number
  /** Largest answer body read. */
  readonly maxBodyBytes: number
}

/** The whole body of `response`, or a "too_large" failure as soon as it announces or passes `maxBodyBytes`. */
const readWhole = (
  request: HttpClientRequest.HttpClientRequest,
  response: HttpClientResponse.HttpClientResponse,
  maxBodyBytes: number
): Effect.Effect<HttpClientResponse.HttpClientResponse, HttpClientError.HttpClientError> =>
  Effect.suspend(() => {
    const tooLarge = () => callFailure(request, "too_large", `The upstream's answer is larger than ${maxBodyBytes} bytes`)
    if (Number(response.headers["content-length"] ?? 0) > maxBodyBytes) return Effect.fail(tooLarge())
    const chunks: Array<Uint8Array> = []
    let received = 0
    return response.stream.pipe(
      Stream.runForEach((chunk) => {
        received += chunk.length
        if (received > maxBodyBytes) return Effect.fail(tooLarge())
        chunks.push(chunk)
        return Effect.void
      }),
      Effect.map(() => new BufferedResponse(request, response.status, response.headers, Buffer.concat(chunks, received)))
    )
  })

/**
 * `http` with each call held to `bounds`; its failures carry the kind `failureKind` reads. A call is said written
 * (`currentRequestWritten`) as it is handed to `http`, which cannot say when it writes it: without that, the
 * load-aware dispatch counted every call until its end on top of each reading, and held an upstream to `max_waiting`
 * calls in flight, its queue empty.
 */
export const bounded = (http: HttpClient.HttpClient, bounds: Bounds): HttpClient.HttpClient =>
  HttpClient.makeWith<never, never, HttpClientError.HttpClientError, never>(
    Effect.flatMap((request) =>
      FiberRef.get(currentRequestWritten).pipe(
        Effect.flatMap((written) => {
          written?.()
          return http.execute(request)
        }),
        Effect.flatMap((response) => readWhole(request, response, bounds.maxBodyBytes)),
        Effect.timeoutFail({
          duration: Duration.millis(bounds.timeoutMs),
          onTimeout: () => callFailure(request, "timeout", `The upstream did not answer in full within ${bounds.timeoutMs} ms`)
        })
      )
    ),
    Effect.succeed
  )
