/**
 * Cross-cutting HTTP behaviour: every failure leaves in the OpenAI envelope, and every response carries the headers
 * the SDKs read (`x-request-id`; `x-should-retry: false` on a 409 so a conflict is not retried, and on a 429 that
 * names no `Retry-After`: a limit on what a project holds, `MAX_ACTIVE_BATCHES_PER_PROJECT`'s, does not pass in a second).
 */
import * as HttpApiBuilder from "@effect/platform/HttpApiBuilder"
import * as HttpApiError from "@effect/platform/HttpApiError"
import * as HttpApp from "@effect/platform/HttpApp"
import * as HttpServerError from "@effect/platform/HttpServerError"
import * as HttpServerResponse from "@effect/platform/HttpServerResponse"
import { Cause, Effect, FiberRef, Option } from "effect"
import { type ApiError, databaseUnavailable, insufficientStorage, invalidRequest, payloadTooLarge, serverError, storageNotWritable } from "../domain/Errors.js"
import { echo } from "../domain/Text.js"
import { saidWithin } from "../observability/saidWithin.js"
import { faultWords, privilegeMissing, storageFault } from "../storage/Faults.js"
import { OpenAIApi } from "./Api.js"
import type { MultipartInvalid } from "./Multipart.js"
import { MAX_JSON_DEPTH } from "../domain/Json.js"
import { BodyTooLarge, JsonKeyRepeated, JsonTooDeep, tooLarge } from "./RequestBody.js"
import { currentRequest, requestIdFrom } from "./RequestLog.js"
import { invalidUrl } from "./routeHint.js"
import { fromDecodeError } from "../domain/decodeErrors.js"

/** A bad multipart body: a size limit is a 413, anything else a 400. */
export const fromMultipartInvalid = (e: MultipartInvalid): ApiError => {
  if (e.reason === "NotMultipart") {
    return invalidRequest("The body must be multipart/form-data with a boundary.", null, "invalid_content_type")
  }
  switch (e.limit) {
    case "MaxTotalSize":
    case "MaxPartSize":
      return payloadTooLarge("The upload is larger than this server accepts.", "file")
    case "MaxFieldSize":
      return invalidRequest("A form field of the upload is too large.", null, "field_too_large")
    case "MaxParts":
      return invalidRequest("The upload has too many parts.", null, "too_many_parts")
    default:
      return invalidRequest(`The multipart/form-data body could not be parsed: ${MULTIPART_FAULTS[e.reason] ?? e.reason}.`, null, "invalid_multipart")
  }
}

/** What each of the parser's faults means for whoever wrote the body (a hand-made client: the SDKs make none). */
const MULTIPART_FAULTS: Partial<Record<MultipartInvalid["reason"], string>> = {
  InvalidBoundary: "the Content-Type's boundary parameter is missing or not a valid boundary",
  BadHeaders: "a part's headers could not be read (each header line ends with CRLF, and an empty line ends them)",
  InvalidDisposition: "a part's Content-Disposition could not be read (form-data, a name, each parameter once)",
  EndNotReached: "it ended before its closing delimiter (--boundary--): cut short, or the boundary in the body is " +
    "not the Content-Type's"
}

/** A body that could not be read: too large (413), too deep, not JSON or giving a parameter twice (400). */
const fromRequestError = (e: HttpServerError.RequestError): ApiError => {
  if (e.cause instanceof BodyTooLarge) return tooLarge(e.cause.limit)
  if (e.cause instanceof JsonKeyRepeated) {
    const key = echo(e.cause.key, 64)
    return invalidRequest(`The request body gives '${key}' more than once: send each parameter once.`, key, "invalid_body")
  }
  const message = e.cause instanceof JsonTooDeep
    ? `The JSON body is nested more than ${MAX_JSON_DEPTH} levels deep.`
    : "We could not parse the body of your request. Send valid JSON in UTF-8 (or multipart/form-data for uploads)."
  return invalidRequest(message, null, "invalid_body")
}

