/**
 * Request bodies, bounded. Uploads stream multipart through `FilesHttp` (bounded by `MAX_UPLOAD_BYTES`) and
 * `UploadsHttp` (parts, bounded by 64 MB); every other body is JSON, read whole but never past
 * `MAX_JSON_BODY_BYTES`, with or without `Content-Length`. The
 * platform's own reader has no limit by default (a 600 MB chunked body ended the process building one string), and
 * with a limit it destroys the socket, so the client sees a reset instead of our 413. The JSON bodies a node holds at
 * once are bounded too, and the uploads it receives (`holding.ts`).
 */
import * as HttpApp from "@effect/platform/HttpApp"
import * as HttpServerError from "@effect/platform/HttpServerError"
import * as HttpServerRequest from "@effect/platform/HttpServerRequest"
import * as UrlParams from "@effect/platform/UrlParams"
import { Context, Data, Duration, Effect, Stream } from "effect"
import { IncomingMessage } from "node:http"
import { invalidRequest, payloadTooLarge } from "../domain/Errors.js"
import { jsonMembers, repeatedKey } from "../batches/jsonText.js"
import { isJsonObject, MAX_JSON_DEPTH, nestedDeeperThan } from "../domain/Json.js"
import { answer, envelope } from "./EarlyAnswer.js"
import { type Budget, busy, cutSlowBodies, type Holder, overShare, type Patience, type Taken } from "./holding.js"
import { bodyStream } from "./nodeBody.js"
import { invalidUrl } from "./routeHint.js"
import { requestTarget, routedPath, routeFor } from "./Routes.js"

/**
 * The body does not fit in the node's budget of JSON bodies now (`held`: in its project's share of it, of which the
 * project holds that many bytes).
 */
class BodiesBusy extends Data.TaggedError("BodiesBusy")<{ readonly held: number | undefined }> {}

/**
 * The answer to a body refused by the budget, given as the platform's response-as-defect: whichever reader met it, the
 * platform sends it as it is (the API's error encoder knows no 503; `ErrorEnvelopeLive` lets it through).
 */
const bodiesBusy = (held: number | undefined) =>
  held !== undefined
    ? overShare(`Your project is sending too many request bodies at once (it holds ${held} bytes of them, as much as it may now); try again in a second.`, 1)
    : busy("The server is reading too many request bodies at once; try again in a second.", 1)

/** The body is larger than `limit` bytes. */
export class BodyTooLarge extends Data.TaggedError("BodyTooLarge")<{ readonly limit: number }> {}
/** The body is JSON nested deeper than `MAX_JSON_DEPTH`. */
export class JsonTooDeep extends Data.TaggedError("JsonTooDeep")<{}> {}

/**
 * A JSON body giving a parameter twice: `JSON.parse` keeps the last, while a proxy or a firewall in front may have
 * checked the first (as input lines, `lineValidation.ts`).
 */
export class JsonKeyRepeated extends Data.TaggedError("JsonKeyRepeated")<{ readonly key: string }> {}

/**
 * The request body as a stream that, unlike `request.stream`, does not destroy the socket when we stop reading
 * early (an oversize or invalid body): the rest of the body is then read and dropped (`readAtMost` below;
 * `lingerAfterEarlyAnswers` on the Node server) and the client gets our error response instead of a connection reset.
 */
export const requestBody = (request: HttpServerRequest.HttpServerRequest): Stream.Stream<Uint8Array> =>
  Stream.unwrap(Effect.map(BodyPatience, (patience) => {
    const source = request.source
    const body = source instanceof IncomingMessage
      ? Stream.catchAll(
        bodyStream(source),
        // The client went away mid-body: no one to answer, and no fault of ours (it was logged as one, an error line
        // for every client that gave up on a body), but the platform's client abort (its request line says 499).
        (error) => source.destroyed ? Stream.fromEffect(Effect.interruptWith(HttpServerError.clientAbortFiberId)) : Stream.die(error)
      )
      : Stream.orDie(request.stream)
    return source instanceof IncomingMessage && Duration.isFinite(patience.stall) ? cutSlowBodies(source, patience, body) : body
  }))

/**
 * How long a request body may go without a byte while it is read (`STALL_TIMEOUT`), and the slowest it may come on
 * average (`MIN_BODY_RATE`), in the serving layer's context (`HttpLive`); no limit where it is not. They stand for Node's own limit on a
 * whole request (`requestTimeout`, 5 minutes, which `makeNodeServer` turns off): that one refused an upload still
 * coming after 5 minutes, however steadily.
 */
export class BodyPatience extends Context.Reference<BodyPatience>()("http/BodyPatience", {
  defaultValue: (): Patience => ({ stall: Duration.infinity, minRate: 0 })
}) {}

