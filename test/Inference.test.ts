/** Inference retry policy, on TestClock time, over a scripted HttpClient. */
import * as HttpClient from "@effect/platform/HttpClient"
import * as HttpClientError from "@effect/platform/HttpClientError"
import * as HttpClientResponse from "@effect/platform/HttpClientResponse"
import { describe, expect, it } from "@effect/vitest"
import { Duration, Effect, Fiber, Layer, TestClock } from "effect"
import { AppConfig } from "../src/Config.js"
import { Inference, InferenceLive, make, retryAfterMillis } from "../src/inference/Inference.js"
import { startSimulator } from "../scripts/simulator.js"
import { eventually } from "./support/TestApp.js"

type Scripted = { status: number; headers?: Record<string, string>; body?: string } | "network-error"

/** An Inference whose upstream answers `script` in order (the last answer repeats); `calls` counts attempts. */
const scripted = (script: ReadonlyArray<Scripted>, maxAttempts = 5) => {
  const calls = { n: 0, urls: [] as Array<string> }
  const client = HttpClient.make((request, url) => {
    const answer = script[Math.min(calls.n, script.length - 1)]!
    calls.n++
    calls.urls.push(url.toString())
    if (answer === "network-error") {
      return Effect.fail(new HttpClientError.RequestError({ request, reason: "Transport", description: "ECONNREFUSED" }))
    }
    return Effect.succeed(HttpClientResponse.fromWeb(request, new Response(answer.body ?? `{"ok":true}`, { status: answer.status, headers: answer.headers ?? {} })))
  })
  const layer = Layer.effect(Inference, make).pipe(
    Layer.provide(Layer.succeed(HttpClient.HttpClient, client)),
    Layer.provide(AppConfig.layerWith({
      inferenceBaseUrl: "http://upstream.test/v1",
      inferenceMaxAttempts: maxAttempts,
      inferenceRetryBaseDelay: Duration.seconds(1),
      inferenceRetryMaxDelay: Duration.seconds(60)
    }))
  )
  return { calls, layer }
}

const send = (options?: { deadline?: number }) =>
  Effect.flatMap(Inference, (inference) => inference.send("/v1/chat/completions", `{"model":"m"}`, options))

