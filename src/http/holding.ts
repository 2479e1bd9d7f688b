/**
 * What the server holds for its clients, bounded: a `Budget` of what a node holds at once (the bytes of JSON bodies,
 * uploads, results pages, downloads), of which one project holds at most its share, with a reserve kept for the
 * others (`holderOf`), given back once an answer has left (`onceAnswered`, `holdUntilAnswered`), and the connection
 * of a client that stopped taking its answer, or sending its body, or sends it too slowly, cut (`cutWhenStalled`,
 * `cutSlowBodies`). Each body and answer is bounded on its own; what bounds how many are held at once is here.
 * Measured without these bounds: 400 clients that each sent 1 MiB of JSON but its last byte took a server from 101
 * to 527 MB, 200 stalled uploads to PostgreSQL from 104 to 273 MB, 200 downloads whose clients stopped reading from
 * 133 to 1,050 MB (368 MB once they read one piece ahead), and more would have ended it.
 */
import * as HttpServerRequest from "@effect/platform/HttpServerRequest"
import * as NodeHttpServerRequest from "@effect/platform-node/NodeHttpServerRequest"
import { Chunk, Duration, Effect, Option, Runtime, type Scope, Stream } from "effect"
import { IncomingMessage, type ServerResponse } from "node:http"
import { type AuthShape, CurrentCaller } from "../auth/Auth.js"
import { rateLimited, serviceUnavailable } from "../domain/Errors.js"
import { echo } from "../domain/Text.js"
import { envelope } from "./EarlyAnswer.js"

/**
 * What a budget answered: taken, or refused because the node holds all it may, or the project all it may now (its
 * share, or, holding more than one request's worth, none of the reserve).
 */
export type Taken = "taken" | "full" | "share"

/**
 * Who holds part of a budget: a project (every key of it), counted always and held to its share when `enforce`
 * says so (the keys name several projects now: counted before, what it held when a reload added a project counts).
 */
export interface Holder {
  readonly project: string
  readonly enforce: boolean
}

/**
 * An amount held at once against a limit. What would pass it is refused at once (the callers answer 503 with
 * `Retry-After`), not queued: waiting bodies would hold their bytes while they wait. Where keys name several
 * projects, one project may hold at most `share` of it, and of its last `reserve` no more than one request's worth
 * (`unit`), kept for projects that hold little or none yet (a 429 beyond either): neither one key nor the keys of two
 * projects can hold it all.
 */
export class Budget {
  private used = 0
  private readonly byProject = new Map<string, number>()
  /** The most one project may hold: half, rounded up (all of a limit of 1), and at least one request's worth. */
  readonly share: number
  /** The part of the limit a project may take from only while it holds at most one request's worth: a quarter. */
  readonly reserve: number
  /** `unit`: the most one request takes (1 where each takes one; the largest body where they take bytes). */
  constructor(readonly limit: number, readonly unit = 1) {
    this.share = Math.max(unit, Math.ceil(limit / 2))
    this.reserve = Math.max(unit, Math.ceil(limit / 4))
  }
  /**
   * Takes `amount` if it fits, and in `holder`'s share (and out of the reserve, past one request's worth) when it is
   * held to one; nothing taken when it does not.
   */
  take(amount: number, holder?: Holder): Taken {
    const before = this.heldBy(holder)
    if (holder?.enforce === true) {
      if (before + amount > this.share) return "share"
      if (before + amount > this.unit && this.used + amount > this.limit - this.reserve) return "share"
    }
    if (this.used + amount > this.limit) return "full"
    this.used += amount
    if (holder !== undefined) this.byProject.set(holder.project, before + amount)
    return "taken"
  }
  /** Gives back `amount` taken by `holder`. */
  give(amount: number, holder?: Holder): void {
    this.used -= amount
    if (holder === undefined) return
    const held = this.heldBy(holder) - amount
    if (held > 0) this.byProject.set(holder.project, held)
    else this.byProject.delete(holder.project)
  }
  /** What `holder`'s project holds now (0 for none: an operator's key is not counted). */
  heldBy(holder: Holder | undefined): number {
    return holder === undefined ? 0 : this.byProject.get(holder.project) ?? 0
  }
}

/**
 * The holder of what the current request takes: its caller's project, held to its share while the keys name more
 * than one project. None for an operator's key, nor on a node without keys (every request an operator's).
 */
export const holderOf = (auth: AuthShape): Effect.Effect<Holder | undefined> =>
  Effect.flatMap(Effect.serviceOption(CurrentCaller), (caller) =>
    Option.isNone(caller) || caller.value.admin
      ? Effect.succeed(undefined)
      : Effect.map(auth.summary, ({ projects }) => ({ project: caller.value.project, enforce: projects > 1 })))

/** The answer to what a budget refused: a 503 in the error envelope, with when to try again. */
export const busy = (message: string, retryAfterSeconds: number) =>
  envelope(serviceUnavailable(message), 503, { "retry-after": String(retryAfterSeconds) })

/** The answer to what a project's share refused: OpenAI's 429 for a rate limit, with when to try again. */
export const overShare = (message: string, retryAfterSeconds: number) =>
  envelope(rateLimited(message), 429, { "retry-after": String(retryAfterSeconds) })

/** The Node response of `request`, when it is served by a Node server (not in a web handler's tests). */
const nodeResponse = (request: HttpServerRequest.HttpServerRequest): ServerResponse | undefined =>
  request.source instanceof IncomingMessage ? NodeHttpServerRequest.toServerResponse(request) : undefined

