/** Inference retry policy, on TestClock time, over a scripted HttpClient. */
import * as HttpClient from "@effect/platform/HttpClient"
import * as HttpClientError from "@effect/platform/HttpClientError"
import * as HttpClientResponse from "@effect/platform/HttpClientResponse"
import { describe, expect, it } from "@effect/vitest"
import { Clock, Duration, Effect, Either, Exit, Fiber, Layer, Logger, Option, TestClock } from "effect"
import { AppConfig } from "../src/Config.js"
import type { UpstreamEntry } from "../src/upstreams/UpstreamSpec.js"
import {
  type AttemptsUsed,
  type HandBack,
  compactJson,
  HandedBack,
  Inference,
  InferenceLive,
  InferenceOverHttpClient,
  retryAfterMillis,
  type UpstreamFailure
} from "../src/inference/Inference.js"
import { BIGNUM_COMPACT, startSimulator } from "../scripts/simulator.js"
import { askedWait, resetMillis } from "../src/inference/answers.js"
import { quotaSpent } from "../src/upstreams/judgeLines.js"
import { transportFailureText } from "../src/upstreams/failureText.js"
import { manualHandBack } from "./support/HandBack.js"
import { eventually } from "./support/TestApp.js"
import { Metrics, noopMetrics } from "../src/observability/Metrics.js"

/** An answer, or no answer: the connection refused (never sent) or lost after sending. */
type Scripted = { status: number; headers?: Record<string, string>; body?: string; afterMs?: number } | "refused" | "lost"

/** Two upstreams serving any model, `first.test` then `second.test`. */
const twoServingAny = Option.some<ReadonlyArray<UpstreamEntry>>([
  { name: "first", base_url: "http://first.test/v1", models: ["*"] },
  { name: "second", base_url: "http://second.test/v1", models: ["*"] }
])

/** As a batch resumed at start does: waits for the upstream of `model`, then sends a call naming it. */
const sendOnceReachable = (model: string) =>
  Effect.flatMap(Inference, (inference) =>
    Effect.zipRight(inference.reachable(model), inference.send("/v1/chat/completions", `{"model":"${model}"}`, { model })))

/** The Inference over `client` (each upstream's calls), configured by `config`. */
const overClient = (client: HttpClient.HttpClient, config: Parameters<typeof AppConfig.layerWith>[0]) =>
  InferenceOverHttpClient.pipe(Layer.provide(Layer.succeed(HttpClient.HttpClient, client)), Layer.provide(AppConfig.layerWith(config)))

/**
 * An Inference whose upstream answers `script` in order (the last answer repeats); `calls` counts attempts. Its
 * `GET /models` answers 404, uncounted. The upstream's limit is 1, its floor: an overload answer counts as an attempt.
 */
const scripted = (script: ReadonlyArray<Scripted>, maxAttempts = 5, config: Parameters<typeof AppConfig.layerWith>[0] = {}) => {
  const calls = { n: 0, urls: [] as Array<string>, probes: 0 }
  const client = HttpClient.make((request, url) => {
    if (request.method === "GET") {
      calls.probes++
      return Effect.succeed(HttpClientResponse.fromWeb(request, new Response("", { status: 404 })))
    }
    const answer = script[Math.min(calls.n, script.length - 1)]!
    calls.n++
    calls.urls.push(url.toString())
    if (answer === "refused" || answer === "lost") {
      // As the undici client reports them: a cause with the kind (see UpstreamHttpClient.failureKind).
      const cause = Object.assign(new Error(answer), { kind: answer === "refused" ? "connect" : "transport" })
      return Effect.fail(new HttpClientError.RequestError({ request, reason: "Transport", description: answer, cause }))
    }
    const web = new Response(answer.body ?? `{"ok":true}`, { status: Math.min(answer.status, 599), headers: answer.headers ?? {} })
    // A status past HTTP's, as undici gives one (a web Response refuses to be made with it).
    if (answer.status > 599) Object.defineProperty(web, "status", { value: answer.status })
    const response = HttpClientResponse.fromWeb(request, web)
    return Effect.delay(Effect.succeed(response), Duration.millis(answer.afterMs ?? 0))
  })
  const layer = overClient(client, {
    inferenceBaseUrl: "http://upstream.test/v1",
    inferenceMaxAttempts: maxAttempts,
    inferenceMaxConcurrency: 1,
    inferenceRetryBaseDelay: Duration.seconds(1),
    inferenceRetryMaxDelay: Duration.seconds(60),
    upstreamProbeInterval: Duration.seconds(2),
    ...config
  })
  return { calls, layer }
}

/** The lines logged that hold `words` (as `LEVEL text` with `withLevel`), and the logger that records them. */
const loggedHolding = (words: string, withLevel = false) => {
  const lines: Array<string> = []
  const recorder = Logger.make(({ logLevel, message }) => {
    const text = Array.isArray(message) ? message.join(" ") : String(message)
    if (text.includes(words)) lines.push(withLevel ? `${logLevel.label} ${text}` : text)
  })
  return { lines, logger: Logger.replace(Logger.defaultLogger, recorder) }
}

const send = (options?: { deadline?: number }) =>
  Effect.flatMap(Inference, (inference) => inference.send("/v1/chat/completions", `{"model":"m"}`, options))

