/**
 * Load-aware dispatch for vLLM-style servers: reads `vllm:num_requests_waiting` from the server's Prometheus
 * endpoint every second, and says the server is full (`Admission` then holds new calls) while its waiting queue,
 * as last read plus the calls that may not be in that reading minus those finished since, reaches `maxWaiting`.
 * Counting the calls in between keeps the queue bounded between two readings, however fast calls go out; a finished
 * call frees a place that a waiting request or a new call takes. So batch work never floods an interactive server's
 * queue. Calls wait for the first reading; a reading that fails (late: a server under load answers its metrics slowly
 * too) leaves the last one in use, with the calls counted since. Without one for `KEEP_READING_FOR`, calls go out
 * without load awareness, with a warning, until one is read.
 *
 * One metric is read from the text format with a regular expression: a Prometheus parser library would parse the
 * whole exposition (hundreds of series on vLLM) every second for that one number.
 */
import type * as HttpClient from "@effect/platform/HttpClient"
import * as HttpClientRequest from "@effect/platform/HttpClientRequest"
import { Duration, Effect, type Scope } from "effect"
import { withoutCredentials } from "../observability/urlText.js"
import { currentRequestWritten } from "../inference/UpstreamHttpClient.js"
import type { LoadGauge, SentCall } from "./Admission.js"

const POLL_INTERVAL = Duration.seconds(1)
/**
 * How long a reading may take: a server under load answers its metrics late too (at a 1 s bound, one answering in
 * 1.5 s was never read, and after `KEEP_READING_FOR` its calls went out unheld, when it was most loaded).
 */
const POLL_TIMEOUT = Duration.seconds(5)
/**
 * How long the last reading (or, at start, none) holds calls while the next ones fail: dropped at the first
 * failure, one reading a second late under load let every held call out at once (a test's queue, bounded at 2,
 * reached 4), and at start a node sent up to its limit before its first reading.
 */
const KEEP_READING_FOR = Duration.seconds(10)
const METRIC = /^vllm:num_requests_waiting(?:\{[^}]*\})?\s+([0-9.eE+-]+)/gm

/**
 * The sum of `vllm:num_requests_waiting` over its series (one per model), if the text has it. A series that is no
 * count (negative, NaN, infinite) is not read: a reading of -1e308 let every call out unheld, without a word.
 */
export const waitingRequests = (text: string): number | undefined => {
  let total: number | undefined
  for (const match of text.matchAll(METRIC)) {
    const value = Number(match[1])
    if (Number.isFinite(value) && value >= 0) total = (total ?? 0) + value
  }
  return total !== undefined && Number.isFinite(total) ? total : undefined // two series of 1e308 sum to Infinity
}

/** A call counted on top of the readings: when its request was written (epoch ms on the Effect clock), once it is. */
interface Counted {
  writtenAt: number | undefined
}

/** Whether two URLs share scheme, host and port: an upstream's key may go to its metrics only then. */
export const sameOrigin = (a: string, b: string): boolean =>
  URL.canParse(a) && URL.canParse(b) && new URL(a).origin === new URL(b).origin

