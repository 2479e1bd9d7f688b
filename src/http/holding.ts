/**
 * What the server holds for its clients, bounded: a `Budget` of what a node holds at once (the bytes of JSON bodies,
 * uploads, downloads), given back once an answer has left (`onceAnswered`), and the connection of a client that
 * stopped taking its answer cut (`cutWhenStalled`). Each body and answer is bounded on its own; what bounds how
 * many are held at once is here. Measured without these bounds: 400 clients that each sent 1 MiB of JSON but its
 * last byte took a server from 101 to 527 MB, 200 stalled uploads to PostgreSQL from 104 to 273 MB, 200 downloads
 * whose clients stopped reading from 133 to 1,050 MB (368 MB once they read one piece ahead), and more would have
 * ended it.
 */
import * as HttpServerRequest from "@effect/platform/HttpServerRequest"
import * as NodeHttpServerRequest from "@effect/platform-node/NodeHttpServerRequest"
import { Duration, Effect, type Scope } from "effect"
import { IncomingMessage, type ServerResponse } from "node:http"
import { serviceUnavailable } from "../domain/Errors.js"
import { envelope } from "./EarlyAnswer.js"

/**
 * An amount held at once against a limit. What would pass it is refused at once (the callers answer 503 with
 * `Retry-After`), not queued: waiting bodies would hold their bytes while they wait.
 */
export class Budget {
  private used = 0
  constructor(readonly limit: number) {}
  /** Takes `amount` if it fits; `false` (and nothing taken) if not. */
  take(amount: number): boolean {
    if (this.used + amount > this.limit) return false
    this.used += amount
    return true
  }
  give(amount: number): void {
    this.used -= amount
  }
}

/** The answer to what a budget refused: a 503 in the error envelope, with when to try again. */
export const busy = (message: string, retryAfterSeconds: number) =>
  envelope(serviceUnavailable(message), 503, { "retry-after": String(retryAfterSeconds) })

/** The Node response of `request`, when it is served by a Node server (not in a web handler's tests). */
const nodeResponse = (request: HttpServerRequest.HttpServerRequest): ServerResponse | undefined =>
  request.source instanceof IncomingMessage ? NodeHttpServerRequest.toServerResponse(request) : undefined

/**
 * Runs `release` once the current request's answer has been sent or its connection closed: on a Node server the
 * answer is written after the handler ends (its response's `close`, which comes however the request ends);
 * elsewhere, when the handler's scope closes.
 */
export const onceAnswered = (release: () => void): Effect.Effect<void, never, HttpServerRequest.HttpServerRequest | Scope.Scope> =>
  Effect.flatMap(HttpServerRequest.HttpServerRequest, (request) => {
    const node = nodeResponse(request)
    if (node === undefined) return Effect.addFinalizer(() => Effect.sync(release))
    if (node.destroyed) release()
    else node.once("close", release)
    return Effect.void
  })

/**
 * Closes the current request's connection once its client has taken none of its answer for `stall` (on a Node
 * server). An answer must be written in pieces for a slow but steady reader to show progress: one write of all of
 * it shows none until its end.
 */
export const cutWhenStalled = (stall: Duration.Duration): Effect.Effect<void, never, HttpServerRequest.HttpServerRequest> =>
  Effect.map(HttpServerRequest.HttpServerRequest, (request) => {
    const node = nodeResponse(request)
    node?.setTimeout(Duration.toMillis(stall), () => node.destroy())
  })
