/**
 * Outages lose nothing: while an upstream is unreachable the batches using it pause (no line fails, their permit
 * goes to batches of other upstreams) and resume by themselves once a probe gets through; only the expiry ends
 * them, with their finished results kept.
 */
import { expect, layer } from "@effect/vitest"
import { Duration, Effect } from "effect"
import { chatLine, createBatch, readLines, terminal, upload, waitFor } from "./support/Batches.js"
import { client, createModelBatch, logged, LogLines, Simulators, testAppWithUpstreams } from "./support/Upstreams.js"
import { sideBySide } from "./support/SideBySide.js"
import { baseUrl, eventually } from "./support/TestApp.js"

const sleep = (ms: number) => Effect.promise(() => new Promise((resolve) => setTimeout(resolve, ms)))

/**
 * The timings an outage outlasts, short so that a short outage outlasts them: a lease (renewed meanwhile, or the
 * batch's work would be taken for lost) and a request's whole retry budget (0.1 + 0.2 + 0.4 + 0.4 s: a request
 * counted as failing while the upstream is down would fail well within the outage).
 */
const outlasted = {
  leaseTtl: Duration.seconds(2),
  heartbeatInterval: Duration.millis(200),
  inferenceRetryBaseDelay: Duration.millis(100),
  inferenceRetryMaxDelay: Duration.millis(400)
}
/** How long the upstream of the first test is down: several leases and retry budgets. */
const OUTAGE_MS = 6000

const twoUpstreams = (overrides = {}) =>
  testAppWithUpstreams(
    { main: { models: ["model-a"], latencyMs: 20 }, other: { models: ["model-b"] } },
    ({ main, other }) => [
      { name: "main", base_url: main!.url, models: ["model-a"] },
      { name: "other", base_url: other!.url, models: ["model-b"] }
    ],
    { maxConcurrentBatches: 1, maxConcurrentRequestsPerBatch: 8, upstreamProbeInterval: Duration.millis(300), ...outlasted, ...overrides }
  )

/**
 * A test that stops the suite's upstream starts it again however it ends: a failed assertion left it down for the
 * suite's next tests, which then failed waiting for it.
 */
const upAgainAfter = <A, E, R>(test: Effect.Effect<A, E, R | Simulators>) =>
  Effect.ensuring(test, Effect.flatMap(Simulators, ({ main }) => Effect.promise(() => main!.start())))

/**
 * Until the app has logged a line of `event`, from line `from` on (at most 10 s: the assertions after it say what was
 * missed).
 */
const untilLogged = (logs: ReadonlyArray<{ readonly event?: unknown }>, event: string, from = 0) =>
  Effect.promise(async () => {
    const deadline = Date.now() + 10_000
    while (!logs.slice(from).some((l) => l.event === event) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20))
  })

/** `batch_upstream_up` by upstream, as `/metrics` gives it. */
const upGauge = Effect.flatMap(baseUrl, (url) =>
  Effect.promise(async () => {
    const text = await (await fetch(`${url}/metrics`)).text()
    return Object.fromEntries([...text.matchAll(/^batch_upstream_up\{upstream="(\w+)"\} (\d)$/gm)].map((m) => [m[1], Number(m[2])]))
  }))

/** `GET /v1/upstreams` (the extension), by upstream: its state, when its outage began, and why. */
const upstreamStates = Effect.flatMap(baseUrl, (url) =>
  Effect.promise(async () => {
    const list = await (await fetch(`${url}/v1/upstreams`)).json() as { data: Array<any> }
    return Object.fromEntries(list.data.map((u: any) => [u.name, [u.state, u.down_since, u.down_reason, u.models]]))
  }))