/** Framework failures that are client mistakes or real faults, as OpenAI errors; typed API errors pass through. */
const toApiError = (cause: Cause.Cause<unknown>): Option.Option<ApiError> => {
  const failure = Cause.failureOption(cause)
  if (Option.isSome(failure)) {
    const e = failure.value
    if (e instanceof HttpApiError.HttpApiDecodeError) return Option.some(fromDecodeError(e))
    if (HttpServerError.isServerError(e) && e._tag === "RouteNotFound") return Option.some(invalidUrl(e.request))
    return Option.none()
  }
  const defect = Cause.dieOption(cause)
  if (Option.isSome(defect)) {
    const d = defect.value
    if (HttpServerResponse.isServerResponse(d)) return Option.none() // an answer given as is (`RequestBody.ts`)
    if (HttpServerError.isServerError(d) && d._tag === "RequestError") return Option.some(fromRequestError(d))
    // A full disk or database, or a database out of reach, is the server's fault too, but one that passes: a 507
    // or a 503 (with `Retry-After`, see `sdkHeaders`) tells the client to retry later.
    const storage = storageFault(cause)
    return Option.some(
      storage === "capacity"
        ? insufficientStorage()
        : storage === "unavailable"
        ? databaseUnavailable()
        : storage === "refused" || privilegeMissing(cause)
        ? storageNotWritable()
        : serverError()
    )
  }
  return Option.none() // interruption: nothing to answer
}

/** A full or unreachable store is said at most this often: every request meets it (readiness says when it is back). */
const STORAGE_SAID_EVERY_MS = 10_000

/** API-wide middleware: runs before error encoding, so what it fails with is encoded as an envelope. */
export const ErrorEnvelopeLive = HttpApiBuilder.middleware(OpenAIApi, (app) => {
  const due = saidWithin()
  /**
   * A storage fault's warning, at most every `STORAGE_SAID_EVERY_MS` for each kind, with what the driver said (the
   * wrapper's "Failed to execute statement" hid "database is locked").
   */
  const storageWarning = (kind: string, cause: Cause.Cause<unknown>, line: string) =>
    Effect.clockWith((clock) => {
      if (!due(kind, clock.unsafeCurrentTimeMillis(), STORAGE_SAID_EVERY_MS)) return Effect.void
      return Effect.logWarning(`${line} (${echo(faultWords(storageFault(cause), cause), 300)})`)
    })
  const said = (error: ApiError, cause: Cause.Cause<unknown>) => {
    switch (error._tag) {
      case "ServerError":
        return Effect.annotateLogs(Effect.logError("Unhandled fault while serving a request", cause), "event", "http.fault")
      case "InsufficientStorage":
        return storageWarning(error._tag, cause, "Storage full: requests that write get a 507 until there is room")
      case "ServiceUnavailable":
        return error.error.code === "storage_unavailable"
          ? storageWarning("refused", cause, "Storage refuses the server (read-only, or permissions): requests that meet it get a 503 until it is put right")
          : storageWarning(error._tag, cause, "The database is unavailable: requests get a 503 until it answers again")
      default:
        return Effect.void
    }
  }
  return Effect.catchAllCause(app, (cause) =>
    Option.match(toApiError(cause), {
      onNone: () => Effect.failCause(cause),
      onSome: (error) => Effect.zipRight(said(error, cause), Effect.fail(error))
    }))
})

const STORAGE_RETRY_AFTER_SECONDS = "5"

/**
 * Server-level middleware: response headers the OpenAI SDKs rely on. The wrapped app has already written its
 * response when it returns, so the headers go in through a pre-response handler. The `x-request-id` is the one
 * `requestLog` chose (the caller's own when it sent a sane one), so a response can be found in the logs.
 */
export const sdkHeaders = <E, R>(app: HttpApp.Default<E, R>): HttpApp.Default<E, R> =>
  Effect.zipRight(
    HttpApp.appendPreResponseHandler((request, response) =>
      Effect.map(FiberRef.get(currentRequest), (info) => {
        const id = info?.id ?? requestIdFrom(request.headers["x-request-id"])
        // nosniff: a file's content (anyone's bytes) is never run as a script or page by a browser that fetches it.
        const withId = HttpServerResponse.setHeaders(response, { "x-request-id": id, "x-content-type-options": "nosniff" })
        if (response.status === 409) return HttpServerResponse.setHeader(withId, "x-should-retry", "false")
        // A rate's 429 says when to try again and is retried; one saying nothing (too many batches not finished) the
        // SDKs would retry twice in vain, as they do any 429.
        if (response.status === 429 && response.headers["retry-after"] === undefined) {
          return HttpServerResponse.setHeader(withId, "x-should-retry", "false")
        }
        // A full or unreachable store passes: when to try again (the budgets' 503s say their own).
        if ((response.status === 503 || response.status === 507) && response.headers["retry-after"] === undefined) {
          return HttpServerResponse.setHeader(withId, "retry-after", STORAGE_RETRY_AFTER_SECONDS)
        }
        return withId
      })
    ),
    app
  )