/** What a request's body holds of the budget: its bytes so far, taken by `holder`. */
interface Held {
  bytes: number
  readonly holder: Holder | undefined
}

/**
 * The whole body, or `BodyTooLarge` as soon as more than `maxBytes` arrived, or `BodiesBusy` as soon as a chunk does
 * not fit in `budget` (what was taken is counted in `held`, given back by `boundBodies`). The rest is then drained
 * unread, so that the client, still sending, gets our 413, 429 or 503 rather than a reset connection.
 */
const readAtMost = (
  request: HttpServerRequest.HttpServerRequest,
  maxBytes: number,
  budget: Budget,
  held: Held
) =>
  Effect.suspend(() => {
    const parts: Array<Uint8Array> = []
    let size = 0
    return Stream.runForEach(requestBody(request), (chunk): Effect.Effect<void, BodyTooLarge | BodiesBusy> => {
      size += chunk.length
      if (size > maxBytes) return Effect.fail(new BodyTooLarge({ limit: maxBytes }))
      const taken = budget.take(chunk.length, held.holder)
      if (taken !== "taken") {
        return Effect.fail(new BodiesBusy({ held: taken === "share" ? budget.heldBy(held.holder) : undefined }))
      }
      held.bytes += chunk.length
      parts.push(chunk)
      return Effect.void
    }).pipe(
      Effect.map(() => Buffer.concat(parts, size)),
      Effect.tapError(() => Effect.sync(() => request.source instanceof IncomingMessage && request.source.resume()))
    )
  })

const strictUtf8 = new TextDecoder("utf-8", { fatal: true })

/**
 * `request` with its body readers (`text`, `json`, `arrayBuffer`, `urlParamsBody`) bounded by `maxBytes`; a body
 * that is not UTF-8, or JSON nested deeper than `MAX_JSON_DEPTH`, is refused rather than decoded with losses or
 * parsed into a value whose error message overflows the stack. Everything else is the request itself.
 */
export const bounded = (
  request: HttpServerRequest.HttpServerRequest,
  maxBytes: number,
  budget: Budget,
  held: Held
) => {
  const refuse = (cause: unknown) => new HttpServerError.RequestError({ request, reason: "Decode", cause })
  const bytes = Effect.runSync(Effect.cached(readAtMost(request, maxBytes, budget, held).pipe(
    Effect.catchTag("BodiesBusy", (busy) => Effect.die(bodiesBusy(busy.held))),
    Effect.mapError(refuse)
  )))
  const text = Effect.flatMap(bytes, (b) => Effect.try({ try: () => strictUtf8.decode(b), catch: refuse }))
  const json = Effect.flatMap(text, (t) =>
    nestedDeeperThan(t, MAX_JSON_DEPTH)
      ? Effect.fail(refuse(new JsonTooDeep()))
      : Effect.flatMap(Effect.try({ try: () => (t === "" ? null : JSON.parse(t)), catch: refuse }), (parsed) => {
        const repeated = isJsonObject(parsed) ? repeatedKey(jsonMembers(t)) : undefined
        return repeated === undefined ? Effect.succeed(parsed) : Effect.fail(refuse(new JsonKeyRepeated({ key: repeated })))
      }))
  const urlParamsBody = Effect.map(text, (t) => UrlParams.fromInput(new URLSearchParams(t)))
  const arrayBuffer = Effect.map(bytes, (b) => b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength) as ArrayBuffer)
  return Object.create(request, {
    text: { value: text },
    json: { value: json },
    urlParamsBody: { value: urlParamsBody },
    arrayBuffer: { value: arrayBuffer }
  }) as HttpServerRequest.HttpServerRequest
}

/** The routes whose body is not JSON: multipart uploads of files and of upload parts, streamed and bounded by their handlers. */
const isUpload = (request: HttpServerRequest.HttpServerRequest) => {
  if (request.method !== "POST") return false
  const path = routedPath(requestTarget(request).path)
  return path === "/v1/files" || /^\/v1\/uploads\/[^/]+\/parts$/.test(path)
}

const hasBody = (request: HttpServerRequest.HttpServerRequest) =>
  request.headers["transfer-encoding"] !== undefined || Number(request.headers["content-length"] ?? 0) > 0

/** A body in a content coding (gzip, br…) rather than as it is: none is decoded here. */
const encoded = (request: HttpServerRequest.HttpServerRequest) => {
  const coding = request.headers["content-encoding"]?.trim().toLowerCase()
  return coding !== undefined && coding !== "" && coding !== "identity"
}