export const makeLoadWatch = (options: {
  readonly upstream: string
  readonly metricsUrl: string
  readonly maxWaiting: number
  readonly http: HttpClient.HttpClient
  /** The upstream's key and headers, on a reading from its own server (a gateway in front may ask for them). */
  readonly authorize: (request: HttpClientRequest.HttpClientRequest) => HttpClientRequest.HttpClientRequest
  /** Told after each reading (the admission may now let calls go). */
  readonly changed: () => void
}): Effect.Effect<LoadGauge, never, Scope.Scope> =>
  Effect.gen(function*() {
    const clock = yield* Effect.clock
    /** The last reading; undefined before the first, and once `failing`. */
    let read: number | undefined
    /** When it was read, or the watch started (epoch ms on the Effect clock). */
    let readAt = clock.unsafeCurrentTimeMillis()
    /**
     * The calls that may not be in the last reading: sent since, or written less than its round trip before it, or
     * not written yet. One a call; bounded by the calls of `KEEP_READING_FOR` and those in flight, then none is kept.
     */
    let counted: Array<Counted> = []
    let finished = 0
    /** No reading for `KEEP_READING_FOR`: calls go out unheld until one comes. */
    let failing = false

    const request = options.authorize(HttpClientRequest.get(options.metricsUrl))
    const readWaiting = (started: number) => {
      /**
       * When the reading was asked: its request written (`currentRequestWritten`; the first time, the cautious side),
       * not the poll's start (under load, its own wait to go out widened the reading's window, and every call in it
       * was counted as maybe not in it); the poll's start with a client that does not say.
       */
      let asked = started
      let told = false
      const written = () => {
        if (!told) asked = clock.unsafeCurrentTimeMillis()
        told = true
      }
      /** When the answer came: the reading was taken before (measured later, a loaded node's lag widened the window). */
      let answered = started
      const execute = Effect.tap(options.http.execute(request), () => {
        answered = clock.unsafeCurrentTimeMillis()
      })
      return Effect.locally(execute, currentRequestWritten, written).pipe(
        Effect.flatMap((res): Effect.Effect<string, unknown> => (res.status === 200 ? res.text : Effect.fail(`status ${res.status}`))),
        Effect.flatMap((text) => {
          const waiting = waitingRequests(text)
          return waiting === undefined ? Effect.fail("no count of vllm:num_requests_waiting in the answer") : Effect.succeed(waiting)
        }),
        Effect.timeout(POLL_TIMEOUT),
        Effect.matchEffect({
          onSuccess: (waiting) =>
            Effect.suspend(() => {
              read = waiting
              readAt = answered
              forgetWrittenBefore(asked - (readAt - asked))
              finished = 0
              const recovered = failing
              failing = false
              options.changed()
              return recovered ? Effect.logInfo(`Upstream ${options.upstream}: load metrics readable again`) : Effect.void
            }),
          onFailure: (error: unknown) =>
            Effect.suspend(() => {
              if (failing || clock.unsafeCurrentTimeMillis() - readAt < Duration.toMillis(KEEP_READING_FOR)) return Effect.void
              read = undefined
              failing = true
              counted = []
              options.changed()
              // Its query may hold a token (as in a listening line, it is left out), the client's error repeats it.
              const shown = withoutCredentials(options.metricsUrl)
              const reason = String(error).replaceAll(options.metricsUrl, shown)
              return Effect.logWarning(
                `Upstream ${options.upstream}: cannot read ${shown} (${reason}); sending without load awareness until it answers`
              )
            })
        })
      )
    }
    // A reading is the server's queue at some moment between its request's writing and its answer: the calls written
    // in between stay counted (some may be in the reading already: counted twice, the safe side), and so do those
    // written less than that round trip before it, and those not written yet, whenever let go (on their way still,
    // behind the reading: forgotten, they overfilled a loaded server's queue, 4 where 2 was the bound, under a loaded
    // suite). The calls finished before it are forgotten (subtracting them again could count the queue short, and
    // overfill it).
    const forgetWrittenBefore = (time: number) => {
      counted = counted.filter((call) => call.writtenAt === undefined || call.writtenAt >= time)
    }
    const poll = Effect.suspend(() => readWaiting(clock.unsafeCurrentTimeMillis()))
    yield* Effect.forkScoped(Effect.forever(Effect.zipRight(poll, Effect.sleep(POLL_INTERVAL))))

    return {
      full: () => !failing && (read === undefined || read + counted.length - finished >= options.maxWaiting),
      sent: (): SentCall => {
        const call: Counted = { writtenAt: undefined }
        if (!failing) counted.push(call)
        return {
          written: () => {
            call.writtenAt = clock.unsafeCurrentTimeMillis() // the last time: the cautious side
          },
          finished: () => {
            call.writtenAt ??= -Infinity // ended unwritten (refused, handed back): forgotten at the next reading
            finished++
          }
        }
      }
    }
  })
