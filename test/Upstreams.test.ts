/**
 * Several upstreams with the simulator: routing by model, `GET /v1/models`, one adaptive limit per upstream shared
 * by every batch, a 429 storm absorbed (the limit shrinks, no line fails, then it recovers), an upstream holding its
 * calls giving its batch permit away, load-aware holding.
 */
import { expect, layer } from "@effect/vitest"
import { Duration, Effect } from "effect"
import { NotFoundError } from "openai"
import { MAX_LISTED_MODELS } from "../src/upstreams/modelList.js"
import { chatLine, createBatch, readLines, terminal, upload, waitFor } from "./support/Batches.js"
import { sideBySide } from "./support/SideBySide.js"
import { baseUrl, eventually } from "./support/TestApp.js"
import { client, createModelBatch, logged, LogLines, Simulators, testAppWithUpstreams } from "./support/Upstreams.js"

sideBySide("routing by model", () => layer(
  testAppWithUpstreams(
    { a: { models: ["model-a"], latencyMs: 5 }, b: { models: ["model-b", "model-b2", "org/model-b3"], latencyMs: 5 } },
    ({ a, b }) => [
      { name: "sim-a", base_url: a!.url, models: ["model-a"], max_concurrency: 4 },
      { name: "sim-b", base_url: b!.url, models: ["*"] }
    ],
    { maxConcurrentBatches: 3, maxConcurrentRequestsPerBatch: 16 }
  ),
  { excludeTestServices: true }
)((it) => {
  it.effect("each batch goes to the upstream serving its model; GET /v1/models lists them; others: model_not_found", () =>
    Effect.gen(function*() {
      const sims = yield* Simulators
      const openai = yield* client
      const listed = yield* Effect.promise(() => openai.models.list())
      expect(listed.data.map((m) => [m.id, m.object, m.owned_by])).toEqual([
        ["model-a", "model", "sim-a"],
        ["model-b", "model", "sim-b"],
        ["model-b2", "model", "sim-b"],
        ["org/model-b3", "model", "sim-b"]
      ])
      // Retrieved one by one, as OpenAI's `models.retrieve` (which sends a slash in an id encoded)…
      const retrieved = yield* Effect.promise(() => openai.models.retrieve("org/model-b3"))
      expect([retrieved.id, retrieved.object, retrieved.owned_by]).toEqual(["org/model-b3", "model", "sim-b"])
      // … and as the Python client sends it: as it is.
      const plain = yield* Effect.promise(() => fetch(`${openai.baseURL}/models/org/model-b3`).then((r) => r.json()))
      expect(plain).toMatchObject({ id: "org/model-b3", owned_by: "sim-b" })
      const missing = yield* Effect.promise(() => openai.models.retrieve("model-c").then(() => undefined, (e: unknown) => e))
      expect(missing).toBeInstanceOf(NotFoundError)
      expect((missing as NotFoundError).error).toEqual({
        message: "The model 'model-c' does not exist",
        type: "invalid_request_error",
        param: "model",
        code: "model_not_found"
      })
      const [a, b] = [yield* createModelBatch(40, "model-a", "a"), yield* createModelBatch(30, "model-b2", "b")]
      for (const batch of [a, b]) expect((yield* waitFor(openai, batch.id, terminal)).status).toBe("completed")
      expect(Object.fromEntries(sims.a!.stats.byModel)).toEqual({ "model-a": 40 })
      expect(Object.fromEntries(sims.b!.stats.byModel)).toEqual({ "model-b2": 30 })
      const unknown = yield* createModelBatch(2, "model-c", "c")
      const failed = yield* waitFor(openai, unknown.id, terminal)
      expect(failed.status).toBe("failed")
      expect(failed.errors?.data?.[0]).toMatchObject({ code: "model_not_found", line: 1, param: "body.model" })
    }))

  it.effect("the upstream's limit holds across several batches running at once", () =>
    Effect.gen(function*() {
      const sims = yield* Simulators
      const openai = yield* client
      sims.a!.reset()
      const batches = [yield* createModelBatch(60, "model-a", "x"), yield* createModelBatch(60, "model-a", "y"), yield* createModelBatch(60, "model-a", "z")]
      for (const batch of batches) expect((yield* waitFor(openai, batch.id, terminal)).status).toBe("completed")
      // Three batches with windows of 16 each: never more than max_concurrency (4) at the simulator.
      expect(sims.a!.stats.maxInFlight).toBe(4)
      expect(sims.a!.stats.requests).toBe(180)
    }))
}))