sideBySide("an upstream down for longer than a lease and a retry budget", () => layer(twoUpstreams(), { excludeTestServices: true })((it) => {
  it.effect("mid-batch: the batch pauses, another upstream's batch runs meanwhile, and every line completes", () =>
    Effect.gen(function*() {
      const { main } = yield* Simulators
      const logs = yield* LogLines
      const openai = yield* client
      const batch = yield* createModelBatch(1000, "model-a", "m")
      yield* waitFor(openai, batch.id, (b) => (b.request_counts?.completed ?? 0) >= 200)
      yield* Effect.promise(() => main!.stop())
      const stoppedAt = Date.now()
      yield* sleep(1000)
      const paused = yield* Effect.promise(() => openai.batches.retrieve(batch.id))
      expect(paused.status).toBe("in_progress")
      expect(paused.request_counts?.failed).toBe(0)
      // An outage an operator can alert on: the gauge, and the down line's event.
      expect(yield* upGauge).toEqual({ main: 0, other: 1 })
      // What a client polling the paused batch can read: its upstream is down, since when, and why: no server there
      // (the calls in flight as it stopped failed, but its probe finds nothing: it is said as it is now).
      const { main: mainDown, other: otherUp } = yield* upstreamStates
      expect(mainDown).toEqual(["down", expect.any(Number), "unreachable", ["model-a"]])
      expect(Math.abs(mainDown[1] - stoppedAt / 1000)).toBeLessThanOrEqual(2)
      expect(otherUp).toEqual(["up", null, null, ["model-b"]])
      expect(logs.filter((l) => l.event === "upstream.down").map((l) => l.message)).toEqual([expect.stringMatching(/^Upstream main is down/)])

      // With one batch permit, a batch of the other upstream still runs while the first waits.
      const other = yield* createModelBatch(20, "model-b", "o")
      expect((yield* waitFor(openai, other.id, terminal, 10_000)).status).toBe("completed")

      yield* sleep(Math.max(0, stoppedAt + OUTAGE_MS - Date.now()))
      const still = yield* Effect.promise(() => openai.batches.retrieve(batch.id))
      expect([still.status, still.request_counts?.failed]).toEqual(["in_progress", 0])
      const outage = (Date.now() - stoppedAt) / 1000
      yield* Effect.promise(() => main!.start())
      yield* untilLogged(logs, "upstream.up")
      const upBy = (Date.now() - stoppedAt) / 1000
      const done = yield* waitFor(openai, batch.id, terminal, 20_000)
      expect(done.status).toBe("completed")
      expect(done.request_counts).toEqual({ total: 1000, completed: 1000, failed: 0 })
      expect(done.error_file_id).toBeNull()
      const output = yield* readLines(openai, done.output_file_id)
      expect(output).toHaveLength(1000)
      expect(new Set(output.map((l) => l.custom_id)).size).toBe(1000)
      expect(logged(logs, /Upstream main is down/)).toHaveLength(1)
      expect(yield* upGauge).toEqual({ main: 1, other: 1 })
      expect((yield* upstreamStates).main).toEqual(["up", null, null, ["model-a"]])
      expect(logs.filter((l) => l.event === "upstream.up").map((l) => l.message)).toEqual([expect.stringMatching(/^Upstream main is up again/)])
      const upAgain = logged(logs, /Upstream main is up again after \d+ s/)
      expect(upAgain).toHaveLength(1)
      // Said in whole seconds, from the down line to the up line: between the outage the test made and the moment it
      // saw the up line (a busy machine's probe may come a second or more after the restart).
      const saidDown = Number(/after (\d+) s/.exec(upAgain[0]!)![1])
      expect(saidDown).toBeGreaterThanOrEqual(Math.floor(outage - 1))
      expect(saidDown).toBeLessThanOrEqual(Math.ceil(upBy))
    }), { timeout: 60_000 })
}))

