/**
 * Each project's request rate (`MAX_REQUESTS_PER_MINUTE_PER_PROJECT`): the bucket's arithmetic, then through the
 * official client with keys over two projects and an operator key: a project beyond its rate gets OpenAI's 429
 * with when to try again (and the client, left to retry, waits and goes on), every answer carries the
 * `x-ratelimit-*-requests` headers, and neither another project, an operator nor the health check is held.
 */
import { describe, expect, it, layer } from "@effect/vitest"
import { Effect, Option } from "effect"
import OpenAI from "openai"
import { AuthTest } from "../src/auth/Auth.js"
import { RequestRates, resetText } from "../src/http/requestRates.js"
import { failure } from "./support/Batches.js"
import { baseUrl, testApp } from "./support/TestApp.js"

describe("RequestRates", () => {
  it("lets a tenth of the minute's requests go at once, then one each sixtieth of a minute ÷ limit", () => {
    const rates = new RequestRates(60) // one a second, six at once
    const taken = Array.from({ length: 7 }, () => rates.take("p", 0))
    expect(taken.map((c) => c.allowed)).toEqual([true, true, true, true, true, true, false])
    expect(taken.map((c) => c.remaining)).toEqual([5, 4, 3, 2, 1, 0, 0])
    expect(taken[6]!.retryAfterMs).toBe(1000)
    expect(rates.take("other", 0).allowed).toBe(true) // each project its own bucket
    expect(rates.take("p", 999).allowed).toBe(false)
    const next = rates.take("p", 1000)
    expect([next.allowed, next.remaining, next.resetMs]).toEqual([true, 0, 6000])
    expect(rates.take("p", 61_000)).toEqual({ allowed: true, remaining: 5, retryAfterMs: 0, resetMs: 1000 }) // full again, not more
    expect(new RequestRates(5).burst).toBe(1) // at least one
  })

  it("writes durations as OpenAI's reset headers do", () => {
    expect([resetText(17), resetText(999.2), resetText(1500), resetText(6000), resetText(360_000)]).toEqual(["17ms", "1000ms", "1.5s", "6s", "6m0s"])
  })
})

const KEYS = { a: "sk-rate-a-5c1e", b: "sk-rate-b-0d9f", admin: "sk-rate-op-77aa" }
const auth = AuthTest({ apiKeys: [`${KEYS.a}:projA`, `${KEYS.b}:projB`], adminApiKeys: [KEYS.admin] })

layer(testApp({ maxRequestsPerMinutePerProject: Option.some(60) }, "sqlite", { auth }), { excludeTestServices: true })("a project's rate", (it) => {
  it.effect("beyond it a 429 with Retry-After; other projects, operators and the health check go on; the client waits and goes on", () =>
    Effect.gen(function*() {
      const base = yield* baseUrl
      const client = (apiKey: string, maxRetries = 0) => new OpenAI({ baseURL: `${base}/v1`, apiKey, maxRetries })
      const a = client(KEYS.a)
      const answers = yield* Effect.promise(() => Promise.all(Array.from({ length: 6 }, () => a.files.list().withResponse())))
      expect(answers.map(({ response }) => response.headers.get("x-ratelimit-remaining-requests")).sort()).toEqual(["0", "1", "2", "3", "4", "5"])
      expect(answers[0]!.response.headers.get("x-ratelimit-limit-requests")).toBe("60")

      const refused = yield* failure(() => a.batches.list())
      expect(refused.status).toBe(429)
      expect(refused.error).toEqual({
        message: "Rate limit reached for requests per minute (RPM): Limit 60, at most 6 at once. Please try again in " +
          refused.headers.get("retry-after-ms") + "ms.",
        type: "requests",
        param: null,
        code: "rate_limit_exceeded"
      })
      expect(refused.headers.get("retry-after")).toBe("1")
      expect(refused.headers.get("x-should-retry")).toBeNull() // it passes: the SDKs are right to retry it
      expect(Number(refused.headers.get("retry-after-ms"))).toBeGreaterThan(0)
      expect(Number(refused.headers.get("retry-after-ms"))).toBeLessThanOrEqual(1000)

      // Another project, an operator, the health check: not held.
      expect((yield* Effect.promise(() => client(KEYS.b).files.list())).data).toEqual([])
      const operator = yield* Effect.promise(() => client(KEYS.admin).files.list().withResponse())
      expect(operator.response.headers.get("x-ratelimit-limit-requests")).toBeNull()
      expect((yield* Effect.promise(() => fetch(`${base}/v1/health`))).status).toBe(200)

      // The official client, left to retry, honours retry-after-ms and gets its answer.
      const started = Date.now()
      const waited = yield* Effect.promise(() => client(KEYS.a, 2).files.list())
      expect(waited.data).toEqual([])
      expect(Date.now() - started).toBeGreaterThan(100)
    }))
})