/** The concurrency limit of the upstream `stormy`, as `/metrics` gives it. */
const stormyLimit = Effect.flatMap(baseUrl, (url) =>
  Effect.promise(async () =>
    Number(/^batch_upstream_concurrency_limit\{upstream="stormy"\} (\d+)$/m.exec(await (await fetch(`${url}/metrics`)).text())![1])
  ))

/** An upstream that takes 3 calls at once and answers 429 to more; a limit of 16, a window of 16. */
const stormyUpstream = (config: Parameters<typeof testAppWithUpstreams>[2] = {}) =>
  testAppWithUpstreams(
    { storm: { capacity: 3, latencyMs: 20 } },
    ({ storm }) => [{ name: "stormy", base_url: storm!.url, models: ["*"], max_concurrency: 16 }],
    { maxConcurrentRequestsPerBatch: 16, ...config }
  )

sideBySide("a 429 storm", () => layer(stormyUpstream({ maxRequestsPerBatch: 5000 }), { excludeTestServices: true })((it) => {
  it.effect("shrinks the limit, fails no line, and the limit grows back once the storm ends", () =>
    Effect.gen(function*() {
      const { storm } = yield* Simulators
      const logs = yield* LogLines
      const openai = yield* client
      const batch = yield* createModelBatch(300, "sim-model", "s")
      const done = yield* waitFor(openai, batch.id, terminal, 30_000)
      expect(done.status).toBe("completed")
      expect(done.request_counts).toEqual({ total: 300, completed: 300, failed: 0 })
      expect((yield* readLines(openai, done.output_file_id)).every((l) => l.response.status_code === 200)).toBe(true)
      // The limit went down by halves (16 → 8 → 4 …), then saw-toothed around the capacity: about one refusal per
      // step up, far from one per request (a fixed window of 16 has 13 of every 16 calls refused).
      expect(logged(logs, /stormy: concurrency limit 16 → 8/)).toHaveLength(1)
      // The limit at work is said at info; warnings are for what needs a look (here, none reached the floor).
      expect(logs.filter((l) => /concurrency limit \d+ → \d+/.test(l.message)).map((l) => l.level)).toEqual(
        expect.arrayContaining(["INFO"])
      )
      expect(logs.filter((l) => /concurrency limit \d+ → \d+/.test(l.message) && l.level !== "INFO")).toEqual([])
      expect(storm!.stats.rejected).toBeGreaterThan(0)
      expect(storm!.stats.rejected).toBeLessThan(100)

      // The storm ends: the limit grows back to max_concurrency.
      storm!.capacity = undefined
      storm!.latencyMs = 5
      storm!.reset()
      const calm = yield* createModelBatch(1500, "sim-model", "c")
      expect((yield* waitFor(openai, calm.id, terminal, 60_000)).status).toBe("completed")
      expect(storm!.stats.maxInFlight).toBe(16)
      expect(yield* stormyLimit).toBe(16)
    }), { timeout: 90_000 })

  it.effect("one request refused again and again halves the limit once, not at each of its retries", () =>
    Effect.gen(function*() {
      const openai = yield* client
      expect(yield* stormyLimit).toBe(16)
      const file = yield* upload(openai, [chatLine("flaky", "[flaky:429x3] again and again", "sim-model")])
      const done = yield* waitFor(openai, (yield* createBatch(openai, file.id)).id, terminal, 20_000)
      expect(done.request_counts).toEqual({ total: 1, completed: 1, failed: 0 })
      expect(yield* stormyLimit).toBe(8)
    }), { timeout: 30_000 })
}))