/** A route that reads no body (a cancel), or an empty form where its body may be left out (a rerun). */
const emptyBodyAllowed = (path: string, contentType: string) =>
  /\/cancel\/?$/.test(path) || (/\/retry\/?$/.test(path) && /^application\/x-www-form-urlencoded\s*(;|$)/i.test(contentType))

const isJson = (contentType: string | undefined) =>
  contentType === undefined || /^application\/json\s*(;|$)/i.test(contentType)

/**
 * The answer to an upload beyond `MAX_UPLOADS_AT_ONCE` (or its project's share, of which `holder` holds what it
 * says): before any of its body is read.
 */
const uploadsBusy = (uploads: Budget, taken: Taken, holder: Holder | undefined) =>
  taken === "share"
    ? overShare(`Your project is sending too many uploads at once (it holds ${uploads.heldBy(holder)}, as many as it may now); try again in a few seconds.`, 5)
    : busy(`The server is receiving too many uploads at once (${uploads.limit}); try again in a few seconds.`, 5)

/**
 * Server middleware: no body in a content coding (415), every body but an upload's must be JSON (415 otherwise: a
 * form post from another site cannot reach a JSON endpoint without a preflight) and at most `maxBytes` (413 at once
 * when `Content-Length` says more, else as soon as more arrives), its bytes taken from `bodies` while its request
 * runs; an upload takes one of `uploads` while it runs (503 when none is left). Both taken by the request's `holder`
 * (429 beyond what its project may hold: its share, and of the reserve one request's worth). A body (an upload's too)
 * that stops coming, or comes too slowly, is cut (`BodyPatience`, which the serving layer's context holds).
 */
export const boundBodies = (
  maxBytes: number,
  bodies: Budget,
  uploads: Budget,
  holder: Effect.Effect<Holder | undefined>
) =>
<E, R>(app: HttpApp.Default<E, R>): HttpApp.Default<E, R> =>
  Effect.flatMap(HttpServerRequest.HttpServerRequest, (request) => {
    const bodyless = !hasBody(request)
    if (!bodyless && encoded(request)) {
      // Read as it came, a gzipped upload was stored as its compressed bytes, and a gzipped JSON body said "not JSON".
      return answer(request, envelope(
        invalidRequest("Compressed request bodies are not supported: send it without Content-Encoding.", null, "unsupported_media_type"),
        415,
        { "accept-encoding": "identity" }
      ))
    }
    if (isUpload(request)) {
      // Taken and given back in one bracket: an interruption between the two leaves nothing held.
      return Effect.flatMap(holder, (by) =>
        Effect.acquireUseRelease(
          Effect.sync(() => uploads.take(1, by)),
          (taken) => taken === "taken" ? app : answer(request, uploadsBusy(uploads, taken, by)),
          (taken) => Effect.sync(() => taken === "taken" && uploads.give(1, by))
        ))
    }
    // An empty POST body still picks the route's decoder by its type: an empty multipart one failed (a 500) or
    // waited for ever for its boundary, and an empty form was read as `{}`. Not on a cancel, which reads no body, nor
    // an empty form on a rerun, whose body may be left out and whose `{}` is its defaults: `curl -X POST … -d ''`.
    const typedEmptyPost = bodyless && request.method === "POST" && request.headers["content-type"] !== undefined &&
      !emptyBodyAllowed(requestTarget(request).path, request.headers["content-type"])
    if (bodyless && !typedEmptyPost) return app
    if (!isJson(request.headers["content-type"])) {
      // No route for the method there: its 404, as a JSON body gets (an upload to `/files`, a base URL without `/v1`,
      // a form posted to `/v1/files/file-abc`, had said "must be JSON"). A JSON body goes on to the router, which may
      // hold an app's own routes.
      if (routeFor(request.method, routedPath(requestTarget(request).path)) === undefined) {
        return answer(request, envelope(invalidUrl(request), 404))
      }
      return answer(request, envelope(
        invalidRequest("Request bodies must be JSON (Content-Type: application/json).", null, "unsupported_media_type"),
        415
      ))
    }
    if (bodyless) return app
    if (Number(request.headers["content-length"] ?? 0) > maxBytes) {
      return answer(request, envelope(tooLarge(maxBytes), 413))
    }
    return Effect.flatMap(holder, (by) => {
      const held: Held = { bytes: 0, holder: by }
      return Effect.provideService(app, HttpServerRequest.HttpServerRequest, bounded(request, maxBytes, bodies, held)).pipe(
        Effect.ensuring(Effect.sync(() => bodies.give(held.bytes, by)))
      )
    })
  })

/** The 413 of a JSON body over the limit. */
export const tooLarge = (maxBytes: number) =>
  payloadTooLarge(`The request body is larger than the maximum of ${maxBytes} bytes.`, null, "request_too_large")
