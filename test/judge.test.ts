/**
 * The verdict's feedback to an outage, on its own (`src/upstreams/judge.ts`): what the upstream-level tests cannot
 * time on demand.
 */
import { expect, it } from "@effect/vitest"
import { Duration, Effect, Option } from "effect"
import type { UpstreamResponse } from "../src/inference/answers.js"
import { AdaptiveLimit } from "../src/upstreams/adaptiveLimit.js"
import { Admission } from "../src/upstreams/Admission.js"
import { type Attempt, makeJudge } from "../src/upstreams/judge.js"
import type { Outage } from "../src/upstreams/outage.js"
import type { UpstreamSpec } from "../src/upstreams/UpstreamSpec.js"

const spec = { name: "main", baseUrl: "http://upstream.test/v1", apiKey: Option.none(), models: ["m"], maxConcurrency: 8 } as unknown as UpstreamSpec

const success: Attempt = {
  _tag: "Response",
  response: { status: 200, text: "{}", json: {}, requestId: "req_1" } as UpstreamResponse,
  headers: {}
}

it.effect("a success ends a trial only if its call was sent on trial: one sent before the outage and answered late says nothing of the server now", () =>
  Effect.gen(function*() {
    const clock = yield* Effect.clock
    let ended = 0
    const outage: Outage = {
      isDown: () => false,
      onTrial: () => true,
      onBlindTrial: () => false,
      markDown: () => Effect.void,
      succeeded: () => Effect.sync(() => void ended++),
      current: () => undefined,
      awaitUp: Effect.void,
      awaitDown: Effect.void
    }
    const limit = new AdaptiveLimit(1, 8)
    const { judge } = makeJudge({
      spec,
      limit,
      gate: new Admission(limit, clock),
      outage,
      clock,
      maxPause: Duration.seconds(60),
      probeInterval: Duration.millis(300),
      urlFor: (endpoint) => `${spec.baseUrl}${endpoint}`,
      modelsStatus: Effect.succeed(200),
      modelsAnsweredWell: () => true,
      versionPathMissing: Effect.succeed(false),
      log: (effect) => effect
    })
    const verdict = (sentOnTrial: boolean) => {
      const judged = judge("/chat/completions", { project: "p", deadline: 0 }, 1, success, limit.generation, sentOnTrial)
      return typeof judged === "string" ? Effect.succeed(judged) : judged
    }
    expect(yield* verdict(false)).toBe("final")
    expect(ended).toBe(0)
    expect(yield* verdict(true)).toBe("final")
    expect(ended).toBe(1)
  }))