sideBySide("a 429 storm with one attempt per request", () => layer(stormyUpstream({ inferenceMaxAttempts: 1 }), { excludeTestServices: true })((it) => {
  // The overload is the limit's to absorb, not the requests' attempts: even with no retry allowed, no line fails
  // (a request refused again at once after halving the limit, while the server still held the calls sent before,
  // failed so).
  it.effect("fails no line", () =>
    Effect.gen(function*() {
      const { storm } = yield* Simulators
      const openai = yield* client
      const batch = yield* createModelBatch(300, "sim-model", "o")
      const done = yield* waitFor(openai, batch.id, terminal, 30_000)
      const failed = yield* readLines(openai, done.error_file_id)
      expect(done.request_counts, JSON.stringify(failed.slice(0, 3))).toEqual({ total: 300, completed: 300, failed: 0 })
      expect(storm!.stats.rejected).toBeGreaterThan(0)
    }), { timeout: 40_000 })
}))

sideBySide("a request refused for good", () => layer(
  testAppWithUpstreams(
    { refusing: { latencyMs: 5 } },
    ({ refusing }) => [{ name: "refusing", base_url: refusing!.url, models: ["*"], max_concurrency: 16 }],
    { inferenceMaxAttempts: 3, inferenceRetryBaseDelay: Duration.millis(20) }
  ),
  { excludeTestServices: true }
)((it) => {
  // A 429 or 503 that never ends (OpenAI's insufficient_quota is a 429): once the limit has taken the overload,
  // the request's refusals count as attempts, and it fails after them (it was resent for ever, ~10 calls a second).
  for (const status of [429, 503]) {
    it.effect(`(${status} to every call) fails after its attempts, the other requests unharmed`, () =>
      Effect.gen(function*() {
        const { refusing } = yield* Simulators
        const openai = yield* client
        refusing!.reset()
        const prompt = `[fail:${status}] for good`
        const lines = [chatLine("refused", prompt, "sim-model"), ...Array.from({ length: 5 }, (_, i) => chatLine(`ok${i}`, `fine ${i}`, "sim-model"))]
        const file = yield* upload(openai, lines)
        const done = yield* waitFor(openai, (yield* createBatch(openai, file.id)).id, terminal, 20_000)
        expect(done.status).toBe("completed")
        expect(done.request_counts).toEqual({ total: 6, completed: 5, failed: 1 })
        const [error] = yield* readLines(openai, done.error_file_id)
        expect(error).toMatchObject({ custom_id: "refused", response: { status_code: status } })
        // Its 3 attempts, and at most four calls more: the refusal that halved the limit, and the 3 spared ones.
        expect(refusing!.stats.byPrompt.get(prompt)).toBeGreaterThanOrEqual(3)
        expect(refusing!.stats.byPrompt.get(prompt)).toBeLessThanOrEqual(7)
      }), { timeout: 30_000 })
  }

  // A 401 while GET /models takes the key: a key that lists and may not call fails its line after one more call; a
  // key put right as the call went out (its one 401 failed the line) succeeds at the next, at any attempt (a call
  // cut as its server stopped, then the key fixed as its retry went out).
  it.effect("a 401 to a call, the list answered: tried once more, then its line's answer", () =>
    Effect.gen(function*() {
      const { refusing } = yield* Simulators
      const openai = yield* client
      refusing!.reset()
      const lines = [
        chatLine("for-good", "[fail:401] always", "sim-model"),
        chatLine("key-fixed", "[flaky:401x1] once", "sim-model"),
        chatLine("key-fixed-at-retry", "[flaky:500x1][flaky:401x1] at its second attempt", "sim-model")
      ]
      const done = yield* waitFor(openai, (yield* createBatch(openai, (yield* upload(openai, lines)).id)).id, terminal, 20_000)
      const [error, ...others] = yield* readLines(openai, done.error_file_id)
      expect(done.request_counts, JSON.stringify(others)).toEqual({ total: 3, completed: 2, failed: 1 })
      expect(error).toMatchObject({ custom_id: "for-good", response: { status_code: 401 } })
      expect(refusing!.stats.byPrompt.get("[fail:401] always")).toBe(2)
    }), { timeout: 30_000 })
}))