// An app of its own: the test above waits out its outage beside these.
sideBySide("an upstream down at the create, and requests that fail alone", () => layer(twoUpstreams(), { excludeTestServices: true })((it) => {
  it.effect("down when the batch is created: it waits without failing a line, then completes", () =>
    Effect.gen(function*() {
      const { main } = yield* Simulators
      const openai = yield* client
      yield* Effect.promise(() => main!.stop())
      const batch = yield* createModelBatch(50, "model-a", "d")
      // Validated (its time depends on the machine's load), then given time to fail lines if it would.
      yield* waitFor(openai, batch.id, (b) => b.status !== "validating", 10_000)
      yield* sleep(1500)
      const waiting = yield* Effect.promise(() => openai.batches.retrieve(batch.id))
      expect(waiting.status).toBe("in_progress")
      expect(waiting.request_counts).toEqual({ total: 50, completed: 0, failed: 0 })
      yield* Effect.promise(() => main!.start())
      const done = yield* waitFor(openai, batch.id, terminal, 20_000)
      expect(done.request_counts).toEqual({ total: 50, completed: 50, failed: 0 })
    }).pipe(upAgainAfter), { timeout: 30_000 })

  it.effect("a route removed (calls and GET /models answered 404, where they answered before) pauses the batch, on trial too; back, it completes", () =>
    Effect.gen(function*() {
      const { main } = yield* Simulators
      const logs = yield* LogLines
      const openai = yield* client
      const before = logs.length
      const since = () => logs.slice(before)
      const batch = yield* createModelBatch(400, "model-a", "g")
      yield* waitFor(openai, batch.id, (b) => (b.request_counts?.completed ?? 0) >= 20)
      main!.gone = true
      yield* untilLogged(logs, "upstream.down", before)
      expect(since().filter((l) => l.event === "upstream.down").map((l) => l.message)).toEqual([
        expect.stringMatching(/^Upstream main is down \(POST \S+\/chat\/completions and GET \/models answer 404, where they answered before/)
      ])
      // Five probe intervals: each probe answered 404 (a trial), each trial's one call too (down again, no line failed).
      yield* sleep(1500)
      const paused = yield* Effect.promise(() => openai.batches.retrieve(batch.id))
      expect([paused.status, paused.request_counts?.failed]).toEqual(["in_progress", 0])
      expect(since().filter((l) => l.event === "upstream.up")).toHaveLength(0)
      main!.gone = false
      const done = yield* waitFor(openai, batch.id, terminal, 20_000)
      expect(done.request_counts).toEqual({ total: 400, completed: 400, failed: 0 })

      // A 404 not about the model while GET /models answers: the request's own, tried once more (a route put back as
      // its call went out would have failed its line), then failed with it; the upstream stays up.
      const prompt = `[fail:404] its own ${Date.now()}`
      const own = yield* createBatch(openai, (yield* upload(openai, [chatLine("own-404", prompt, "model-a")])).id)
      const ended = yield* waitFor(openai, own.id, terminal, 20_000)
      expect(ended.request_counts).toEqual({ total: 1, completed: 0, failed: 1 })
      expect((yield* readLines(openai, ended.error_file_id))[0].response.status_code).toBe(404)
      expect(main!.stats.byPrompt.get(prompt)).toBe(2)
      expect(since().filter((l) => l.event === "upstream.down")).toHaveLength(1)
    }).pipe(Effect.ensuring(Effect.flatMap(Simulators, ({ main }) => Effect.sync(() => void (main!.gone = false)))), upAgainAfter), { timeout: 40_000 })

  it.effect("a request that keeps getting a 500 alone fails after its attempts; the upstream is never taken down", () =>
    Effect.gen(function*() {
      const { main } = yield* Simulators
      const logs = yield* LogLines
      const openai = yield* client
      const downBefore = logged(logs, /Upstream main is down/).length
      const prompt = "[fail:500] poison"
      const file = yield* upload(openai, [chatLine("poison", prompt, "model-a")])
      const poison = yield* createBatch(openai, file.id)
      const done = yield* waitFor(openai, poison.id, terminal, 20_000)
      expect([done.status, done.request_counts]).toEqual(["completed", { total: 1, completed: 0, failed: 1 }])
      const [line] = yield* readLines(openai, done.error_file_id)
      expect(line.custom_id).toBe("poison")
      expect(line.response.status_code).toBe(500)
      expect(main!.stats.byPrompt.get(prompt)).toBe(5) // INFERENCE_MAX_ATTEMPTS, none sent again after a pause
      expect(logged(logs, /Upstream main is down/)).toHaveLength(downBefore)
      // With the one batch permit free again, the next batch on that upstream runs.
      const next = yield* createModelBatch(20, "model-a", "n")
      expect((yield* waitFor(openai, next.id, terminal, 10_000)).request_counts).toEqual({ total: 20, completed: 20, failed: 0 })
    }), { timeout: 30_000 })

  it.effect("requests that keep getting a 500, the last the batch has to send, fail after their attempts; the upstream is never taken down", () =>
    Effect.gen(function*() {
      const { main } = yield* Simulators
      const logs = yield* LogLines
      const openai = yield* client
      const downBefore = logged(logs, /Upstream main is down/).length
      // Six lines the server fails (more than make an outage) among good ones, in one window of eight: their first
      // attempts fail between successes, their retries, once the good lines are done, with none between (a soak
      // trial's batches ended so, and the upstream went down again and again).
      const lines = Array.from({ length: 16 }, (_, i) =>
        i % 2 === 0 && i < 12 ? chatLine(`bad-${i}`, `[fail:500] bad ${i}`, "model-a") : chatLine(`good-${i}`, `good ${i}`, "model-a"))
      const batch = yield* createBatch(openai, (yield* upload(openai, lines)).id)
      const done = yield* waitFor(openai, batch.id, terminal, 25_000)
      expect([done.status, done.request_counts]).toEqual(["completed", { total: 16, completed: 10, failed: 6 }])
      const failed = yield* readLines(openai, done.error_file_id)
      expect(failed.map((l) => l.custom_id).sort()).toEqual(["bad-0", "bad-10", "bad-2", "bad-4", "bad-6", "bad-8"])
      expect(logged(logs, /Upstream main is down/)).toHaveLength(downBefore)
      // INFERENCE_MAX_ATTEMPTS each, none sent again after a pause.
      expect(Array.from({ length: 6 }, (_, k) => main!.stats.byPrompt.get(`[fail:500] bad ${2 * k}`))).toEqual(Array(6).fill(5))
    }), { timeout: 30_000 })

  it.effect("requests whose first calls all fail, answered before the others of their window: not an outage, each fails after its attempts", () =>
    Effect.gen(function*() {
      const { main } = yield* Simulators
      const logs = yield* LogLines
      const openai = yield* client
      const downs = () => logged(logs, /Upstream main (is down|still failing after its probe answered)/).length
      const before = downs()
      // Six failing lines first, answered long before the good ones of the same window (100 ms, within the probe
      // interval a run's last failure waits for the calls still out): as an outage would be, but for those calls.
      const lines = Array.from({ length: 16 }, (_, i) =>
        i < 6 ? chatLine(`bad-${i}`, `[fail:500] first ${i}`, "model-a") : chatLine(`good-${i}`, `[sleep:100] good ${i}`, "model-a"))
      const batch = yield* createBatch(openai, (yield* upload(openai, lines)).id)
      const done = yield* waitFor(openai, batch.id, terminal, 25_000)
      expect([done.status, done.request_counts]).toEqual(["completed", { total: 16, completed: 10, failed: 6 }])
      expect(downs() - before).toBe(0)
      for (let i = 0; i < 6; i++) expect(main!.stats.byPrompt.get(`[fail:500] first ${i}`)).toBe(5)
    }), { timeout: 30_000 })

  it.effect("requests always answered 503 at once, a batch's first lines, while the others are on their way: never an outage, and the batch ends", () =>
    Effect.gen(function*() {
      const logs = yield* LogLines
      const openai = yield* client
      const downs = () => logged(logs, /Upstream main (is down|still failing after its probe answered)/).length
      const before = downs()
      // Five lines refused at once, while the window's others take 100 ms: taken for an outage, the upstream went
      // down, and on each trial the five (first in the queue) took it down again, for good.
      const lines = Array.from({ length: 30 }, (_, i) =>
        i < 5 ? chatLine(`refused-${i}`, `[fail:503] refused ${i}`, "model-a") : chatLine(`fine-${i}`, `[sleep:100] fine ${i}`, "model-a"))
      const batch = yield* createBatch(openai, (yield* upload(openai, lines)).id)
      const done = yield* waitFor(openai, batch.id, terminal, 25_000)
      expect([done.status, done.request_counts]).toEqual(["completed", { total: 30, completed: 25, failed: 5 }])
      expect(downs() - before).toBe(0)
    }), { timeout: 30_000 })
}))

sideBySide("an upstream that answers GET /models and 503 to every call", () => layer(twoUpstreams(), { excludeTestServices: true })((it) => {
  it.effect("stays down until a call succeeds: one down line, one up line, no line failed, its limit not halved at each trial", () =>
    Effect.gen(function*() {
      const { main } = yield* Simulators
      const logs = yield* LogLines
      const openai = yield* client
      const limit = Effect.flatMap(baseUrl, (url) =>
        Effect.promise(async () =>
          Number(/^batch_upstream_concurrency_limit\{upstream="main"\} (\d+)$/m.exec(await (await fetch(`${url}/metrics`)).text())![1])
        ))
      const batch = yield* createModelBatch(300, "model-a", "f")
      yield* waitFor(openai, batch.id, (b) => (b.request_counts?.completed ?? 0) >= 20)
      main!.failAll = { status: 503 }
      yield* untilLogged(logs, "upstream.down")
      const atDown = yield* limit
      // Ten probe intervals: each probe is answered, and each trial's calls get a 503.
      const gauges: Array<number> = []
      for (let i = 0; i < 10; i++) {
        yield* sleep(300)
        gauges.push((yield* upGauge).main!)
      }
      const trials = logged(logs, /Upstream main (answers GET \/models again|still failing after its probe answered)/)
      expect(trials.length).toBeGreaterThanOrEqual(2) // 4 or more on a quiet machine
      // Down throughout: said once, never up in between, for the logs as for the gauge.
      expect(logs.filter((l) => l.event === "upstream.down")).toHaveLength(1)
      expect(logs.filter((l) => l.event === "upstream.up")).toHaveLength(0)
      expect(gauges).toEqual(Array(10).fill(0))
      // The limit as the outage left it: no trial halved it (ten did, before: 256 → 1).
      expect(yield* limit).toBe(atDown)
      const paused = yield* Effect.promise(() => openai.batches.retrieve(batch.id))
      expect([paused.status, paused.request_counts?.failed]).toEqual(["in_progress", 0])

      main!.failAll = undefined
      const done = yield* waitFor(openai, batch.id, terminal, 20_000)
      expect(done.request_counts).toEqual({ total: 300, completed: 300, failed: 0 })
      expect(logs.filter((l) => l.event === "upstream.up").map((l) => l.message)).toEqual([expect.stringMatching(/^Upstream main is up again/)])
      expect(yield* upGauge).toEqual({ main: 1, other: 1 })
      expect(yield* limit).toBeGreaterThanOrEqual(atDown)
    }), { timeout: 40_000 })
}))

sideBySide("a request refused for good on trial", () => layer(twoUpstreams({ inferenceMaxAttempts: 3 }), { excludeTestServices: true })((it) => {
  // Fewer than five requests failing never take the upstream down again, and the trial lasts until a success: a 503
  // that went again without counting on trial was sent for ever, one call at a time, with no pause.
  it.effect("after an outage, a lone request answered 503 to every call fails after its attempts", () =>
    Effect.gen(function*() {
      const { main } = yield* Simulators
      const logs = yield* LogLines
      const openai = yield* client
      yield* Effect.promise(() => main!.stop())
      const batch = yield* createModelBatch(1, "model-a", "t")
      yield* untilLogged(logs, "upstream.down")
      // Its request waiting for the upstream (not still being validated) when the trial starts: a trial no call came
      // to would end, and the request's 503s then answered as an overload's.
      yield* waitFor(openai, batch.id, (b) => b.status !== "validating", 10_000)
      yield* sleep(300)
      main!.reset()
      main!.failAll = { status: 503 }
      yield* Effect.promise(() => main!.start())
      const done = yield* waitFor(openai, batch.id, terminal, 15_000)
      expect(done.request_counts).toEqual({ total: 1, completed: 0, failed: 1 })
      // Its first 503 on trial is the outage's; then its 3 attempts.
      expect(main!.stats.requests).toBeGreaterThanOrEqual(3)
      expect(main!.stats.requests).toBeLessThanOrEqual(4)
      main!.failAll = undefined
    }), { timeout: 30_000 })
}))

/** A 60-line batch on upstream `keyed`, 5 of its lines done; the upstream's down and up lines so far, to count from. */
const runningOnKeyed = (tag: string) =>
  Effect.gen(function*() {
    const { keyed } = yield* Simulators
    const logs = yield* LogLines
    const openai = yield* client
    const events = (event: string) => logs.filter((l) => l.event === event)
    const [downs, ups] = [events("upstream.down").length, events("upstream.up").length]
    const batch = yield* createModelBatch(60, "model-k", tag)
    yield* waitFor(openai, batch.id, (b) => (b.request_counts?.completed ?? 0) >= 5)
    return { keyed: keyed!, logs, openai, events, downs, ups, batch }
  })

sideBySide("an upstream that revokes its key mid-batch", () => layer(
  testAppWithUpstreams(
    { keyed: { models: ["model-k"], apiKey: "sk-right", latencyMs: 40 } },
    ({ keyed }) => [{ name: "keyed", base_url: keyed!.url, models: ["model-k"], api_key: "sk-right" }],
    // 500 ms: a trial no call comes to for five intervals is taken for up (`idleTrial`); in 1.5 s (300 ms), under the
    // whole suite on two cores, the paused batch's calls once came too late, and the key's refusal was a new outage.
    { maxConcurrentBatches: 1, maxConcurrentRequestsPerBatch: 4, upstreamProbeInterval: Duration.millis(500), ...outlasted }
  ),
  { excludeTestServices: true }
)((it) => {
  // Its calls and its GET /models answer 401: every line failed at full speed, a 50,000-line batch burnt in minutes.
  it.effect("pauses its batch (no line failed) while GET /models answers 401 too, and finishes it once the key works again", () =>
    Effect.gen(function*() {
      const { keyed } = yield* Simulators
      const logs = yield* LogLines
      const openai = yield* client
      const batch = yield* createModelBatch(60, "model-k", "k")
      yield* waitFor(openai, batch.id, (b) => (b.request_counts?.completed ?? 0) >= 5)
      keyed!.apiKey = "sk-rotated"
      yield* untilLogged(logs, "upstream.down")
      expect(logs.find((l) => l.event === "upstream.down")!.message).toMatch(/refuses its key: POST .* and GET \/models answer 401; check its key \(from api_key\)/)
      yield* sleep(2500) // five probe intervals, each answered 401: down throughout, no trial
      const paused = yield* Effect.promise(() => openai.batches.retrieve(batch.id))
      expect([paused.status, paused.request_counts?.failed]).toEqual(["in_progress", 0])
      expect(logs.filter((l) => l.event === "upstream.up")).toHaveLength(0)

      keyed!.apiKey = "sk-right"
      const done = yield* waitFor(openai, batch.id, terminal, 20_000)
      expect(done.request_counts).toEqual({ total: 60, completed: 60, failed: 0 })
      expect(logs.filter((l) => l.event === "upstream.up")).toHaveLength(1)
    }), { timeout: 30_000 })

  it.scoped("an upstream down that comes back with another key says so: the outage's new reason is warned of, once", () =>
    Effect.gen(function*() {
      const { batch, downs, events, keyed, logs, openai, ups } = yield* runningOnKeyed("r")
      // Back up with its key whatever happens: the next test's batch runs on it (a failure here failed that one too).
      yield* Effect.addFinalizer(() => Effect.promise(() => ((keyed.apiKey = "sk-right"), keyed.start())))
      yield* Effect.promise(() => keyed.stop())
      yield* eventually(() => expect(events("upstream.down")).toHaveLength(downs + 1), 10_000)
      keyed.apiKey = "sk-rotated"
      yield* Effect.promise(() => keyed.start())
      yield* untilLogged(logs, "upstream.still_down")
      yield* sleep(2500) // five probe intervals: each trial refused again, said no more
      const still = events("upstream.still_down")
      expect(still.map((l) => l.message)).toEqual([
        expect.stringMatching(/^Upstream keyed is still down, for another reason \(it refuses its key: .*check its key \(from api_key\)\)/)
      ])
      expect(events("upstream.down")).toHaveLength(downs + 1)
      // The upstream's lines are in no batch's trace (the batch that noticed the outage is not theirs).
      expect(logs.filter((l) => l.message.startsWith("Upstream keyed")).map((l) => l.traceId)).toEqual(
        logs.filter((l) => l.message.startsWith("Upstream keyed")).map(() => undefined)
      )
      expect(logs.some((l) => l.traceId !== undefined)).toBe(true)
      const paused = yield* Effect.promise(() => openai.batches.retrieve(batch.id))
      expect([paused.status, paused.request_counts?.failed]).toEqual(["in_progress", 0])

      keyed.apiKey = "sk-right"
      const done = yield* waitFor(openai, batch.id, terminal, 20_000)
      expect(done.request_counts).toEqual({ total: 60, completed: 60, failed: 0 })
      expect(events("upstream.up")).toHaveLength(ups + 1)
    }), { timeout: 40_000 })

  // OpenAI's 429 `insufficient_quota`: GET /models still answers 200, and every line failed after its attempts.
  it.scoped("an account whose quota is spent pauses its batch (no line failed) until its calls are taken again", () =>
    Effect.gen(function*() {
      const { batch, downs, events, keyed, openai, ups } = yield* runningOnKeyed("q")
      yield* Effect.addFinalizer(() => Effect.sync(() => void (keyed.failAll = undefined)))
      keyed.failAll = { status: 429, code: "insufficient_quota", message: "You exceeded your current quota, please check your plan and billing details." }
      yield* eventually(() => expect(events("upstream.down")).toHaveLength(downs + 1), 10_000)
      expect(events("upstream.down").at(-1)!.message).toMatch(
        /^Upstream keyed is down \(its account may make no more calls: POST .*\/chat\/completions answered status 429: You exceeded your current quota, .*; add credit\)/
      )
      const calls = keyed.stats.rejected
      yield* sleep(2500) // five probe intervals, each trial's one call refused again: down throughout
      const paused = yield* Effect.promise(() => openai.batches.retrieve(batch.id))
      expect([paused.status, paused.request_counts?.failed]).toEqual(["in_progress", 0])
      const [state, , reason] = (yield* upstreamStates).keyed
      expect([state, reason]).toEqual([expect.stringMatching(/^(down|recovering)$/), "quota"])
      expect(keyed.stats.rejected - calls).toBeLessThanOrEqual(6) // a trial's call at most per probe interval
      expect(events("upstream.up")).toHaveLength(ups)

      keyed.failAll = undefined
      const done = yield* waitFor(openai, batch.id, terminal, 20_000)
      expect(done.request_counts).toEqual({ total: 60, completed: 60, failed: 0 })
      expect(events("upstream.up")).toHaveLength(ups + 1)
    }), { timeout: 30_000 })
}))

// Its own app: the outages it makes would be counted by the tests beside it.
sideBySide("a batch of requests that always fail", () => layer(twoUpstreams(), { excludeTestServices: true })((it) => {
  it.effect("a batch whose every line gets a 500 ends, each line failed after its attempts, however often the upstream went down", () =>
    Effect.gen(function*() {
      const { main } = yield* Simulators
      const openai = yield* client
      // Three windows of lines the server fails: each trial's calls take it down again (they cannot be told from an
      // outage's), and a rule that sent them again there without counting kept the batch until it expired.
      const lines = Array.from({ length: 24 }, (_, i) => chatLine(`all-${i}`, `[fail:500] all ${i}`, "model-a"))
      const batch = yield* createBatch(openai, (yield* upload(openai, lines)).id)
      const done = yield* waitFor(openai, batch.id, terminal, 45_000) // ~7 s on a quiet machine
      expect([done.status, done.request_counts]).toEqual(["completed", { total: 24, completed: 0, failed: 24 }])
      for (let i = 0; i < 24; i++) expect(main!.stats.byPrompt.get(`[fail:500] all ${i}`)).toBeGreaterThanOrEqual(5)
    }), { timeout: 50_000 })
}))

// A window long enough that the upstream stops well before it ends on a loaded machine: a request whose call the
// stop cut, its next attempt due past the expiry, fails with its own failure (upstream_unreachable), not expired.
sideBySide("an upstream that never comes back", () => layer(twoUpstreams({ completionWindow: Duration.seconds(7) }), { excludeTestServices: true })((it) => {
  it.effect("the batch expires with its finished results kept and the rest batch_expired", () =>
    Effect.gen(function*() {
      const { main } = yield* Simulators
      const openai = yield* client
      const batch = yield* createModelBatch(400, "model-a", "e")
      yield* waitFor(openai, batch.id, (b) => (b.request_counts?.completed ?? 0) >= 50)
      yield* Effect.promise(() => main!.stop())
      const done = yield* waitFor(openai, batch.id, terminal, 20_000)
      expect(done.status).toBe("expired")
      const output = yield* readLines(openai, done.output_file_id)
      const errors = yield* readLines(openai, done.error_file_id)
      expect(output.length).toBeGreaterThanOrEqual(50)
      expect(output.every((l) => l.response.status_code === 200)).toBe(true)
      expect(output.length + errors.length).toBe(400)
      expect(new Set(errors.map((l) => l.error.code))).toEqual(new Set(["batch_expired"]))
      // Its lines say why: OpenAI's sentence, then the upstream's outage.
      expect(errors[0].error.message).toMatch(
        /^This request could not be executed before the completion window expired\. Its upstream 'main' was down \(unreachable since \d{4}-\d\d-\d\dT[\d:.]+Z\)\.$/
      )
      expect(done.request_counts).toEqual({ total: 400, completed: output.length, failed: errors.length })
    }), { timeout: 30_000 })
}))

sideBySide("a run's last failure, held for the calls still out", () => layer(twoUpstreams(), { excludeTestServices: true })((it) => {
  it.effect("is reached once a probe interval passes with no answer: the upstream goes down, though a call still hangs", () =>
    Effect.gen(function*() {
      const logs = yield* LogLines
      const openai = yield* client
      // Five refused at once while one call hangs (no answer to wait for): the fifth refusal's verdict waits for it a
      // probe interval (300 ms), then takes the upstream down. Its wait uninterruptible, it waited for ever.
      const lines = [
        chatLine("hangs", "[hang] one", "model-a"),
        ...Array.from({ length: 5 }, (_, i) => chatLine(`refused-${i}`, `[fail:503] held ${i}`, "model-a"))
      ]
      const batch = yield* createBatch(openai, (yield* upload(openai, lines)).id)
      yield* untilLogged(logs, "upstream.down")
      // What the last said, not its status alone (a llama.cpp's 503 "Loading model" read as a server broken).
      expect(logged(logs, /^Upstream main is down \(5 requests failing in a row, the last: status 503: Injected failure 503/)).toHaveLength(1)
      yield* Effect.promise(() => openai.batches.cancel(batch.id))
      expect((yield* waitFor(openai, batch.id, terminal, 10_000)).status).toBe("cancelled")
    }), { timeout: 30_000 })
}))

sideBySide("requests that hang, on trial", () =>
  layer(twoUpstreams({ maxConcurrentBatches: 2, inferenceTimeout: Duration.seconds(1) }), { excludeTestServices: true })((it) => {
    it.effect("the trial's one call goes to each batch in turn: another batch runs, the one whose requests hang waits its turns", () =>
      Effect.gen(function*() {
        const logs = yield* LogLines
        const openai = yield* client
        // Requests that never answer: timed out together, they take the upstream down.
        const hangs = Array.from({ length: 8 }, (_, i) => chatLine(`hang-${i}`, `[hang] ${i}`, "model-a"))
        const hanging = yield* createBatch(openai, (yield* upload(openai, hangs)).id)
        yield* untilLogged(logs, "upstream.down")
        // By deadline alone, every trial call went to the hanging requests, one timeout after another.
        const quick = yield* createModelBatch(20, "model-a", "q")
        const done = yield* waitFor(openai, quick.id, terminal, 8_000)
        expect(done.request_counts).toEqual({ total: 20, completed: 20, failed: 0 })
        expect((yield* Effect.promise(() => openai.batches.retrieve(hanging.id))).status).toBe("in_progress")
        yield* Effect.promise(() => openai.batches.cancel(hanging.id))
        expect((yield* waitFor(openai, hanging.id, terminal, 10_000)).status).toBe("cancelled")
      }), { timeout: 40_000 })
  }))
