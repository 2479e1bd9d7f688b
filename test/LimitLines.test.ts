/**
 * The lines an upstream's adaptive limit writes, in test time: at most one decrease line and one raise line every
 * 10 s (the first after a quiet spell at once), the next line saying how many decreases went unsaid before it, and the floor
 * as a warning at most once a minute. An upstream that refuses a call now and then keeps its limit moving, and a
 * line per move flooded the logs (a soak's three nodes: 8,600 lines in 35 minutes).
 */
import type * as HttpClientRequest from "@effect/platform/HttpClientRequest"
import { describe, expect, it } from "@effect/vitest"
import { Duration, Effect, Logger, TestClock } from "effect"
import { scriptedUpstream } from "./support/ScriptedUpstream.js"

/** 429 to a call whose body says `refuse`, else a chat completion. */
const answer = (request: HttpClientRequest.HttpClientRequest) =>
  JSON.stringify(request.body).includes("refuse")
    ? new Response(`{"error":{"message":"slow down"}}`, { status: 429 })
    : new Response(`{"id":"c","object":"chat.completion","choices":[]}`)

/** The limit's lines (`LEVEL message`), as the logger it gives writes them. */
const limitLines = () => {
  const lines: Array<string> = []
  const logger = Logger.make(({ logLevel, message }) => {
    const text = String(message)
    if (text.includes("concurrency limit")) lines.push(`${logLevel.label} ${text}`)
  })
  return { lines, logger }
}

describe("an upstream's concurrency limit lines", () => {
  it.scoped("say an overload's start at once, then at most one decrease and one raise per 10 s, and the floor once a minute", () => {
    const { lines, logger } = limitLines()
    return Effect.gen(function*() {
      const upstream = yield* scriptedUpstream({ answer, maxConcurrency: 16, probeInterval: Duration.seconds(1) })
      let requests = 0
      // Each a request of its own: a request's refusals halve the limit once.
      const call = (body: string) => upstream.attempt("/v1/chat/completions", body, { project: "p", deadline: requests++ }, 1)
      const refused = Effect.suspend(() => call("refuse"))
      const answered = Effect.suspend(() => call("hello"))

      yield* refused // 16 → 8: an overload begins, said at once
      yield* refused // 8 → 4, unsaid
      yield* refused // 4 → 2, unsaid
      yield* refused // 2 → 1, its floor: a warning, with the two unsaid
      yield* answered // raised to 2
      yield* answered
      yield* answered // raised to 3, unsaid
      yield* refused // 3 → 1, the floor again within a minute: no warning, and no line within 10 s
      yield* TestClock.adjust(Duration.seconds(10))
      yield* answered // raised to 2, 10 s on
      yield* refused // 2 → 1, 10 s on: said, at info
      expect(lines).toEqual([
        "INFO Upstream u: concurrency limit 16 → 8 (status 429)",
        "WARN Upstream u: concurrency limit 2 → 1 (status 429; 2 more since the last such line), its floor",
        "INFO Upstream u: concurrency limit raised to 2",
        // The unsaid 3 → 1 told by the next line, a raise: without it, it read as a rise from 1 to 2 after 2 → 1 had risen.
        "INFO Upstream u: concurrency limit raised to 2 (after 1 decrease not said, down to 1)",
        "INFO Upstream u: concurrency limit 2 → 1 (status 429)"
      ])
    }).pipe(Effect.provide(Logger.replace(Logger.defaultLogger, logger)))
  })
})

describe("an upstream whose limit goes back and forth at its ceiling", () => {
  it.scoped("says it once each way per 10 s, however often", () => {
    const { lines, logger } = limitLines()
    return Effect.gen(function*() {
      const upstream = yield* scriptedUpstream({ answer, maxConcurrency: 2, probeInterval: Duration.seconds(1) })
      let requests = 0
      const call = (body: string) => upstream.attempt("/v1/chat/completions", body, { project: "p", deadline: requests++ }, 1)
      // A refusal now and then, and recovered in between: 2 → 1 → 2, twenty times.
      for (let i = 0; i < 20; i++) {
        yield* Effect.suspend(() => call("refuse"))
        for (let j = 0; j < 3; j++) yield* Effect.suspend(() => call("hello"))
      }
      expect(lines).toEqual([
        "WARN Upstream u: concurrency limit 2 → 1 (status 429), its floor",
        "INFO Upstream u: concurrency limit raised to 2"
      ])
    }).pipe(Effect.provide(Logger.replace(Logger.defaultLogger, logger)))
  })
})
