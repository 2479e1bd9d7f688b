/** The load watch's estimate of a vLLM server's waiting queue between two readings of its metrics, and without them. */
import { describe, expect, it } from "@effect/vitest"
import * as HttpClient from "@effect/platform/HttpClient"
import * as HttpClientError from "@effect/platform/HttpClientError"
import * as HttpClientResponse from "@effect/platform/HttpClientResponse"
import { Deferred, Duration, Effect, FiberRef, Logger, TestClock } from "effect"
import { identity } from "effect/Function"
import * as HttpClientRequest from "@effect/platform/HttpClientRequest"
import { currentRequestWritten } from "../src/inference/UpstreamHttpClient.js"
import { makeLoadWatch, sameOrigin, waitingRequests } from "../src/upstreams/loadWatch.js"

/** A watch on `http` (its readings' answers), with no key and no one told of its readings. */
const watch = (http: HttpClient.HttpClient, maxWaiting: number) =>
  makeLoadWatch({ upstream: "u", metricsUrl: "http://vllm/metrics", maxWaiting, http, authorize: identity, changed: () => {} })

/** Readings of `waiting` each answered after `delay()` (the delay a test sets as it goes). */
const answeringAfter = (waiting: number, delay: () => Duration.Duration) =>
  HttpClient.make((request) =>
    Effect.as(Effect.sleep(delay()), HttpClientResponse.fromWeb(request, new Response(`vllm:num_requests_waiting ${waiting}\n`))))