sideBySide("404s that are a request's own", () => layer(
  testAppWithUpstreams(
    { unlisted: { models: ["model-u"], listsModels: false, latencyMs: 5 }, listed: { models: ["model-l"], latencyMs: 5 } },
    ({ listed, unlisted }) => [
      { name: "unlisted", base_url: unlisted!.url, models: ["model-u"] },
      // Routed a model it no longer serves (its 404 says so, as vLLM's and Ollama's do).
      { name: "listed", base_url: listed!.url, models: ["model-l", "model-retired"] }
    ]
  ),
  { excludeTestServices: true }
)((it) => {
  // Its GET /models answered 404 from the start: a 404 to a call after successes is the request's own, not a route
  // removed (which takes the upstream down only where GET /models answered a 2xx before).
  it.effect("a 404 to a call after successes fails its line; the upstream is not taken down", () =>
    Effect.gen(function*() {
      const { unlisted } = yield* Simulators
      const logs = yield* LogLines
      const openai = yield* client
      const first = yield* createModelBatch(3, "model-u", "ok")
      expect((yield* waitFor(openai, first.id, terminal)).request_counts).toEqual({ total: 3, completed: 3, failed: 0 })
      const prompt = "[fail:404] no such route"
      const done = yield* waitFor(openai, (yield* createBatch(openai, (yield* upload(openai, [chatLine("own-404", prompt, "model-u")])).id)).id, terminal, 20_000)
      expect(done.request_counts).toEqual({ total: 1, completed: 0, failed: 1 })
      expect(unlisted!.stats.byPrompt.get(prompt)).toBe(1)
      expect(logged(logs, /Upstream unlisted is down/)).toEqual([])
    }), { timeout: 30_000 })

  // A 404 that speaks of the model is its request's: no GET /models asked, no call more (a typo'd model's 3,000
  // lines asked GET /models 67 times).
  it.effect("a 404 about the model after successes fails its line at once, asking nothing more", () =>
    Effect.gen(function*() {
      const { listed } = yield* Simulators
      const openai = yield* client
      const first = yield* createModelBatch(3, "model-l", "fine")
      expect((yield* waitFor(openai, first.id, terminal)).request_counts).toEqual({ total: 3, completed: 3, failed: 0 })
      const lists = listed!.stats.modelLists
      const prompt = "a retired model"
      const done = yield* waitFor(openai, (yield* createBatch(openai, (yield* upload(openai, [chatLine("retired", prompt, "model-retired")])).id)).id, terminal, 20_000)
      expect(done.request_counts).toEqual({ total: 1, completed: 0, failed: 1 })
      expect((yield* readLines(openai, done.error_file_id))[0].response.body.error.code).toBe("model_not_found")
      expect([listed!.stats.byPrompt.get(prompt), listed!.stats.modelLists]).toEqual([1, lists])
    }), { timeout: 30_000 })
}))