describe("Inference", () => {
  it.effect("honours Retry-After on a 429, then returns the success", () => {
    const { calls, layer } = scripted([{ status: 429, headers: { "retry-after": "30" } }, { status: 200, body: `{"id":"x"}` }])
    return Effect.gen(function*() {
      const fiber = yield* Effect.fork(send())
      yield* TestClock.adjust("29 seconds")
      expect(calls.n).toBe(1)
      yield* TestClock.adjust("1 second")
      const res = yield* Fiber.join(fiber)
      expect(calls.n).toBe(2)
      expect(res.status).toBe(200)
      expect(res.json).toEqual({ id: "x" })
      expect(calls.urls[0]).toBe("http://upstream.test/v1/chat/completions")
    }).pipe(Effect.provide(layer))
  })

  it.effect("a 4xx is final: no retry, the upstream body kept", () => {
    const { calls, layer } = scripted([{ status: 400, body: `{"error":{"message":"bad"}}` }])
    return Effect.gen(function*() {
      const res = yield* send()
      expect(calls.n).toBe(1)
      expect(res.status).toBe(400)
      expect(res.json).toEqual({ error: { message: "bad" } })
    }).pipe(Effect.provide(layer))
  })

  it.effect("5xx retries with exponential backoff up to the attempt limit, then returns the last answer", () => {
    const { calls, layer } = scripted([{ status: 503, body: "Service Unavailable" }], 3)
    return Effect.gen(function*() {
      const fiber = yield* Effect.fork(send())
      yield* TestClock.adjust("0.7 seconds") // first backoff is 1 s ± 20 %
      expect(calls.n).toBe(1)
      yield* TestClock.adjust("0.6 seconds")
      expect(calls.n).toBe(2)
      yield* TestClock.adjust("2.5 seconds") // second backoff is 2 s ± 20 %
      const res = yield* Fiber.join(fiber)
      expect(calls.n).toBe(3)
      expect(res.status).toBe(503)
      // a non-JSON body becomes an OpenAI error envelope, so output lines always hold an object
      expect(res.json).toEqual({ error: { message: "Service Unavailable", type: "server_error", param: null, code: null } })
    }).pipe(Effect.provide(layer))
  })

  it.effect("no retry is scheduled past the deadline", () => {
    const { calls, layer } = scripted([{ status: 429, headers: { "retry-after": "60" } }, { status: 200 }])
    return Effect.gen(function*() {
      const res = yield* send({ deadline: 10_000 })
      expect(calls.n).toBe(1)
      expect(res.status).toBe(429)
    }).pipe(Effect.provide(layer))
  })

  it.effect("network errors are retried, then reported as upstream_unreachable", () => {
    const { calls, layer } = scripted(["network-error"], 2)
    return Effect.gen(function*() {
      const fiber = yield* Effect.fork(send())
      yield* TestClock.adjust("2 seconds")
      const error = yield* Effect.flip(Fiber.join(fiber))
      expect(calls.n).toBe(2)
      expect(error).toMatchObject({ _tag: "UpstreamFailure", code: "upstream_unreachable" })
    }).pipe(Effect.provide(layer))
  })

  describe("over HTTP to the simulator", () => {
    const live = (url: string) =>
      InferenceLive.pipe(Layer.provide(AppConfig.layerWith({
        inferenceBaseUrl: url,
        inferenceTimeout: Duration.millis(300),
        inferenceMaxAttempts: 2,
        inferenceRetryBaseDelay: Duration.millis(10)
      })))
    const hang = (i: number) => `{"model":"sim-model","messages":[{"role":"user","content":"${i} [hang]"}]}`
    const simulator = Effect.acquireRelease(Effect.promise(() => startSimulator()), (sim) => Effect.promise(() => sim.close()))

    it.live("a silent upstream times out per attempt, is retried, then reported as upstream_timeout", () =>
      Effect.gen(function*() {
        const sim = yield* simulator
        const error = yield* Effect.flatMap(Inference, (i) => i.send("/v1/chat/completions", hang(1))).pipe(
          Effect.provide(live(sim.url)),
          Effect.flip
        )
        expect(error).toMatchObject({ _tag: "UpstreamFailure", code: "upstream_timeout" })
        expect(sim.stats.requests).toBe(2)
      }).pipe(Effect.scoped))

    it.live("interrupting a call aborts its HTTP request upstream", () =>
      Effect.gen(function*() {
        const sim = yield* simulator
        yield* Effect.gen(function*() {
          const inference = yield* Inference
          const fiber = yield* Effect.fork(inference.send("/v1/chat/completions", hang(2)))
          yield* eventually(() => expect(sim.stats.inFlight).toBe(1))
          yield* Fiber.interrupt(fiber)
          yield* eventually(() => expect(sim.stats.aborted).toBe(1))
        }).pipe(Effect.provide(live(sim.url)))
      }).pipe(Effect.scoped))
  })

  it("reads Retry-After as seconds, as an HTTP date, and retry-after-ms", () => {
    expect(retryAfterMillis({ "retry-after": "2" }, 0)).toEqual(expect.objectContaining({ value: 2000 }))
    expect(retryAfterMillis({ "retry-after-ms": "150" }, 0)).toEqual(expect.objectContaining({ value: 150 }))
    const now = Date.parse("2026-01-01T00:00:00Z")
    expect(retryAfterMillis({ "retry-after": "Thu, 01 Jan 2026 00:00:05 GMT" }, now)).toEqual(expect.objectContaining({ value: 5000 }))
    expect(retryAfterMillis({}, 0)._tag).toBe("None")
  })
})