/** A JSON value of every kind, strings with escapes, spaces, quotes, backslashes and non-ASCII (seeded). */
const randomJson = (seed: number) => {
  let state = seed
  const next = (n: number) => (state = (state * 1103515245 + 12345) % 2147483648) % n
  const pieces = [" ", "  ", "\"", "\\", "\\\"", "\n", "\t", "é", "😀", "a", "{", "}", "[", "]", ":", ",", "\u0001", "\\\\"]
  const string = () => Array.from({ length: next(8) }, () => pieces[next(pieces.length)]).join("")
  const value = (depth: number): unknown => {
    switch (depth > 3 ? next(4) : next(7)) {
      case 0: return string()
      case 1: return next(2) === 0 ? next(1e9) - 5e8 : (next(1e6) - 5e5) / 1000
      case 2: return [null, true, false][next(3)]
      case 3: return ""
      case 4: return Array.from({ length: next(4) }, () => value(depth + 1))
      default: return Object.fromEntries(Array.from({ length: next(4) }, () => [string(), value(depth + 1)]))
    }
  }
  return value(0)
}

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

  it.effect("a Retry-After pause is logged when it begins, at most once a minute, with the cap it met", () => {
    const { calls, layer } = scripted([
      { status: 429, headers: { "retry-after": "30" } },
      { status: 429, headers: { "retry-after": "30" } },
      { status: 429, headers: { "retry-after": "90" } },
      { status: 200 }
    ])
    const { lines, logger } = loggedHolding("Retry-After")
    return Effect.gen(function*() {
      const fiber = yield* Effect.fork(send())
      yield* TestClock.adjust("30 seconds") // the second 429: a new pause, within the minute: not said
      expect(calls.n).toBe(2)
      yield* TestClock.adjust("30 seconds") // the third, a minute on: said, capped at INFERENCE_RETRY_MAX_DELAY
      expect(calls.n).toBe(3)
      yield* TestClock.adjust("60 seconds")
      expect((yield* Fiber.join(fiber)).status).toBe(200)
      expect(lines).toEqual([
        "Upstream default answered 429 with Retry-After: no call goes to it for 30s",
        "Upstream default answered 429 with Retry-After: no call goes to it for 1m (it asked 1m 30s: INFERENCE_RETRY_MAX_DELAY)"
      ])
    }).pipe(Effect.provide(Layer.provideMerge(layer, logger)))
  })

  it.effect("an absurd wait asked (retry-after-ms 1e308, Retry-After 1e300) is a pause at the cap; the call goes on, and the next", () => {
    const { calls, layer } = scripted([
      { status: 503, headers: { "retry-after-ms": "1e308" } },
      { status: 429, headers: { "retry-after": "1e300" } },
      { status: 200 }
    ])
    const { lines, logger } = loggedHolding("no call goes to it")
    return Effect.gen(function*() {
      const fiber = yield* Effect.fork(send())
      yield* TestClock.adjust("60 seconds")
      expect(calls.n).toBe(2)
      yield* TestClock.adjust("60 seconds")
      expect((yield* Fiber.join(fiber)).status).toBe(200)
      // The upstream's one permit is free: the next call goes out at once (a lost one held every call after it).
      const next = yield* Effect.fork(send())
      yield* TestClock.adjust("1 second")
      expect((yield* Fiber.join(next)).status).toBe(200)
      expect(lines).toEqual([
        "Upstream default answered 503 with retry-after-ms: no call goes to it for 1m (it asked 365d: INFERENCE_RETRY_MAX_DELAY)",
        "Upstream default answered 429 with Retry-After: no call goes to it for 1m (it asked 365d: INFERENCE_RETRY_MAX_DELAY)"
      ])
    }).pipe(Effect.provide(Layer.provideMerge(layer, logger)))
  })

  it.effect("an embedder's metrics that throw as an attempt is told lose no permit: that call fails, the next goes out", () => {
    const { calls, layer } = scripted([{ status: 200 }])
    let throws = 1
    const throwing = Layer.succeed(Metrics, {
      ...noopMetrics,
      attempts: () => () => {
        if (throws-- > 0) throw new Error("the embedder's metrics")
      }
    })
    return Effect.gen(function*() {
      expect(Exit.isFailure(yield* Effect.exit(send()))).toBe(true)
      const next = yield* Effect.fork(send())
      yield* TestClock.adjust("1 second")
      expect((yield* Fiber.join(next)).status).toBe(200)
      expect(calls.n).toBe(2)
    }).pipe(Effect.provide(layer.pipe(Layer.provide(throwing))))
  })

  it.effect("a 429 with no Retry-After but a rate limit run out (OpenAI's x-ratelimit-*) pauses the upstream until it resets", () => {
    const limited = {
      status: 429,
      headers: {
        "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-reset-requests": "1s", // not the limit that ran out
        "x-ratelimit-remaining-tokens": "0",
        "x-ratelimit-reset-tokens": "20s"
      }
    }
    const { calls, layer } = scripted([limited, limited, { status: 200 }], 3)
    const { lines, logger } = loggedHolding("no call goes to it")
    return Effect.gen(function*() {
      const fiber = yield* Effect.fork(send())
      yield* TestClock.adjust("19 seconds") // the backoff alone would have sent it again at ~1 s, and failed at ~3 s
      expect(calls.n).toBe(1)
      yield* TestClock.adjust("1 second")
      expect(calls.n).toBe(2)
      yield* TestClock.adjust("20 seconds")
      expect((yield* Fiber.join(fiber)).status).toBe(200)
      expect(lines).toEqual(["Upstream default answered 429 with x-ratelimit-reset-tokens: no call goes to it for 20s"])
    }).pipe(Effect.provide(Layer.provideMerge(layer, logger)))
  })

  it.effect("a 429 to a call sent alone that asks for no wait is said once, with what the upstream said", () => {
    const overloaded = { status: 429, body: `{"error":"Model is overloaded","error_type":"overloaded"}` }
    const { layer } = scripted([overloaded, overloaded, overloaded], 3)
    const { lines, logger } = loggedHolding("asking for no wait", true)
    return Effect.gen(function*() {
      const fiber = yield* Effect.fork(send())
      yield* TestClock.adjust("10 seconds")
      expect((yield* Fiber.join(fiber)).status).toBe(429) // its attempts spent
      expect(lines).toEqual([
        "WARN Upstream default answered 429 to a call sent alone (its concurrency limit at its floor, min_concurrency), asking for no " +
        "wait (Model is overloaded): each such request is retried after its backoff, and fails once its " +
        "INFERENCE_MAX_ATTEMPTS are spent."
      ])
    }).pipe(Effect.provide(Layer.provideMerge(layer, logger)))
  })

  it("a spent quota is OpenAI's insufficient_quota; a rate limit, a 5xx, a 402 or a budget (maybe the request's own) is none", () => {
    const answer = (status: number, error: unknown) => ({ status, text: "", json: { error }, requestId: "" })
    expect([
      answer(429, { message: "You exceeded your current quota", type: "insufficient_quota", code: "insufficient_quota" }),
      answer(429, { message: "You exceeded your current quota", type: "insufficient_quota", code: null })
    ].map(quotaSpent)).toEqual([true, true])
    expect([
      answer(429, { message: "Rate limit reached", type: "requests", code: "rate_limit_exceeded" }),
      answer(503, { code: "insufficient_quota" }),
      answer(400, { code: ["insufficient_quota"] }),
      { status: 429, text: "", json: null, requestId: "" },
      // OpenRouter's, which a smaller request passes; LiteLLM's, maybe the request's `user`'s.
      answer(402, { message: "This request requires more credits, or fewer max_tokens.", code: 402 }),
      answer(400, { message: "Budget has been exceeded!", type: "budget_exceeded", code: "400" })
    ].map(quotaSpent)).toEqual([false, false, false, false, false, false])
  })

  it.effect("an answer a line cannot keep (a captive portal's page) fails its line at once, said once a minute without its text", () => {
    const portal = { status: 200, body: "<html><body>Please log in to continue</body></html>", headers: { "content-type": "text/html" } }
    const { calls, layer } = scripted([portal])
    const { lines, logger } = loggedHolding("cannot keep", true)
    return Effect.gen(function*() {
      const failures = yield* Effect.all([send(), send(), send()].map(Effect.flip))
      expect(failures.map((f) => f._tag === "UpstreamFailure" && f.code)).toEqual(Array(3).fill("invalid_upstream_response"))
      expect(calls.n).toBe(3) // not retried
      expect(lines).toHaveLength(1)
      // Without the answer's text (the answer itself, often): its line in the error file has it.
      expect(lines[0]).toBe(`WARN Upstream default gave an answer a line cannot keep (invalid_upstream_response: The upstream answered 200 (content-type text/html) with a body of ${portal.body.length} characters that is not a JSON object.); such lines fail at once, not retried.`)
      expect(failures[0]!.message).toContain("Please log in")
    }).pipe(Effect.provide(Layer.provideMerge(layer, logger)))
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

  it("compactJson takes out the whitespace between tokens and nothing else", () => {
    expect(compactJson(`{\n  "a" : [ 1 ,\t2 ],\r\n  "b": "x  y"\n}\n`)).toBe(`{"a":[1,2],"b":"x  y"}`)
    // Strings ending in backslashes, escaped quotes, whitespace and brackets inside strings.
    expect(compactJson(`[ "\\\\" , "\\" ]" , "a \\\\\\" b" , " { } " ]`)).toBe(`["\\\\","\\" ]","a \\\\\\" b"," { } "]`)
    // Numbers as written: no rounding, no exponent rewriting, no trailing zeros dropped.
    const numbers = `{\n  "n": 123456789012345678901234567890,\n  "f": 1.50,\n  "e": 1E+400,\n  "z": -0.0\n}`
    expect(compactJson(numbers)).toBe(`{"n":123456789012345678901234567890,"f":1.50,"e":1E+400,"z":-0.0}`)
    expect(compactJson(`{"a":1}`)).toBe(`{"a":1}`)
    expect(compactJson(`  \n`)).toBe(``)
    // Against JSON.stringify on values it writes exactly, pretty-printed every way.
    for (let seed = 1; seed <= 300; seed++) {
      const json = randomJson(seed)
      const compact = JSON.stringify(json)
      for (const indent of [2, "\t", " \r\n "]) expect(compactJson(JSON.stringify(json, null, indent))).toBe(compact)
    }
  })

  it.effect("a pretty-printed answer is compacted to one line without re-serializing: big numbers kept as written", () => {
    const pretty = `{\n  ${BIGNUM_COMPACT.replace(":", ": ").replace(/,/g, ",\n    ")},\r\n  "id" : "x"\n}\n`
    const { layer } = scripted([{ status: 200, body: pretty }])
    return Effect.gen(function*() {
      const res = yield* send()
      expect(res.text).toBe(`{${BIGNUM_COMPACT},"id":"x"}`)
      expect(res.text).toContain("123456789012345678901234567890")
      expect(res.json).toEqual(JSON.parse(pretty))
    }).pipe(Effect.provide(layer))
  })

  it.effect("an app's own client is held to the upstream's time limit: a call never answered fails as upstream_timeout", () => {
    const { calls, layer } = scripted([{ status: 200, afterMs: 3_600_000 }], 2, { inferenceTimeout: Duration.seconds(5) })
    return Effect.gen(function*() {
      const fiber = yield* Effect.fork(send())
      yield* TestClock.adjust("5 seconds")
      yield* TestClock.adjust("2 seconds") // the backoff
      yield* TestClock.adjust("5 seconds")
      const error = yield* Effect.flip(Fiber.join(fiber))
      expect(calls.n).toBe(2)
      expect(error).toMatchObject({ _tag: "UpstreamFailure", code: "upstream_timeout" })
      expect(error.message).toContain("within 5s")
    }).pipe(Effect.provide(layer))
  })

  it.effect("an app's own client's calls count for load-aware dispatch from when they are handed to it, not until they end", () => {
    // A server whose queue stays empty, each call running for an hour: a call never said written was counted on top
    // of every reading until its end, and no more than max_waiting calls ever went out.
    let posts = 0
    const client = HttpClient.make((request, url) => {
      if (request.method === "GET") {
        const body = url.pathname === "/metrics" ? "vllm:num_requests_waiting 0\n" : `{"data":[{"id":"m"}]}`
        return Effect.succeed(HttpClientResponse.fromWeb(request, new Response(body, { status: 200 })))
      }
      posts++
      return Effect.as(Effect.sleep("1 hour"), HttpClientResponse.fromWeb(request, new Response(`{"ok":true}`)))
    })
    const layer = overClient(client, {
      upstreams: Option.some([{ name: "vllm", base_url: "http://vllm.test/v1", models: ["*"], metrics_url: "http://vllm.test/metrics", max_waiting: 1 }])
    })
    return Effect.gen(function*() {
      const sending = yield* Effect.forEach(Array.from({ length: 3 }), () => Effect.fork(send()))
      yield* TestClock.adjust("3500 millis") // readings at 0, 1, 2 and 3 s
      expect(posts).toBe(3) // one more after each reading: the one before is in it
      yield* Effect.forEach(sending, Fiber.interrupt)
    }).pipe(Effect.provide(layer))
  })

  it.effect("an app's own client is held to INFERENCE_MAX_RESPONSE_BYTES, whether the answer announces its size or not", () =>
    Effect.gen(function*() {
      const body = JSON.stringify({ text: "x".repeat(20_000) })
      for (const headers of [{}, { "content-length": String(body.length) }]) {
        const { calls, layer } = scripted([{ status: 200, body, headers }], 3, { inferenceMaxResponseBytes: 10_000 })
        const error = yield* Effect.flip(send()).pipe(Effect.provide(layer))
        expect(calls.n).toBe(1)
        expect(error).toMatchObject({ _tag: "UpstreamFailure", code: "upstream_response_too_large" })
        expect(error.message).toContain("larger than 10000 bytes")
      }
      const { layer } = scripted([{ status: 200, body: body.slice(0, 9_990) + `"}` }], 1, { inferenceMaxResponseBytes: 10_000 })
      expect((yield* send().pipe(Effect.provide(layer))).status).toBe(200)
    }))

  it.effect("a status past HTTP's (600, 999) is retried as a 5xx, and then invalid_upstream_response, its body not kept", () =>
    Effect.gen(function*() {
      for (const status of [600, 999]) {
        const { calls, layer } = scripted([{ status, body: `{"error":{"message":"odd"}}` }], 2)
        const error = yield* Effect.gen(function*() {
          const fiber = yield* Effect.fork(Effect.flip(send()))
          yield* TestClock.adjust("1 minute") // the retry's backoff
          return yield* Fiber.join(fiber)
        }).pipe(Effect.provide(layer))
        expect(calls.n).toBe(2)
        expect(error).toMatchObject({
          _tag: "UpstreamFailure",
          code: "invalid_upstream_response",
          message: `The upstream answered with status ${status}, which HTTP does not have (100–599).`
        })
      }
    }))

  it.effect("a 2xx answer that is not a JSON object is invalid_upstream_response, not retried", () =>
    Effect.gen(function*() {
      const html = `<!DOCTYPE html>\n<html>\n<body>${"Please sign in. ".repeat(40)}</body></html>`
      const bodies = [html, "", "null", "[1,2]", "42", `"text"`, `{"unterminated":`]
      for (const [i, body] of bodies.entries()) {
        const status = i === 1 ? 201 : 200
        const { calls, layer } = scripted([{ status, body, headers: { "content-type": i === 0 ? "text/html" : "application/json" } }, { status: 200 }])
        const error = yield* Effect.flip(send()).pipe(Effect.provide(layer))
        expect(calls.n).toBe(1)
        expect(error).toMatchObject({ _tag: "UpstreamFailure", code: "invalid_upstream_response" })
        expect(error.message).toContain(`answered ${status}`)
        if (i === 0) {
          expect(error.message).toContain("(content-type text/html)")
          expect(error.message).toContain("<!DOCTYPE html> <html> <body>Please sign in.")
          expect(error.message.length).toBeLessThan(320)
          expect(error.message.endsWith("…")).toBe(true)
        } else if (i === 1) {
          expect(error.message).toContain("empty body")
        } else {
          expect(error.message.endsWith(`: ${body}`)).toBe(true)
        }
      }
    }))

  it("the excerpt in the message never cuts a character in two", () =>
    Effect.gen(function*() {
      const { layer } = scripted([{ status: 200, body: `a${"😀".repeat(150)}` }])
      const error = yield* Effect.flip(send()).pipe(Effect.provide(layer))
      expect(error.message.endsWith(`${"😀".repeat(99)}…`)).toBe(true)
      expect(error.message.isWellFormed()).toBe(true)
    }).pipe(Effect.runPromise))

  it.effect("a non-2xx answer that is not a JSON object is wrapped in an error envelope, as before", () => {
    const { layer } = scripted([{ status: 400, body: "[1,2]" }])
    return Effect.gen(function*() {
      const res = yield* send()
      expect(res.status).toBe(400)
      expect(res.json).toEqual({ error: { message: "[1,2]", type: "upstream_error", param: null, code: null } })
    }).pipe(Effect.provide(layer))
  })

  it.effect("a connection lost after sending is retried, then reported as upstream_unreachable", () => {
    const { calls, layer } = scripted(["lost"], 2)
    return Effect.gen(function*() {
      const fiber = yield* Effect.fork(send())
      yield* TestClock.adjust("2 seconds")
      const error = yield* Effect.flip(Fiber.join(fiber))
      expect(calls.n).toBe(2)
      expect(error).toMatchObject({ _tag: "UpstreamFailure", code: "upstream_unreachable" })
      // Its line says what failed, not where the call went (the upstream's address is no project's to see); the
      // server's log does.
      expect(error.message).toBe("Upstream request failed: the connection failed.")
      expect((error as UpstreamFailure).logged).toBe("Upstream request failed: Transport: lost (POST http://upstream.test/v1/chat/completions)")
      // Fixed words for the code, whatever the client's text says (an address, a certificate's other hosts).
      const undici = (code: string, message: string) => ({ cause: Object.assign(new Error(message), { code }) })
      expect(transportFailureText(undici("UND_ERR_SOCKET", "other side closed (10.0.0.5:8000)"))).toBe("the upstream closed the connection (UND_ERR_SOCKET)")
      expect(transportFailureText(undici("HPE_INVALID_CONSTANT", "Expected HTTP/ at vllm.internal"))).toBe("its answer was not valid HTTP (HPE_INVALID_CONSTANT)")
      expect(transportFailureText(undici("fd00::5 said no", "x"))).toBe("the connection failed")
    }).pipe(Effect.provide(layer))
  })

  it.effect("a refused connection pauses the call, uncounted, until a probe gets an answer; then it goes through", () => {
    const { calls, layer } = scripted(["refused", "refused", { status: 200, body: `{"id":"late"}` }], 1)
    return Effect.gen(function*() {
      yield* TestClock.adjust("1 millis") // the start-up probe
      const probes = calls.probes
      const fiber = yield* Effect.fork(send())
      yield* Effect.repeat(Effect.yieldNow(), { while: () => calls.n === 0, times: 20 }) // the call goes out
      expect(calls.n).toBe(1)
      // Down: no call goes out, whatever the time, only probes (every 2 s); here the probe's 404 is an answer.
      yield* TestClock.adjust("2 seconds")
      expect(calls.probes).toBe(probes + 1)
      // Up again: the call is sent again; refused again, down again; the next probe lets it through.
      yield* TestClock.adjust("2 seconds")
      const res = yield* Fiber.join(fiber)
      expect(res.json).toEqual({ id: "late" })
      expect(calls.n).toBe(3) // one attempt allowed, three sent: a refusal is not an attempt
    }).pipe(Effect.provide(layer))
  })

  /**
   * Eight calls, one attempt each, one at a time, to an upstream whose calls get a 502 for the first 30 s and then
   * answer (`/models` as `models` says): their statuses, sorted, a minute on.
   */
  const eightCallsThroughAnOutage = (models: (now: number) => number) => {
    const client = HttpClient.make((request) =>
      Effect.map(Clock.currentTimeMillis, (now) => {
        const status = request.url.endsWith("/models") ? models(now) : now < 30_000 ? 502 : 200
        return HttpClientResponse.fromWeb(request, new Response(`{"ok":true}`, { status }))
      }))
    const layer = overClient(client, { inferenceMaxAttempts: 1, inferenceMaxConcurrency: 1, upstreamProbeInterval: Duration.seconds(2) })
    return Effect.gen(function*() {
      const fibers = yield* Effect.forEach(Array.from({ length: 8 }), () => Effect.fork(send()))
      yield* TestClock.adjust("1 minute")
      return (yield* Effect.forEach(fibers, Fiber.join)).map((r) => r.status).sort()
    }).pipe(Effect.provide(layer))
  }

  it.effect("an upstream answering 5xx to everything for 30 s: the calls not yet counted wait for it instead of failing", () =>
    Effect.gen(function*() {
      // Probes too get a 502 for the first 30 s. The first four failures count; the fifth in a row is an outage,
      // and the calls from then on wait for the upstream to answer again (the tries meanwhile count for nothing).
      const statuses = yield* eightCallsThroughAnOutage((now) => (now < 30_000 ? 502 : 200))
      expect(statuses).toEqual([200, 200, 200, 200, 502, 502, 502, 502])
    }))

  it.effect("a gateway whose GET /models answers 502 for good: its calls are tried all the same, and those tries count for nothing", () =>
    Effect.gen(function*() {
      // It routes only the inference paths: without the tries, the calls would wait for good.
      const statuses = yield* eightCallsThroughAnOutage(() => 502)
      expect(statuses).toEqual([200, 200, 200, 200, 502, 502, 502, 502])
    }))

  it.effect("a call that always gets a 5xx fails after its attempts, and its own failures never take the upstream down", () => {
    const { calls, layer } = scripted([{ status: 500 }], 5)
    return Effect.gen(function*() {
      const inference = yield* Inference
      const fiber = yield* Effect.fork(send())
      const down = yield* Effect.fork(inference.unreachable("m"))
      yield* TestClock.adjust("10 minutes")
      const res = yield* Fiber.join(fiber)
      expect(res.status).toBe(500)
      expect(calls.n).toBe(5) // its five attempts, none of them sent again
      expect(down.unsafePoll()).toBeNull() // a batch running it would have been paused (and the request sent anew)
    }).pipe(Effect.provide(layer))
  })

  it.effect("a send counts on from the attempts its caller says were used, and records those it counts", () => {
    const { calls, layer } = scripted([{ status: 500 }], 5)
    return Effect.gen(function*() {
      const inference = yield* Inference
      const attempts = { used: 3 } // three used by sends an outage interrupted
      const fiber = yield* Effect.fork(inference.send("/v1/chat/completions", `{"model":"m"}`, { attempts }))
      yield* TestClock.adjust("10 minutes")
      expect((yield* Fiber.join(fiber)).status).toBe(500)
      expect([calls.n, attempts.used]).toEqual([2, 5])
    }).pipe(Effect.provide(layer))
  })

  it.effect("a request waiting for its retry is handed back when asked; sent again, it waits out the rest of its backoff", () => {
    const { calls, layer } = scripted([{ status: 500 }, { status: 200, body: `{"id":"x"}` }], 5)
    return Effect.gen(function*() {
      const inference = yield* Inference
      const attempts: AttemptsUsed = { used: 0 }
      const { handBack, want } = manualHandBack()
      const first = yield* Effect.fork(inference.send("/v1/chat/completions", `{"model":"m"}`, { attempts, handBack }))
      yield* TestClock.adjust("0.5 seconds") // in its first backoff (1 s ± 20 %)
      want()
      expect(yield* Effect.flip(Fiber.join(first))).toBeInstanceOf(HandedBack)
      expect([calls.n, attempts.used]).toEqual([1, 1])

      const again = yield* Effect.fork(inference.send("/v1/chat/completions", `{"model":"m"}`, { attempts }))
      yield* TestClock.adjust("0.25 seconds") // 0.75 s since the 500: before its backoff's end
      expect(calls.n).toBe(1)
      yield* TestClock.adjust("0.5 seconds")
      expect((yield* Fiber.join(again)).status).toBe(200)
      expect(calls.n).toBe(2)
    }).pipe(Effect.provide(layer))
  })

  it.effect("a stored retry time further off than a backoff's longest (a node whose clock leapt stored it) is waited no longer than that", () => {
    const { calls, layer } = scripted([{ status: 200, body: `{"id":"x"}` }], 5)
    return Effect.gen(function*() {
      const inference = yield* Inference
      const attempts: AttemptsUsed = { used: 1, retryAt: (yield* Clock.currentTimeMillis) + 600_000 }
      const fiber = yield* Effect.fork(inference.send("/v1/chat/completions", `{"model":"m"}`, { attempts }))
      yield* TestClock.adjust("59 seconds")
      expect(calls.n).toBe(0)
      yield* TestClock.adjust("1 second") // INFERENCE_RETRY_MAX_DELAY: 60 s here
      expect((yield* Fiber.join(fiber)).status).toBe(200)
      expect(calls.n).toBe(1)
    }).pipe(Effect.provide(layer))
  })

  it.effect("a request waiting for a permit at its upstream is handed back when asked; the others go on", () => {
    const { calls, layer } = scripted([{ status: 200, body: `{"id":"x"}`, afterMs: 1000 }])
    return Effect.gen(function*() {
      const inference = yield* Inference
      const { handBack, want } = manualHandBack()
      // The limit is 1: the first call holds it until its answer, which comes after 1 s.
      const holder = yield* Effect.fork(inference.send("/v1/chat/completions", `{"model":"m"}`, { handBack }))
      const queued = yield* Effect.fork(inference.send("/v1/chat/completions", `{"model":"m"}`, { handBack }))
      const other = yield* Effect.fork(inference.send("/v1/chat/completions", `{"model":"m"}`))
      yield* TestClock.adjust("0.5 seconds")
      want()
      expect(yield* Effect.flip(Fiber.join(queued))).toBeInstanceOf(HandedBack)
      yield* TestClock.adjust("2 seconds")
      expect((yield* Fiber.join(holder)).status).toBe(200) // at the upstream when asked: answered
      expect((yield* Fiber.join(other)).status).toBe(200) // served in the turn the one handed back left
      expect(calls.n).toBe(2)
    }).pipe(Effect.provide(layer))
  })

  it.effect("a request interrupted just after the grant of its permit, while its hand-back watch stops, leaves no permit held", () => {
    const { layer } = scripted([{ status: 200, body: `{"id":"x"}`, afterMs: 1000 }])
    return Effect.gen(function*() {
      const inference = yield* Inference
      const sendWith = (handBack?: HandBack) => inference.send("/v1/chat/completions", `{"model":"m"}`, handBack === undefined ? {} : { handBack })
      // A hand-back never wanted, whose watch takes 100 ms to stop: the request, granted its permit, waits for it.
      const slowToStop: HandBack = { wanted: () => false, await: Effect.never.pipe(Effect.onInterrupt(() => Effect.sleep("100 millis"))) }
      // The limit is 1: the holder's answer comes after 1 s, and frees the permit for the waiting request.
      const holder = yield* Effect.fork(sendWith())
      yield* Effect.yieldNow()
      const waiting = yield* Effect.fork(sendWith(slowToStop))
      yield* TestClock.adjust("1 second")
      expect((yield* Fiber.join(holder)).status).toBe(200)
      // Cancelled (a batch's cancel, its expiry) in that instant: the permit it was given must come back.
      const stopping = yield* Effect.fork(Fiber.interrupt(waiting))
      yield* TestClock.adjust("200 millis")
      yield* Fiber.join(stopping)
      const next = yield* Effect.fork(sendWith())
      yield* TestClock.adjust("1 second")
      const outcome = yield* Fiber.await(next).pipe(Effect.timeoutOption("1 second"), Effect.fork)
      yield* TestClock.adjust("1 second")
      expect(Option.isSome(yield* Fiber.join(outcome))).toBe(true)
    }).pipe(Effect.provide(layer))
  })

  it.effect("a batch's upstream is picked once the lists of upstreams serving any model are known", () => {
    // Two upstreams serving "*": the first lists model-a only, and answers its GET /models late.
    const posts: Array<string> = []
    const client = HttpClient.make((request, url) =>
      Effect.gen(function*() {
        const first = url.host === "first.test"
        if (request.method === "GET") {
          if (first) yield* Effect.sleep("5 seconds")
          const data = [{ id: first ? "model-a" : "model-b" }]
          return HttpClientResponse.fromWeb(request, new Response(JSON.stringify({ data }), { status: 200 }))
        }
        posts.push(url.host)
        return HttpClientResponse.fromWeb(request, new Response(`{"ok":true}`, { status: 200 }))
      }))
    const layer = overClient(client, {
      upstreams: twoServingAny
    })
    return Effect.gen(function*() {
      const fiber = yield* Effect.fork(sendOnceReachable("model-b"))
      yield* TestClock.adjust("5 seconds")
      yield* Fiber.join(fiber)
      expect(posts).toEqual(["second.test"])
    }).pipe(Effect.provide(layer))
  })

  it.effect("a model goes to the first upstream in the file's order that may serve it: one down at start, its list unknown, is waited for", () => {
    // Two upstreams serving "*", both serving model-s: the first (local, say) is down at start; the second (a paid
    // one) answers. The model went to the second or the first depending on which had answered at start.
    let firstDown = true
    const posts: Array<string> = []
    const client = HttpClient.make((request, url) =>
      Effect.gen(function*() {
        const first = url.host === "first.test"
        if (first && firstDown) {
          return yield* Effect.fail(new HttpClientError.RequestError({ request, reason: "Transport", cause: { kind: "connect" } }))
        }
        if (request.method === "GET") {
          return HttpClientResponse.fromWeb(request, new Response(JSON.stringify({ data: [{ id: "model-s" }] }), { status: 200 }))
        }
        posts.push(url.host)
        return HttpClientResponse.fromWeb(request, new Response(`{"ok":true}`, { status: 200 }))
      }))
    const layer = overClient(client, {
      upstreamProbeInterval: Duration.seconds(1),
      upstreams: twoServingAny
    })
    return Effect.gen(function*() {
      const fiber = yield* Effect.fork(sendOnceReachable("model-s"))
      yield* TestClock.adjust("3 seconds")
      expect([posts, fiber.unsafePoll()]).toEqual([[], null]) // waiting for the first, not sent to the second
      // And the list of models says so: the second lists the model, but its requests are the first's for now.
      const inference = yield* Inference
      expect((yield* inference.models).data).toEqual([{ id: "model-s", ownedBy: "first" }])
      firstDown = false
      yield* TestClock.adjust("1 second")
      yield* Fiber.join(fiber)
      expect(posts).toEqual(["first.test"])
    }).pipe(Effect.provide(layer))
  })

  it.effect("a \"*\" upstream that answers GET /models without a list takes a model only no upstream after it names", () => {
    // A gateway without GET /models (404): a later upstream naming the model keeps it; others go to the gateway.
    const posts: Array<string> = []
    const client = HttpClient.make((request, url) =>
      Effect.sync(() => {
        if (request.method === "GET") return HttpClientResponse.fromWeb(request, new Response("not found", { status: 404 }))
        posts.push(url.host)
        return HttpClientResponse.fromWeb(request, new Response(`{"ok":true}`, { status: 200 }))
      }))
    const layer = overClient(client, {
      upstreams: Option.some([
        { name: "gateway", base_url: "http://gateway.test/v1", models: ["*"] },
        { name: "named", base_url: "http://named.test/v1", models: ["model-x"] }
      ])
    })
    return Effect.gen(function*() {
      for (const model of ["model-x", "model-y"]) yield* sendOnceReachable(model)
      expect(posts).toEqual(["named.test", "gateway.test"])
    }).pipe(Effect.provide(layer))
  })

  describe("over HTTP to the simulator", () => {
    const live = (url: string, maxResponseBytes?: number) =>
      InferenceLive.pipe(Layer.provide(AppConfig.layerWith({
        inferenceBaseUrl: url,
        inferenceTimeout: Duration.millis(300),
        inferenceMaxAttempts: 2,
        inferenceRetryBaseDelay: Duration.millis(10),
        ...(maxResponseBytes === undefined ? {} : { inferenceMaxResponseBytes: maxResponseBytes })
      })))
    const chat = (prompt: string) => `{"model":"sim-model","messages":[{"role":"user","content":"${prompt}"}]}`
    const hang = (i: number) => chat(`${i} [hang]`)
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

    it.live("an upstream that trickles its body times out per attempt like a silent one", () =>
      Effect.gen(function*() {
        const sim = yield* simulator
        const started = Date.now()
        // A byte every 20 ms: the answer would take about 8 s; each attempt has 300 ms.
        const error = yield* Effect.flatMap(Inference, (i) => i.send("/v1/chat/completions", chat("t [trickle:20]"))).pipe(
          Effect.provide(live(sim.url)),
          Effect.flip
        )
        expect(error).toMatchObject({ _tag: "UpstreamFailure", code: "upstream_timeout" })
        expect(sim.stats.requests).toBe(2)
        expect(Date.now() - started).toBeLessThan(3000)
      }).pipe(Effect.scoped))

    it.live("an answer larger than INFERENCE_MAX_RESPONSE_BYTES is upstream_response_too_large, not retried", () =>
      Effect.gen(function*() {
        const sim = yield* simulator
        const result = yield* Effect.flatMap(Inference, (i) => i.send("/v1/chat/completions", chat("b [big:0.1]"))).pipe(
          Effect.provide(live(sim.url, 50_000)),
          Effect.either
        )
        // Summed up: a failing run must not print a 100 KB answer.
        const outcome = Either.match(result, {
          onLeft: (e) => (e._tag === "UpstreamFailure" ? `${e.code}: ${e.message}` : String(e)),
          onRight: (res) => `answered ${res.status} with ${res.text.length} characters`
        })
        expect(outcome).toMatch(/^upstream_response_too_large: .*50000 bytes/)
        expect(sim.stats.requests).toBe(1)
        // The same answer under the limit comes back whole.
        const res = yield* Effect.flatMap(Inference, (i) => i.send("/v1/chat/completions", chat("b [big:0.1]"))).pipe(
          Effect.provide(live(sim.url, 200_000))
        )
        expect([res.status, res.text.length > 100_000]).toEqual([200, true])
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
    // RFC 9110's other two forms, which a recipient must read too (asctime's is in GMT, though it says no zone).
    expect(retryAfterMillis({ "retry-after": "Thursday, 01-Jan-26 00:00:07 GMT" }, now)).toEqual(expect.objectContaining({ value: 7000 }))
    const zone = process.env.TZ
    process.env.TZ = "America/New_York" // Node reads a new TZ at once: a server not on UTC
    try {
      expect(retryAfterMillis({ "retry-after": "Thu Jan  1 00:00:09 2026" }, now)).toEqual(expect.objectContaining({ value: 9000 }))
    } finally {
      if (zone === undefined) delete process.env.TZ
      else process.env.TZ = zone
    }
    expect(retryAfterMillis({}, 0)._tag).toBe("None")
    // Not a date HTTP writes, though Date.parse takes it for one (in the past: "no wait"): no wait said.
    for (const odd of ["next 2", "abc 12", "-5", "2026-01-01"]) expect(retryAfterMillis({ "retry-after": odd }, now)._tag).toBe("None")
  })

  it("reads when a rate limit that ran out resets, in OpenAI's durations or in seconds, Retry-After first", () => {
    const wait = (headers: Record<string, string>, status = 429) => Option.getOrUndefined(askedWait(status, headers, 0))
    expect(wait({ "x-ratelimit-reset-requests": "6m0s" })).toEqual({ ms: 360_000, header: "x-ratelimit-reset-requests" })
    // The header said in the log line is the one read.
    expect(wait({ "retry-after-ms": "2500", "retry-after": "3" })).toEqual({ ms: 2500, header: "retry-after-ms" })
    expect(wait({ "retry-after": "3" })).toEqual({ ms: 3000, header: "Retry-After" })
    expect(wait({ "x-ratelimit-reset-tokens": "1h2m3.5s" })?.ms).toBe(3_723_500)
    expect(resetMillis("20ms")).toBe(20)
    expect(wait({ "x-ratelimit-reset-tokens": "1s500ms" })?.ms).toBe(1500)
    expect(wait({ "x-ratelimit-reset-tokens": "7.5" })?.ms).toBe(7500) // plain seconds
    // The later of the limits run out; one with room left is not what refused the call.
    expect(wait({ "x-ratelimit-reset-requests": "2s", "x-ratelimit-reset-tokens": "9s" })?.header).toBe("x-ratelimit-reset-tokens")
    expect(wait({ "x-ratelimit-remaining-tokens": "100", "x-ratelimit-reset-tokens": "9s", "x-ratelimit-reset-requests": "2s" })?.ms).toBe(2000)
    expect(wait({ "x-ratelimit-remaining-requests": "5", "x-ratelimit-reset-requests": "2s" })).toBeUndefined()
    // None run out: the request was larger than what is left of the tokens (OpenAI's usual 429): the tokens' reset.
    expect(wait({ "x-ratelimit-remaining-requests": "59", "x-ratelimit-reset-requests": "1s", "x-ratelimit-remaining-tokens": "1500", "x-ratelimit-reset-tokens": "1.95s" }))
      .toEqual({ ms: 1950, header: "x-ratelimit-reset-tokens" })
    // Sooner than a second: the backoff's own wait is longer. A day or more: no duration of a limit (an epoch time).
    expect(wait({ "x-ratelimit-reset-tokens": "0s" })).toBeUndefined()
    expect(wait({ "x-ratelimit-reset-tokens": "1733500000" })).toBeUndefined()
    // Only a 429's: a 503 or a 500 of a server that sends them on every answer asks for no wait.
    expect(wait({ "x-ratelimit-reset-tokens": "9s" }, 503)).toBeUndefined()
    expect(wait({ "retry-after": "3" }, 503)).toEqual({ ms: 3000, header: "Retry-After" })
    expect(wait({ "retry-after": "3", "x-ratelimit-reset-tokens": "9s" })).toEqual({ ms: 3000, header: "Retry-After" })
    for (const odd of ["", "soon", "5m5m", "-1s", "1d"]) expect(wait({ "x-ratelimit-reset-tokens": odd })).toBeUndefined()
  })
})