sideBySide("an upstream that holds its calls", () => layer(
  testAppWithUpstreams(
    {
      limited: { models: ["model-a"], latencyMs: 5 },
      other: { models: ["model-b"], latencyMs: 5 },
      locked: { models: ["model-k"], apiKey: "sk-right" }
    },
    ({ limited, locked, other }) => [
      { name: "limited", base_url: limited!.url, models: ["model-a"] },
      { name: "other", base_url: other!.url, models: ["model-b"] },
      { name: "locked", base_url: locked!.url, models: ["model-k"], api_key: "sk-wrong" }
    ],
    // One batch permit and no keys (one project): the other upstream's batch waits behind the held one's.
    { maxConcurrentBatches: 1, maxConcurrentRequestsPerBatch: 4, inferenceMaxAttempts: 10 }
  ),
  { excludeTestServices: true }
)((it) => {
  it.effect("a batch whose upstream pauses it (Retry-After) gives its permit to another upstream's batch, and loses no line", () =>
    Effect.gen(function*() {
      const { limited, other } = yield* Simulators
      const openai = yield* client
      limited!.failAll = { status: 429, retryAfter: "2" } // every call refused, the upstream paused 2 s each time
      const held = yield* createModelBatch(8, "model-a", "a")
      yield* waitFor(openai, held.id, (batch) => batch.status === "in_progress")
      yield* eventually(() => expect(limited!.stats.rejected).toBeGreaterThan(0), 5000)

      const started = Date.now()
      const free = yield* createModelBatch(3, "model-b", "b")
      const done = yield* waitFor(openai, free.id, terminal, 20_000)
      expect(done.request_counts).toEqual({ total: 3, completed: 3, failed: 0 })
      // Not after the held batch's 10 attempts 2 s apart (18 s at least); a second or two alone, 10.7 s once on a
      // loaded machine.
      expect(Date.now() - started).toBeLessThan(15_000)
      expect(other!.stats.byModel.get("model-b")).toBe(3)
      const meanwhile = yield* Effect.promise(() => openai.batches.retrieve(held.id))
      expect([meanwhile.status, meanwhile.request_counts]).toEqual(["in_progress", { total: 8, completed: 0, failed: 0 }])

      limited!.failAll = undefined // the limit lifts: the held batch takes its permit back and finishes every line
      const finished = yield* waitFor(openai, held.id, terminal, 30_000)
      expect(finished.request_counts).toEqual({ total: 8, completed: 8, failed: 0 })
      // The operator is told why nothing goes out, once for the minute's pauses.
      const logs = yield* LogLines
      expect(logged(logs, /Retry-After/)).toEqual(["Upstream limited answered 429 with Retry-After: no call goes to it for 2s"])
    }), { timeout: 60_000 })

  it.effect("an upstream refusing the key at start is a warning naming where the key comes from, not an 'is up'", () =>
    Effect.gen(function*() {
      const logs = yield* LogLines
      const warned = yield* eventually(() => {
        const lines = logs.filter((l) => l.message.startsWith("Upstream locked "))
        expect(lines).toHaveLength(1)
        return lines[0]!
      }, 5000)
      expect(warned.level).toBe("WARN")
      expect(warned.message).toMatch(/^Upstream locked answered 401 to GET http:\/\/127\.0\.0\.1:\d+\/v1\/models: the upstream refused the call's credentials; check its key \(from api_key\)/)
      expect(warned.message).not.toContain("sk-wrong")
    }))
}))

sideBySide("load-aware dispatch", () => layer(
  testAppWithUpstreams(
    { vllm: { maxRunning: 2, latencyMs: 400 } },
    ({ vllm }) => [{ name: "vllm", base_url: vllm!.url, models: ["*"], metrics_url: vllm!.metricsUrl, max_waiting: 2 }],
    { maxConcurrentRequestsPerBatch: 16 }
  ),
  { excludeTestServices: true }
)((it) => {
  it.effect("keeps the server's waiting queue at max_waiting or under, and finishes the batch", () =>
    Effect.gen(function*() {
      const { vllm } = yield* Simulators
      const openai = yield* client
      // Several seconds of work (2 at a time, 400 ms each), several readings: a loaded machine's late ones held
      // every call of a 2-second batch, and its queue stayed empty; with calls of 100 ms, a loaded machine's
      // readings (their windows up to 200 ms) found the calls running written within them, and held them all
      // (1 run in 20 beside other suites).
      const batch = yield* createModelBatch(30, "sim-model", "l")
      const done = yield* waitFor(openai, batch.id, terminal, 30_000)
      expect(done.request_counts).toEqual({ total: 30, completed: 30, failed: 0 })
      expect(vllm!.stats.maxWaiting).toBeLessThanOrEqual(2)
      expect(vllm!.stats.maxWaiting).toBeGreaterThan(0) // it did use the queue: the holding is not just a slow start
    }), { timeout: 40_000 })
}))

sideBySide("a batch whose model its upstream stops serving", () => layer(
  testAppWithUpstreams(
    { v: { models: ["model-a"], latencyMs: 20 }, w: { models: ["model-y"], latencyMs: 20 } },
    ({ v, w }) => [{ name: "vllm", base_url: v!.url, models: ["*"] }, { name: "vllm-2", base_url: w!.url, models: ["*"] }],
    { maxConcurrentRequestsPerBatch: 8, upstreamProbeInterval: Duration.millis(300) }
  ),
  { excludeTestServices: true }
)((it) => {
  it.effect("waits (no line failed, a warning) while no server serves its model, and completes once one does", () =>
    Effect.gen(function*() {
      const { v, w } = yield* Simulators
      const logs = yield* LogLines
      const openai = yield* client
      const batch = yield* createModelBatch(300, "model-a", "r")
      yield* waitFor(openai, batch.id, (b) => (b.request_counts?.completed ?? 0) >= 50)
      // The server restarted with another model: its calls are refused meanwhile, then its list lacks the batch's.
      yield* Effect.promise(() => v!.stop())
      yield* Effect.sleep(Duration.millis(500))
      v!.models.clear()
      v!.models.add("model-z")
      yield* Effect.promise(() => v!.start())
      yield* eventually(() => expect(logs.some((l) => l.event === "batch.model_unrouted")).toBe(true), 10_000)
      expect(logged(logs, /^No upstream serves the model 'model-a' any more: its batch waits/)).toHaveLength(1)
      // Its upstreams serve "*": the way back without a restart is said too.
      expect(logged(logs, /or have a "\*" upstream serve it: their lists are asked each probe interval/)).toHaveLength(1)
      yield* Effect.sleep(Duration.seconds(1))
      const waiting = yield* Effect.promise(() => openai.batches.retrieve(batch.id))
      expect([waiting.status, waiting.request_counts?.failed]).toEqual(["in_progress", 0])

      // The second server comes to serve it: its list, asked every probe interval while the batch waits (each list
      // asked, not only the first's), has it.
      w!.models.add("model-a")
      const done = yield* waitFor(openai, batch.id, terminal, 15_000)
      expect([done.status, done.request_counts]).toEqual(["completed", { total: 300, completed: 300, failed: 0 }])
      const output = yield* readLines(openai, done.output_file_id)
      expect(new Set(output.map((l) => l.custom_id)).size).toBe(300)
      expect(w!.stats.byModel.get("model-a")).toBeGreaterThan(0)
    }), { timeout: 30_000 })
}))

sideBySide("an upstream that lists more models than are kept", () => layer(
  testAppWithUpstreams(
    { many: { models: Array.from({ length: MAX_LISTED_MODELS + 3 }, (_, i) => `m-${i}`), latencyMs: 5 } },
    ({ many }) => [{ name: "many", base_url: many!.url, models: ["*"] }]
  ),
  { excludeTestServices: true }
)((it) => {
  it.effect("has its first MAX_LISTED_MODELS kept, routed and listed, and the rest refused, said once", () =>
    Effect.gen(function*() {
      const openai = yield* client
      for (let i = 0; i < 2; i++) {
        const listed = yield* Effect.promise(() => openai.models.list())
        expect([listed.data.length, listed.data.at(-1)?.id]).toEqual([MAX_LISTED_MODELS, `m-${MAX_LISTED_MODELS - 1}`])
      }
      const kept = yield* createModelBatch(2, `m-${MAX_LISTED_MODELS - 1}`, "kept")
      expect((yield* waitFor(openai, kept.id, terminal)).status).toBe("completed")
      const beyond = yield* createModelBatch(2, `m-${MAX_LISTED_MODELS}`, "beyond")
      expect((yield* waitFor(openai, beyond.id, terminal)).errors?.data?.[0]?.code).toBe("model_not_found")
      expect(logged(yield* LogLines, /models at GET \/models/)).toEqual([
        `Upstream many lists ${MAX_LISTED_MODELS + 3} models at GET /models: the first ${MAX_LISTED_MODELS} are kept`
      ])
    }))
}))

sideBySide("a batch whose model no upstream serves any more, until it expires", () => layer(
  testAppWithUpstreams(
    { v: { models: ["model-a"], latencyMs: 20 } },
    ({ v }) => [{ name: "vllm", base_url: v!.url, models: ["*"] }],
    { maxConcurrentRequestsPerBatch: 8, upstreamProbeInterval: Duration.millis(300), completionWindow: Duration.seconds(5) }
  ),
  { excludeTestServices: true }
)((it) => {
  it.effect("expires with its finished results kept, its other lines saying no upstream served its model", () =>
    Effect.gen(function*() {
      const { v } = yield* Simulators
      const openai = yield* client
      const batch = yield* createModelBatch(2000, "model-a", "x")
      yield* waitFor(openai, batch.id, (b) => (b.request_counts?.completed ?? 0) >= 50)
      // Swapped in place: a restart would cut the calls out, and on a loaded machine a cut call's retry could fall
      // past the 5 s window, failing its line with the cut (as it should) rather than the expiry this test is about.
      v!.models.clear()
      v!.models.add("model-z")
      const done = yield* waitFor(openai, batch.id, terminal, 15_000)
      expect(done.status).toBe("expired")
      const errors = yield* readLines(openai, done.error_file_id)
      expect(errors.length).toBeGreaterThan(0)
      expect(new Set(errors.map((l) => l.error.message))).toEqual(new Set([
        "This request could not be executed before the completion window expired. No upstream served the model 'model-a'."
      ]))
    }), { timeout: 30_000 })
}))

sideBySide("a \"*\" server that swaps its model without going away (behind a load balancer)", () => layer(
  testAppWithUpstreams(
    { v: { models: ["model-a"], latencyMs: 20 } },
    ({ v }) => [{ name: "vllm", base_url: v!.url, models: ["*"] }],
    { maxConcurrentRequestsPerBatch: 8, upstreamProbeInterval: Duration.millis(300) }
  ),
  { excludeTestServices: true }
)((it) => {
  it.effect("its 404s fail no line: the batch waits while its list lacks the model, and completes once it has it again", () =>
    Effect.gen(function*() {
      const { v } = yield* Simulators
      const logs = yield* LogLines
      const openai = yield* client
      const batch = yield* createModelBatch(300, "model-a", "s")
      yield* waitFor(openai, batch.id, (b) => (b.request_counts?.completed ?? 0) >= 50)
      // Calls go on reaching it: each of the batch's now gets a 404 model_not_found.
      const listsBefore = v!.stats.modelLists
      v!.models.clear()
      v!.models.add("model-z")
      yield* eventually(() => expect(logs.some((l) => l.event === "batch.model_unrouted")).toBe(true), 10_000)
      yield* Effect.sleep(Duration.seconds(1))
      const waiting = yield* Effect.promise(() => openai.batches.retrieve(batch.id))
      expect([waiting.status, waiting.request_counts?.failed]).toEqual(["in_progress", 0])
      // Its list is asked once for a window of 404s, not once a call.
      expect(v!.stats.modelLists - listsBefore).toBeLessThan(20)
      v!.models.add("model-a")
      const done = yield* waitFor(openai, batch.id, terminal, 15_000)
      expect([done.status, done.request_counts]).toEqual(["completed", { total: 300, completed: 300, failed: 0 }])
    }), { timeout: 30_000 })
}))