/**
 * Runs `release` once the current request's answer has been sent or its connection closed: on a Node server the
 * answer is written after the handler ends (its response's `close`, which Node gives the answer a connection is
 * sending however the request ends; a request pipelined behind it is not served, nor holds anything, before its
 * turn: `servedInTurn.ts`);
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
 * Takes one of `budget` for the current request (by `holder`) until its answer has left (`onceAnswered`); nothing
 * taken when it does not fit. Uninterruptible: taken, it is always given back.
 */
export const holdUntilAnswered = (
  budget: Budget,
  holder: Holder | undefined
): Effect.Effect<Taken, never, HttpServerRequest.HttpServerRequest | Scope.Scope> =>
  Effect.uninterruptible(Effect.suspend(() => {
    const taken = budget.take(1, holder)
    return taken === "taken" ? Effect.as(onceAnswered(() => budget.give(1, holder)), taken) : Effect.succeed(taken)
  }))

/**
 * What a stall does: `destroy` closes the connection, and `line` says so in a warning (`http.stalled`), from a timer
 * (outside any fiber: the current runtime is captured for it).
 */
const stalledCut = (destroy: () => void, line: string) =>
  Effect.map(Effect.runtime<never>(), (runtime) => () => {
    destroy()
    Runtime.runFork(runtime)(Effect.annotateLogs(Effect.logWarning(line), "event", "http.stalled"))
  })

/**
 * `body` with a watchdog: once the client has taken none of it for `stall` (no piece asked for: the platform asks
 * for the next once the last is written), the connection is closed and said in a warning line (the request's own
 * line says 200: its head was sent). An answer must come in pieces for a slow but steady reader to show progress.
 * A timer of its own, not the socket's timeout, which Node leaves in place for a request pipelined behind this one.
 * And a body that fails once its head is sent (its storage gone mid-read) closes the connection at once: the
 * platform ends the answer short, and its client waited for the rest until the keep-alive timeout (65 s).
 */
export const cutWhenStalled = <E, R>(
  stall: Duration.Duration,
  body: Stream.Stream<Uint8Array, E, R>
): Effect.Effect<Stream.Stream<Uint8Array, E, R>, never, HttpServerRequest.HttpServerRequest> =>
  Effect.gen(function*() {
    const request = yield* HttpServerRequest.HttpServerRequest
    const node = nodeResponse(request)
    if (node === undefined) return body
    const cut = yield* stalledCut(
      () => node.destroy(),
      `The client of ${request.method} ${echo(request.url)} took none of its answer for ${Duration.format(stall)}: connection closed`
    )
    return Stream.suspend(() => {
      const timer = setTimeout(cut, Duration.toMillis(stall))
      const rearm = Effect.sync(() => timer.refresh())
      return body.pipe(
        Stream.tap(() => rearm),
        Stream.tapErrorCause(() => Effect.sync(() => node.headersSent && node.destroy())),
        Stream.ensuring(Effect.sync(() => clearTimeout(timer)))
      )
    })
  })

/** An answer held whole is written in pieces of this size, so that a slow but steady reader shows progress (`cutWhenStalled`). */
export const PIECE_BYTES = 64 * 1024

/** `bytes` in `PIECE_BYTES` pieces (views, not copies), one per stream chunk so that each waits for the last. */
export const inPieces = (bytes: Uint8Array) =>
  Stream.fromChunks(
    ...Array.from(
      { length: Math.ceil(bytes.length / PIECE_BYTES) },
      (_, i) => Chunk.of(bytes.subarray(i * PIECE_BYTES, (i + 1) * PIECE_BYTES))
    )
  )

/** How long a request body may go without a byte, and the slowest it may come on average (bytes a second; 0: any). */
export interface Patience {
  readonly stall: Duration.Duration
  readonly minRate: number
}

/**
 * A request `body` whose connection is closed once no piece of it has come for `stall` while one is awaited, or once
 * the time spent awaiting its pieces passes `stall` plus a second for every `minRate` bytes received (a byte sent now
 * and then never stalls): a body can take as long as it needs while it keeps coming at that rate. The time we hold
 * off reading (storage behind) does not count. A timer of its own: interrupting the awaited piece (`Stream.timeout`)
 * waits for the piece. The client gets no answer (it is not reading any); the cut is said in a warning line.
 */
export const cutSlowBodies = (source: IncomingMessage, { minRate, stall }: Patience, body: Stream.Stream<Uint8Array>) =>
  Stream.fromPull(Effect.gen(function*() {
    const pull = yield* Stream.toPull(body)
    const target = `${source.method} ${echo(source.url ?? "")}`
    const stallMs = Duration.toMillis(stall)
    let received = 0
    /** Milliseconds spent awaiting pieces so far (on the monotonic clock: a step of the system's must not count). */
    let awaited = 0
    const stalled = yield* stalledCut(
      () => source.destroy(),
      `The client of ${target} sent nothing of its body for ${Duration.format(stall)}: connection closed`
    )
    const slow = yield* stalledCut(
      () => source.destroy(),
      `The client of ${target} sent its body slower than ${minRate} bytes a second: connection closed`
    )
    let timer: ReturnType<typeof setTimeout> | undefined
    yield* Effect.addFinalizer(() => Effect.sync(() => clearTimeout(timer)))
    return Effect.suspend(() => {
      const allowed = minRate > 0 ? stallMs + (received / minRate) * 1000 - awaited : Infinity
      const started = performance.now()
      timer = allowed < stallMs ? setTimeout(slow, Math.max(0, allowed)) : setTimeout(stalled, stallMs)
      return pull.pipe(
        Effect.tap((chunk) => Effect.sync(() => Chunk.forEach(chunk, (piece) => void (received += piece.length)))),
        Effect.ensuring(Effect.sync(() => {
          clearTimeout(timer)
          awaited += performance.now() - started
        }))
      )
    })
  }))
