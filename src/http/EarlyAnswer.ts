/**
 * Answers a server middleware gives instead of the app (a refused Host, key, origin, body…): OpenAI error
 * envelopes, with the headers every answer carries.
 */
import * as HttpApp from "@effect/platform/HttpApp"
import type * as HttpServerRequest from "@effect/platform/HttpServerRequest"
import * as HttpServerResponse from "@effect/platform/HttpServerResponse"
import { Effect, FiberRef, Option } from "effect"
import type { ApiError, ErrorBody } from "../domain/Errors.js"

/** `error` as a response with `status`, in the envelope the API's own encoder writes. */
export const envelope = (
  error: ApiError | { readonly error: ErrorBody },
  status: number,
  headers: Record<string, string> = {}
) => HttpServerResponse.unsafeJson({ error: error.error }, { status, headers })

/**
 * `response` given by a middleware instead of the app, with the pre-response handlers registered so far applied
 * (`sdkHeaders`' `x-request-id`, the CORS headers): the platform applies them only to what the app it wraps returns.
 */
export const answer = (request: HttpServerRequest.HttpServerRequest, response: HttpServerResponse.HttpServerResponse) =>
  Effect.flatMap(FiberRef.get(HttpApp.currentPreResponseHandlers), (handler) =>
    Option.isNone(handler)
      ? Effect.succeed(response)
      : Effect.orElseSucceed(handler.value(request, response), () => response))
