/**
 * The `HttpClient` the Inference layer talks to the upstream with: an `@effect/platform` `HttpClient` built with
 * `HttpClient.makeWith` directly on undici's `dispatch` API, answering with the whole body already read.
 *
 * Why `dispatch` and not `NodeHttpClient.layerUndici` (or undici's `request()`): those add per call an
 * `AbortController`, a body `Readable` and promises, and the platform a span, a `FinalizationRegistry` entry and a
 * cached body effect. Here a call is one `Effect.async` and one small handler object, in undici's classic
 * `onConnect`/`onRequestSent`/`onHeaders`/`onData`/`onComplete`/`onError` form, which it runs without the wrapper
 * it puts around the newer `onRequestStart`… form. Measured (2 shared cores, the simulator in another process,
 * 50,000 POSTs at concurrency 32, alternating runs; calls/s and this process's CPU per call): at no latency this client
 * 6.6–7.8k/s (122–148 µs), `request()` without Effect 6.3–6.6k/s (146–155 µs), `layerUndici` 2.2–2.6k/s
 * (417–498 µs), the hand-written HTTP/1.1 client it replaced 7.3–8.6k/s (88–106 µs); at 20 ms latency all are
 * bound by it (1.3–1.46k/s), at 177–208 µs per call here, 109–134 for the old client.
 *
 * Time: `timeoutMs` bounds a whole attempt, from dispatch to the answer's last byte, so an upstream trickling its
 * body cannot hold a call longer than a silent one (undici's own headers/body timeouts are idle timers; they are
 * turned off per request). One interval timer per client sweeps the calls in flight, and runs only while there are
 * some. An answer is refused (its connection closed) as soon as it passes `maxBodyBytes`, or announces more.
 *
 * Memory: a large answer reserves its bytes in the node's `AnswerMemory` before its body is read; while it waits
 * for room, its connection is paused and its time limit stopped (the wait is this node's, not the upstream's).
 *
 * Proxies: `dispatcher` is undici's `EnvHttpProxyAgent` (`HTTP_PROXY`, `HTTPS_PROXY`, `NO_PROXY`, lower-case too)
 * when a proxy variable is set: `http:` calls go to the proxy in absolute form, `https:` ones through a `CONNECT`
 * tunnel. With none set it is a plain `Agent`: `EnvHttpProxyAgent` would still parse each call's origin as a URL and
 * read `NO_PROXY` from the environment (~3 µs) before handing the call to an `Agent` like it.
 */
import * as Headers from "@effect/platform/Headers"
import * as HttpClient from "@effect/platform/HttpClient"
import * as HttpClientError from "@effect/platform/HttpClientError"
import type * as HttpClientRequest from "@effect/platform/HttpClientRequest"
import * as HttpClientResponse from "@effect/platform/HttpClientResponse"
import * as UrlParams from "@effect/platform/UrlParams"
import { type ConfigError, Effect, Either, Layer, Option, type Scope } from "effect"
import { Agent, type Dispatcher, EnvHttpProxyAgent } from "undici"
import { currentAnswerHold } from "./answerMemory.js"
import { proxiesOf, proxyProblem } from "./proxies.js"
import { Call, type ClientOptions, currentRequestWritten, type Limits } from "./upstreamCall.js"

/**
 * The client's options, how its errors tell what failed, and how a caller learns its request is written (each call
 * is an `upstreamCall.ts` `Call`).
 */
export { type ClientOptions, currentRequestWritten, type FailureKind, failureKind } from "./upstreamCall.js"

/** The body as undici takes it; `undefined` for one this client does not send (a stream, form data). */
const requestBody = (body: HttpClientRequest.HttpClientRequest["body"]): string | Uint8Array | null | undefined =>
  body._tag === "Empty" ? null : body._tag === "Uint8Array" ? body.body
  : body._tag === "Raw" && (typeof body.body === "string" || body.body instanceof Uint8Array) ? body.body
  : undefined

/** Where a request goes, parsed once per URL for the usual request without query parameters or hash. */
type Target = Either.Either<{ readonly origin: string; readonly path: string }, Error>
const targetOf = (url: URL) => ({ origin: url.origin, path: url.pathname + url.search })

/** Request headers as undici's flat list, once per headers object (a list: `ProxyAgent` adds `host` to objects). */
const headerLists = new WeakMap<Headers.Headers, Array<string>>()
const headerList = (headers: Headers.Headers): Array<string> => {
  let list = headerLists.get(headers)
  if (list === undefined) {
    list = []
    for (const name in headers) list.push(name, headers[name]!)
    headerLists.set(headers, list)
  }
  return list
}

