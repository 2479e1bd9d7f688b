/**
 * A batch whose every line makes the upstream fail (a 500 for each body) is told apart from an upstream that fails:
 * it took the upstream shared with other projects down and up again, 20 times a minute in a multi-tenant trial, and
 * their batches ran 3–4× slower (`upstreams/batchBlame.ts`).
 */
import { expect, layer } from "@effect/vitest"
import { Duration, Effect, Layer } from "effect"
import OpenAI from "openai"
import { AuthTest } from "../src/auth/Auth.js"
import { TurnLength } from "../src/batches/BatchRunner.js"
import { chatLine, createBatch, readLines, terminal, upload, waitFor } from "./support/Batches.js"
import { sideBySide } from "./support/SideBySide.js"
import { LogLines, logged, Simulators, testAppWithUpstreams } from "./support/Upstreams.js"
import { baseUrl } from "./support/TestApp.js"

const client = (apiKey: string) => Effect.map(baseUrl, (base) => new OpenAI({ baseURL: `${base}/v1`, apiKey, maxRetries: 0 }))

/** A batch of `lines` chat requests saying `prompt(i)`, created with `openai`'s key. */
const batchOf = (openai: OpenAI, lines: number, prompt: (i: number) => string) =>
  Effect.flatMap(upload(openai, Array.from({ length: lines }, (_, i) => chatLine(`line-${i}`, prompt(i), "model-a"))), (file) =>
    createBatch(openai, file.id))

/**
 * Two projects on one upstream, one batch permit (the batches take turns, of 1 s: the poison batch's turn holds
 * only its own calls), short backoffs and probe.
 */
const app = testAppWithUpstreams(
  { main: { models: ["model-a"], latencyMs: 10 } },
  ({ main }) => [{ name: "main", base_url: main!.url, models: ["model-a"] }],
  {
    maxConcurrentBatches: 1,
    maxConcurrentRequestsPerBatch: 8,
    upstreamProbeInterval: Duration.millis(200),
    inferenceRetryBaseDelay: Duration.millis(50),
    inferenceRetryMaxDelay: Duration.millis(200)
  },
  "sqlite",
  AuthTest({ apiKeys: ["key-a:projA", "key-b:projB"] })
).pipe(Layer.provide(Layer.succeed(TurnLength, Duration.seconds(1))))

sideBySide("a batch whose every line fails, on an upstream shared with another project", () => layer(app, { excludeTestServices: true })((it) => {
  it.effect("takes the upstream down at most once; the other project's batch completes, and each poison line fails after its attempts", () =>
    Effect.gen(function*() {
      const { main } = yield* Simulators
      const logs = yield* LogLines
      const a = yield* client("key-a")
      const b = yield* client("key-b")
      const healthy = yield* batchOf(b, 2000, (i) => `healthy ${i}`)
      yield* waitFor(b, healthy.id, (batch) => batch.request_counts!.completed > 0)
      const poison = yield* batchOf(a, 100, (i) => `[fail:500] poison ${i}`)

      const poisoned = yield* waitFor(a, poison.id, terminal, 15_000)
      const done = yield* waitFor(b, healthy.id, terminal, 15_000)
      expect([done.status, done.request_counts]).toEqual(["completed", { total: 2000, completed: 2000, failed: 0 }])
      // Its first run, with no success between, is taken for an outage; once the other batch's requests succeed
      // (on trial), its failures are its own: no outage again, down or on trial.
      expect(logged(logs, /Upstream main (is down|still failing after its probe answered)/).length).toBeLessThanOrEqual(1)
      expect(logged(logs, /Upstream main is up again/).length).toBeLessThanOrEqual(1)
      // Every line ends, each an error line of the upstream's 500 after its attempts: none lost, none expired.
      expect([poisoned.status, poisoned.request_counts]).toEqual(["completed", { total: 100, completed: 0, failed: 100 }])
      const failed = yield* readLines(a, poisoned.error_file_id)
      expect(failed.map((line) => line.custom_id).sort()).toEqual(Array.from({ length: 100 }, (_, i) => `line-${i}`).sort())
      expect(new Set(failed.map((line) => line.response?.status_code))).toEqual(new Set([500]))
      for (let i = 0; i < 100; i++) expect(main!.stats.byPrompt.get(`[fail:500] poison ${i}`)).toBeGreaterThanOrEqual(5)
    }), { timeout: 30_000 })
}))

// The same app, its own: the two suites run side by side.
sideBySide("an upstream shared by two projects", () => layer(app, { excludeTestServices: true })((it) => {
  it.effect("an upstream failing every call for everyone is still an outage: both projects' batches pause and lose no line", () =>
    Effect.gen(function*() {
      const { main } = yield* Simulators
      const logs = yield* LogLines
      const a = yield* client("key-a")
      const b = yield* client("key-b")
      const first = yield* batchOf(a, 600, (i) => `[sleep:20] first ${i}`)
      const second = yield* batchOf(b, 600, (i) => `[sleep:20] second ${i}`)
      yield* waitFor(a, first.id, (batch) => batch.request_counts!.completed > 0)
      main!.failAll = { status: 500 }
      yield* Effect.promise(() => new Promise((resolve) => setTimeout(resolve, 1500)))
      main!.failAll = undefined
      for (const [openai, batch] of [[a, first], [b, second]] as const) {
        const done = yield* waitFor(openai, batch.id, terminal, 20_000)
        expect([done.status, done.request_counts]).toEqual(["completed", { total: 600, completed: 600, failed: 0 }])
      }
      expect(logged(logs, /Upstream main is down/).length).toBeGreaterThan(0)
    }), { timeout: 30_000 })
}))