describe("load watch", () => {
  it.live("calls sent while a reading is on its way still count once it arrives: the queue is never counted short", () =>
    Effect.gen(function*() {
      const answer = yield* Deferred.make<void>()
      let readings = 0
      const http = HttpClient.make((request) =>
        Effect.zipRight(
          Effect.sync(() => readings++),
          Effect.as(Deferred.await(answer), HttpClientResponse.fromWeb(request, new Response("vllm:num_requests_waiting 1\n")))
        ))
      const gauge = yield* watch(http, 2)
      yield* Effect.sleep("20 millis") // the first reading is asked for, not answered
      expect(readings).toBe(1)
      expect(gauge.full()).toBe(true) // nothing known yet: calls wait for the first reading
      // Two calls went out before (a reading in flight, on an earlier poll) that the answer may not count.
      const calls = [gauge.sent(), gauge.sent()]
      for (const call of calls) call.written()
      yield* Deferred.succeed(answer, undefined)
      yield* Effect.sleep("20 millis")
      expect(gauge.full()).toBe(true) // 1 waiting + 2 sent meanwhile ≥ 2
      for (const call of calls) call.finished() // a call finished after the reading frees a place
      expect(gauge.full()).toBe(false)
    }).pipe(Effect.scoped))

  it.effect("calls sent less than a reading's round trip before it still count: they may reach the server after it", () =>
    Effect.gen(function*() {
      let delay = Duration.zero
      const http = answeringAfter(0, () => delay)
      const gauge = yield* watch(http, 2)
      yield* TestClock.adjust(Duration.millis(100)) // the first reading, at once: nothing waits
      const first = gauge.sent() // long before the next reading: in it
      first.written()
      yield* TestClock.adjust(Duration.millis(800))
      gauge.sent().written() // 100 ms before the next reading, which takes 200 ms: maybe not in it
      gauge.sent().written()
      delay = Duration.millis(200)
      yield* TestClock.adjust(Duration.millis(400)) // asked at 1,000 ms, read at 1,200 ms: 0 waiting
      expect(gauge.full()).toBe(true) // the two sent last still count: 0 + 2 ≥ 2
      first.finished()
      expect(gauge.full()).toBe(false) // the first is in the reading: not counted again
    }).pipe(Effect.scoped))

  it.effect("a call let go long before a reading but written after it was asked still counts; one that ended unwritten does not", () =>
    Effect.gen(function*() {
      let delay = Duration.zero
      const http = answeringAfter(0, () => delay)
      const gauge = yield* watch(http, 2)
      yield* TestClock.adjust(Duration.millis(100)) // the first reading, at once: nothing waits
      const early = gauge.sent()
      early.written() // written at once: in the next reading
      // Let go at 100 ms too, but written only at 1,100 ms (a loaded node, a new connection): after the next reading
      // was asked, so maybe not in it; and one still unwritten when it comes.
      const late = gauge.sent()
      const later = gauge.sent()
      delay = Duration.millis(200)
      yield* TestClock.adjust(Duration.millis(1000)) // asked at 1,000 ms
      late.written()
      yield* TestClock.adjust(Duration.millis(200)) // read at 1,200 ms: 0 waiting
      expect(gauge.full()).toBe(true) // both still count: 0 + 2 ≥ 2
      later.written()
      late.finished()
      later.finished()
      expect(gauge.full()).toBe(false) // the early one is in the reading: not counted again
      // A call refused before it was written (no connection): never at the server, not counted on after the next reading.
      const refused = gauge.sent()
      refused.finished()
      yield* TestClock.adjust(Duration.seconds(2))
      expect(gauge.full()).toBe(false)
    }).pipe(Effect.scoped))

  it.effect("a reading's window starts when its request is written: a call written before it is in the reading", () =>
    Effect.gen(function*() {
      let lag = Duration.zero
      // The client tells when the reading's request is written: `lag` after it was asked (a loaded node), answered
      // 20 ms later.
      const http = HttpClient.make((request) =>
        Effect.gen(function*() {
          const written = yield* FiberRef.get(currentRequestWritten)
          yield* Effect.sleep(lag)
          written?.()
          yield* Effect.sleep(Duration.millis(20))
          return HttpClientResponse.fromWeb(request, new Response("vllm:num_requests_waiting 0\n"))
        }))
      const gauge = yield* watch(http, 1)
      yield* TestClock.adjust(Duration.millis(100)) // the first reading (asked at 0, read at 20)
      lag = Duration.millis(300)
      yield* TestClock.adjust(Duration.millis(1000)) // the next asked at 1,020 ms, written at 1,320
      const call = gauge.sent()
      call.written() // at 1,100 ms: 220 ms before the reading's request, which the server answers in 20
      yield* TestClock.adjust(Duration.millis(300)) // read at 1,340 ms: 0 waiting
      // Counted as maybe not in the reading, its 320 ms window from the poll's start would hold the next call.
      expect(gauge.full()).toBe(false)
    }).pipe(Effect.scoped))

  it.effect("a reading's window ends when its answer comes, not once this node gets round to reading it", () =>
    Effect.gen(function*() {
      // Answered 20 ms after it is written, its text read 300 ms later (a loaded node's lag after the answer).
      const http = HttpClient.make((request) =>
        Effect.gen(function*() {
          const written = yield* FiberRef.get(currentRequestWritten)
          written?.()
          yield* Effect.sleep(Duration.millis(20))
          const response = HttpClientResponse.fromWeb(request, new Response("vllm:num_requests_waiting 0\n"))
          return Object.create(response, { text: { get: () => Effect.delay(response.text, Duration.millis(300)) } })
        }))
      const gauge = yield* watch(http, 1)
      yield* TestClock.adjust(Duration.millis(1200)) // the first reading: asked at 0, answered at 20, read at 320
      const call = gauge.sent()
      call.written() // at 1,200 ms: 120 ms before the next reading's request (at 1,320), answered in 20
      yield* TestClock.adjust(Duration.millis(500)) // read at 1,640 ms: 0 waiting
      // Counted as maybe not in the reading, a window to 1,640 (320 ms) would hold the next call.
      expect(gauge.full()).toBe(false)
    }).pipe(Effect.scoped))

  it.effect("a reading a loaded server answers late (1.5 s) is read, with the upstream's key when its server is the upstream's", () =>
    Effect.gen(function*() {
      const seen: Array<string | undefined> = []
      const http = HttpClient.make((request) => {
        seen.push(request.headers["authorization"])
        return Effect.as(Effect.sleep(Duration.millis(1500)), HttpClientResponse.fromWeb(request, new Response("vllm:num_requests_waiting 5\n")))
      })
      const authorize = HttpClientRequest.bearerToken("sk-upstream")
      const gauge = yield* makeLoadWatch({ upstream: "u", metricsUrl: "http://vllm/metrics", maxWaiting: 8, http, authorize, changed: () => {} })
      yield* TestClock.adjust(Duration.millis(1600))
      for (let i = 0; i < 2; i++) gauge.sent().written()
      expect(gauge.full()).toBe(false) // 5 waiting + 2 sent < 8: read, though late
      gauge.sent().written()
      expect(gauge.full()).toBe(true)
      // Slow every time: the readings go on holding (5 waiting + 3 sent since), with no fall back to sending unheld.
      yield* TestClock.adjust(Duration.seconds(30))
      for (let i = 0; i < 3; i++) gauge.sent().written()
      expect(gauge.full()).toBe(true)
      expect(new Set(seen)).toEqual(new Set(["Bearer sk-upstream"]))
      expect([sameOrigin("http://vllm:8000/metrics", "http://vllm:8000/v1"), sameOrigin("http://vllm:8001/metrics", "http://vllm:8000/v1")]).toEqual([true, false])
    }).pipe(Effect.scoped))

  it.effect("a reading that fails keeps the last one in use for 10 s, then calls go out unheld, with a warning", () =>
    Effect.gen(function*() {
      const lines: Array<string> = []
      let answering = true
      const http = HttpClient.make((request) =>
        answering
          ? Effect.succeed(HttpClientResponse.fromWeb(request, new Response("vllm:num_requests_waiting 2\n")))
          : Effect.fail(new HttpClientError.RequestError({ request, reason: "Transport", description: "timed out" })))
      const gauge = yield* makeLoadWatch({ upstream: "u", metricsUrl: "http://vllm/metrics", maxWaiting: 3, http, authorize: identity, changed: () => {} }).pipe(
        Effect.provide(Logger.replace(Logger.defaultLogger, Logger.make(({ message }) => lines.push(String(message)))))
      )
      yield* TestClock.adjust(Duration.millis(1))
      const call = gauge.sent()
      call.written()
      expect(gauge.full()).toBe(true) // 2 waiting + 1 sent ≥ 3
      // The server gets too busy to answer its metrics: the last reading, and the calls counted since, still hold.
      answering = false
      yield* TestClock.adjust(Duration.seconds(9))
      expect(gauge.full()).toBe(true)
      call.finished()
      expect(gauge.full()).toBe(false) // a call finished since frees a place, as after a reading
      gauge.sent().written()
      expect([gauge.full(), lines]).toEqual([true, []])
      // Past 10 s without a reading: calls go out without load awareness, said once.
      yield* TestClock.adjust(Duration.seconds(3))
      expect(gauge.full()).toBe(false)
      expect(lines).toEqual([expect.stringContaining("Upstream u: cannot read http://vllm/metrics (")])
    }).pipe(Effect.scoped))

  it.effect("metrics it cannot read hold calls for 10 s from the start, then are warned of once, without the URL's query (a token)", () =>
    Effect.gen(function*() {
      const lines: Array<string> = []
      const http = HttpClient.make((request) =>
        Effect.fail(new HttpClientError.RequestError({ request, reason: "Transport", description: "connect ECONNREFUSED" })))
      const gauge = yield* makeLoadWatch({ upstream: "u", metricsUrl: "http://vllm:8000/metrics?token=SECRET9", maxWaiting: 2, http, authorize: identity, changed: () => {} }).pipe(
        Effect.provide(Logger.replace(Logger.defaultLogger, Logger.make(({ message }) => lines.push(String(message)))))
      )
      yield* TestClock.adjust(Duration.seconds(9))
      expect([gauge.full(), lines]).toEqual([true, []])
      yield* TestClock.adjust(Duration.seconds(3))
      expect(gauge.full()).toBe(false)
      expect(lines).toEqual([expect.stringContaining("Upstream u: cannot read http://vllm:8000/metrics (")])
      expect(lines.join("\n")).not.toContain("SECRET9")
    }).pipe(Effect.scoped))

  it("reads the waiting count summed over its series; a series that is no count is not read, and none at all is no reading", () => {
    expect(waitingRequests('vllm:num_requests_waiting{model_name="a"} 2\nvllm:num_requests_waiting{model_name="b"} 3\n')).toBe(5)
    expect(waitingRequests("vllm:num_requests_waiting -1e308\nvllm:num_requests_waiting{model_name=\"b\"} 3\n")).toBe(3)
    for (const odd of ["-1", "-1e308", "1e999"]) expect(waitingRequests(`vllm:num_requests_waiting ${odd}\n`)).toBeUndefined()
    expect(waitingRequests('vllm:num_requests_waiting{model_name="a"} 1e308\nvllm:num_requests_waiting{model_name="b"} 1e308\n')).toBeUndefined()
  })
})