/** An `HttpClient` over `dispatcher` with these limits (several clients may share one dispatcher). */
export const make = (dispatcher: Dispatcher, options: ClientOptions): HttpClient.HttpClient => {
  // A sweep looks at every call: one that waited for answer memory is back with the time it had left, out of the
  // order the others came in. The timer runs only while calls are in flight.
  let timer: NodeJS.Timeout | undefined
  const sweep = () => {
    const now = performance.now()
    for (const call of inflight) {
      if (call.deadline <= now) call.timeout()
    }
    if (inflight.size === 0) {
      clearInterval(timer)
      timer = undefined
    }
  }
  const period = Math.min(1000, Math.max(10, options.timeoutMs / 4))
  const inflight = new Set<Call>()
  const track = (call: Call) => {
    inflight.add(call)
    if (timer === undefined) (timer = setInterval(sweep, period)).unref()
  }
  // Named in a failed call's text when it may be the proxy's failure (`connectionHints.ts`).
  const proxies = dispatcher instanceof EnvHttpProxyAgent ? proxiesOf(process.env) : undefined
  const limits: Limits = { ...options, inflight, track, proxies }

  const targets = new Map<string, Target>()
  const target = (request: HttpClientRequest.HttpClientRequest): Target => {
    const plain = request.urlParams.length === 0 && Option.isNone(request.hash)
    const known = plain ? targets.get(request.url) : undefined
    if (known !== undefined) return known
    const parsed = Either.map(UrlParams.makeUrl(request.url, request.urlParams, request.hash), targetOf)
    if (plain && targets.size < 64) targets.set(request.url, parsed)
    return parsed
  }

  return HttpClient.makeWith<never, never, HttpClientError.HttpClientError, never>(
    Effect.flatMap((request) => {
      const url = target(request)
      const body = requestBody(request.body)
      if (url._tag === "Left" || body === undefined) {
        const [reason, description] = url._tag === "Left"
          ? ["InvalidUrl", url.left.message] as const
          : ["Encode", `unsupported request body ${request.body._tag}`] as const
        return Effect.fail(new HttpClientError.RequestError({ request, reason, description }))
      }
      return Effect.withFiberRuntime<HttpClientResponse.HttpClientResponse, HttpClientError.HttpClientError>((fiber) =>
        Effect.async<HttpClientResponse.HttpClientResponse, HttpClientError.HttpClientError>((resume) => {
          const call = new Call(limits, request, resume, fiber.getFiberRef(currentAnswerHold), fiber.getFiberRef(currentRequestWritten))
          const { origin, path } = url.right
          const headers = headerList(request.headers)
          try { // no idle timeouts (0): the sweep's deadline bounds the whole attempt instead
            dispatcher.dispatch({ origin, path, method: request.method, headers, body, headersTimeout: 0, bodyTimeout: 0 }, call)
          } catch (error) {
            call.onError(error as Error)
          }
          return Effect.sync(() => call.interrupt())
        }))
    }),
    Effect.succeed
  )
}

/**
 * The shared dispatcher, keep-alive (undici's defaults: idle connections kept 4 s, or as the server's `keep-alive`
 * says less 1 s): `EnvHttpProxyAgent` when a proxy variable is set, else `Agent`. Destroyed when the scope closes.
 * Fails when a proxy variable is not one undici can use (`proxyProblem`).
 */
export const dispatcher: Effect.Effect<Dispatcher, ConfigError.ConfigError, Scope.Scope> = Effect.suspend(() => {
  const problem = proxyProblem(process.env)
  if (problem !== undefined) return Effect.fail(problem)
  return Effect.acquireRelease(
    Effect.sync((): Dispatcher =>
      proxiesOf(process.env) !== undefined
        ? new EnvHttpProxyAgent({ proxyTunnel: false }) // plain `http:` calls in absolute form, as curl sends them
        : new Agent()
    ),
    (dispatcher) => Effect.promise(() => dispatcher.destroy())
  )
})

/** `dispatcher` and `make`, as a layer. */
export const layer = (options: ClientOptions): Layer.Layer<HttpClient.HttpClient, ConfigError.ConfigError> =>
  Layer.scoped(HttpClient.HttpClient, Effect.map(dispatcher, (d) => make(d, options)))
