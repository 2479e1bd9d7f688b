/**
 * `GET /metrics` as Prometheus reads it: the text parses line by line (every sample `name{labels} value`, every family
 * typed, histograms consistent), and the figures move as batches run — the requests by outcome add up to the batch's
 * `request_counts`, the tokens to its `usage` — with bounded labels (route patterns, never ids; at most
 * `MAX_MODELS` models). Access: an operator key when keys are configured; `METRICS_PORT` serves them on a port of
 * their own, not on the main one.
 */
import { describe, expect, it, layer } from "@effect/vitest"
import { Duration, Effect, Layer, Logger, LogLevel, Option, Redacted } from "effect"
import { statfs } from "node:fs/promises"
import { request as httpRequest } from "node:http"
import type OpenAI from "openai"
import { BatchStore } from "../src/batches/BatchStore.js"
import { AppConfig } from "../src/Config.js"
import { BatchId } from "../src/domain/Ids.js"
import { HttpLive } from "../src/http/Http.js"
import { MetricsServerLive } from "../src/http/MetricsHttp.js"
import { ServicesLive } from "../src/Layers.js"
import { makeMetrics, MAX_MODELS } from "../src/observability/metricsRegistry.js"
import { chatLine, createBatch, responseOutcome, sdk, terminal, upload, waitFor } from "./support/Batches.js"
import { freePort } from "./support/ServerProcess.js"
import { backends, baseUrl, configFor, eventually, storages, testApp, testAppWithUpstream, TestDatabase, TestDataDir, TestHttpServer } from "./support/TestApp.js"

// --- the text format ------------------------------------------------------------------------------------------

interface Sample {
  readonly name: string
  readonly labels: Readonly<Record<string, string>>
  readonly value: number
}

const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*/
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*/
/** A float as Prometheus reads one (Go's `ParseFloat`: `NaN` and `Inf` in any case; prom-client writes `Nan`). */
const VALUE = /^(?:[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?|[+-]?inf(?:inity)?|nan)$/i

/**
 * Prometheus' text format 0.0.4, strictly: `# HELP`/`# TYPE` lines, blank lines, and samples
 * `name{label="value",…} value [timestamp]` (label values escaped `\\`, `\"`, `\n`). Throws on anything else, on a
 * sample of a family with no `# TYPE`, and on a histogram whose buckets are not cumulative up to its `_count`.
 */
const parsePrometheus = (text: string) => {
  const types = new Map<string, string>()
  const samples: Array<Sample> = []
  for (const [i, line] of text.split("\n").entries()) {
    const fail = (why: string) => {
      throw new Error(`line ${i + 1}: ${why}: ${JSON.stringify(line)}`)
    }
    if (line === "") continue
    if (line.startsWith("#")) {
      const typed = /^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram|summary|untyped)$/.exec(line)
      if (typed !== null) {
        if (types.has(typed[1]!)) fail("family typed twice")
        types.set(typed[1]!, typed[2]!)
      } else if (!/^# HELP [a-zA-Z_:][a-zA-Z0-9_:]* .*$/.test(line)) fail("not a HELP or TYPE line")
      continue
    }
    const name = NAME.exec(line)?.[0] ?? fail("no metric name")
    let rest = line.slice(name.length)
    const labels: Record<string, string> = {}
    if (rest.startsWith("{")) {
      rest = rest.slice(1)
      while (!rest.startsWith("}")) {
        const label = LABEL_NAME.exec(rest)?.[0] ?? fail("bad label name")
        rest = rest.slice(label.length)
        if (!rest.startsWith("=\"")) fail("expected =\"")
        rest = rest.slice(2)
        let value = ""
        for (;;) {
          const c = rest[0] ?? fail("unterminated label value")
          rest = rest.slice(1)
          if (c === "\"") break
          if (c === "\\") {
            const e = rest[0]
            rest = rest.slice(1)
            value += e === "n" ? "\n" : e === "\\" ? "\\" : e === "\"" ? "\"" : fail("bad escape")
          } else value += c
        }
        if (label in labels) fail("label given twice")
        labels[label] = value
        if (rest.startsWith(",")) rest = rest.slice(1)
        else if (!rest.startsWith("}")) fail("expected , or }")
      }
      rest = rest.slice(1)
    }
    const fields = rest.split(" ")
    if (fields[0] !== "" || fields.length < 2 || fields.length > 3) fail("expected one space, a value and maybe a timestamp")
    if (!VALUE.test(fields[1]!)) fail("bad value")
    if (fields[2] !== undefined && !/^-?\d+$/.test(fields[2])) fail("bad timestamp")
    const family = types.has(name) ? name : name.replace(/_(bucket|sum|count)$/, "")
    const type = types.get(family)
    if (type === undefined) fail("sample of a family with no # TYPE")
    if (family !== name && type !== "histogram" && type !== "summary") fail("suffix on a family that is not a histogram")
    const text = fields[1]!.toLowerCase()
    const value = text === "nan" ? NaN : /inf/.test(text) ? (text.startsWith("-") ? -Infinity : Infinity) : Number(text)
    samples.push({ name, labels, value })
  }
  // Histograms: buckets cumulative, ending in +Inf equal to _count.
  for (const [family, type] of types) {
    if (type !== "histogram") continue
    const series = new Map<string, Array<Sample>>()
    for (const s of samples.filter((s) => s.name === `${family}_bucket`)) {
      const { le: _, ...rest } = s.labels
      const key = JSON.stringify(rest)
      series.set(key, [...(series.get(key) ?? []), s])
    }
    for (const [key, buckets] of series) {
      const counts = buckets.map((b) => b.value)
      expect(counts, `${family} ${key}`).toEqual([...counts].sort((a, b) => a - b))
      expect(buckets.at(-1)?.labels.le).toBe("+Inf")
      const count = samples.find((s) => s.name === `${family}_count` && JSON.stringify(s.labels) === key)
      expect(count?.value, `${family}_count ${key}`).toBe(counts.at(-1))
    }
  }
  return { types, samples }
}

type Parsed = ReturnType<typeof parsePrometheus>

/** The sum of `name`'s samples whose labels include `labels`. */
const sum = (parsed: Parsed, name: string, labels: Record<string, string> = {}) =>
  parsed.samples
    .filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))
    .reduce((total, s) => total + s.value, 0)

/** Whether `name` has a sample with exactly these labels. */
const has = (parsed: Parsed, name: string, labels: Record<string, string>) =>
  parsed.samples.some((s) => s.name === name && JSON.stringify(s.labels) === JSON.stringify(labels))

const get = (url: string, headers: Record<string, string> = {}) =>
  Effect.promise(async () => {
    const res = await fetch(url, { headers })
    return { status: res.status, contentType: res.headers.get("content-type"), text: await res.text() }
  })

/** `/metrics` of the app under test, parsed (a 200 with the exposition format's content type, or the test fails). */
const scrape = (headers: Record<string, string> = {}) =>
  Effect.gen(function*() {
    const res = yield* get(`${yield* baseUrl}/metrics`, headers)
    expect(res.status).toBe(200)
    expect(res.contentType).toBe("text/plain; version=0.0.4; charset=utf-8")
    return parsePrometheus(res.text)
  })

/** The difference of every request outcome between two scrapes. */
const outcomes = (before: Parsed, after: Parsed, labels: Record<string, string> = {}) =>
  Object.fromEntries(["success", "upstream_error", "no_response", "cancelled", "expired"].map((outcome) => [
    outcome,
    sum(after, "batch_requests_total", { ...labels, outcome }) - sum(before, "batch_requests_total", { ...labels, outcome })
  ]))

const polled = (openai: OpenAI, id: string, done: (b: OpenAI.Batch) => boolean) =>
  Effect.promise(async () => {
    let polls = 0
    for (;;) {
      const batch = await openai.batches.retrieve(id)
      polls++
      if (done(batch)) return { batch, polls }
      await new Promise((r) => setTimeout(r, 20))
    }
  })

const client = Effect.map(baseUrl, sdk)
const chat = { endpoint: "/v1/chat/completions", model: "sim-model", upstream: "default" }

// --- the figures as batches run ----------------------------------------------------------------------------------

describe("metrics", () => {
  layer(testAppWithUpstream({ inferenceMaxConcurrency: 7, maxConcurrentRequestsPerBatch: 3 }), { excludeTestServices: true })(
    "a batch's figures",
    (it) => {
      // The first test of the file: this scrape is the process's first.
      it.effect("the first scrape's event-loop figures were measured since the start, not since that scrape", () =>
        Effect.gen(function*() {
          yield* Effect.sleep(Duration.millis(100)) // a few of the monitor's 10 ms samples
          const first = yield* scrape()
          const lag = (stat: string) => sum(first, `nodejs_eventloop_lag_${stat}_seconds`)
          // Begun at the scrape, the monitor's histogram was empty: min 9223372036.85 s, mean NaN.
          expect(lag("min")).toBeGreaterThan(0)
          expect(lag("min")).toBeLessThan(1)
          expect(Number.isFinite(lag("mean"))).toBe(true)
        }))

      it.effect("the text parses, and a finished batch's outcomes, tokens and polls are counted", () =>
        Effect.gen(function*() {
          const openai = yield* client
          const before = yield* scrape()
          // The process's default metrics come along.
          for (const name of ["nodejs_eventloop_lag_seconds", "process_cpu_user_seconds_total", "nodejs_heap_size_used_bytes"]) {
            expect(before.types.has(name), name).toBe(true)
          }
          expect(sum(before, "batch_upstream_concurrency_limit", { upstream: "default" })).toBe(7)

          const prompts = [
            "one [cached:4]", "two [reasoning:3]", "three [cached:2] [reasoning:5]", "four", "five", "six",
            "seven [fail:400]", "eight [fail:400]", "nine [fail:422]", "ten [html]"
          ]
          const file = yield* upload(openai, prompts.map((p, i) => chatLine(`r${i}`, p)))
          const created = yield* createBatch(openai, file.id)
          const { batch: done, polls } = yield* polled(openai, created.id, terminal)
          expect(done.status).toBe("completed")
          expect(done.request_counts).toEqual({ total: 10, completed: 6, failed: 4 })

          const after = yield* scrape()
          const moved = outcomes(before, after, chat)
          expect(moved).toEqual({ success: 6, upstream_error: 3, no_response: 1, cancelled: 0, expired: 0 })
          expect(moved.success).toBe(done.request_counts!.completed)
          expect(moved.upstream_error! + moved.no_response! + moved.cancelled! + moved.expired!).toBe(done.request_counts!.failed)

          const tokens = (type: string) =>
            sum(after, "batch_tokens_total", { model: "sim-model", type }) - sum(before, "batch_tokens_total", { model: "sim-model", type })
          expect(done.usage!.input_tokens).toBeGreaterThan(0)
          expect({ input: tokens("input"), output: tokens("output"), cached: tokens("cached"), reasoning: tokens("reasoning") })
            .toEqual({
              input: done.usage!.input_tokens,
              output: done.usage!.output_tokens,
              cached: done.usage!.input_tokens_details.cached_tokens,
              reasoning: done.usage!.output_tokens_details.reasoning_tokens
            })
          expect(done.usage!.input_tokens_details.cached_tokens).toBe(6)
          expect(done.usage!.output_tokens_details.reasoning_tokens).toBe(8)

          const delta = (name: string, labels: Record<string, string> = {}) => sum(after, name, labels) - sum(before, name, labels)
          expect(delta("batch_batches_finished_total", { status: "completed" })).toBe(1)
          expect(delta("batch_batches_finished_total", { status: "failed" })).toBe(0)
          expect(delta("batch_duration_seconds_count", { status: "completed" })).toBe(1)
          expect(delta("batch_queue_wait_seconds_count")).toBe(1)
          // One attempt per line (none is retried here), each timed.
          expect(delta("batch_upstream_request_duration_seconds_count", { upstream: "default", model: "sim-model" })).toBe(10)
          expect(sum(after, "batch_upstream_inflight", { upstream: "default" })).toBe(0)
          expect(sum(after, "batch_upstream_concurrency_limit", { upstream: "default" })).toBe(7)
          for (const status of ["validating", "in_progress", "finalizing", "cancelling"]) {
            expect(has(after, "batch_batches_active", { status }), status).toBe(true)
          }
          expect(sum(after, "batch_batches_active")).toBe(0)

          // Each poll counted under the route pattern, never the batch's own path.
          const route = { method: "GET", route: "/v1/batches/:batch_id" }
          expect(delta("batch_http_requests_total", { ...route, status: "200" })).toBe(polls)
          expect(delta("batch_http_request_duration_seconds_count", route)).toBe(polls)
          expect(delta("batch_http_requests_total", { method: "POST", route: "/v1/batches", status: "200" })).toBe(1)
          expect(delta("batch_http_requests_total", { method: "GET", route: "/metrics", status: "200" })).toBe(1)
          expect(after.samples.filter((s) => Object.values(s.labels).some((v) => v.includes(created.id) || v.includes(file.id))))
            .toEqual([])
        }))

      it.effect("an unknown path is counted as one route, whatever the path", () =>
        Effect.gen(function*() {
          const base = yield* baseUrl
          const before = yield* scrape()
          for (const path of ["/v1/nope", "/v1/batches/batch_x/nope", "/x/y/z"]) expect((yield* get(`${base}${path}`)).status).toBe(404)
          const after = yield* scrape()
          const unmatched = { method: "GET", route: "unmatched", status: "404" }
          expect(sum(after, "batch_http_requests_total", unmatched) - sum(before, "batch_http_requests_total", unmatched)).toBe(3)
          expect(after.samples.some((s) => Object.values(s.labels).some((v) => v.includes("nope")))).toBe(false)
        }))
    }
  )

  // On both databases: the active batches are counted there.
  for (const backend of backends) {
    const app = testAppWithUpstream({ maxConcurrentRequestsPerBatch: 1 }, {}, backend)
    layer(app, { excludeTestServices: true })(`one request at a time (${backend})`, (it) => {
      it.effect("is active while it runs; its requests ended by the cancel are counted cancelled", () =>
        Effect.gen(function*() {
          const openai = yield* client
          const before = yield* scrape()
          const file = yield* upload(openai, Array.from({ length: 8 }, (_, i) => chatLine(`r${i}`, `slow ${i} [sleep:200]`)))
          const created = yield* createBatch(openai, file.id)
          yield* waitFor(openai, created.id, (b) => (b.request_counts?.completed ?? 0) >= 1)
          const running = yield* scrape()
          expect(sum(running, "batch_batches_active", { status: "in_progress" })).toBe(1)
          expect(sum(running, "batch_upstream_inflight", { upstream: "default" })).toBe(1)
          yield* Effect.promise(() => openai.batches.cancel(created.id))
          const done = yield* waitFor(openai, created.id, terminal)
          expect(done.status).toBe("cancelled")
          const after = yield* scrape()
          const moved = outcomes(before, after, chat)
          expect(moved.success).toBe(done.request_counts!.completed)
          expect(moved.cancelled).toBe(done.request_counts!.failed)
          expect(moved.cancelled).toBeGreaterThan(0)
          expect(moved.success! + moved.cancelled!).toBe(8)
          const cancelled = { status: "cancelled" }
          expect(sum(after, "batch_batches_finished_total", cancelled) - sum(before, "batch_batches_finished_total", cancelled)).toBe(1)
          expect(sum(after, "batch_batches_active")).toBe(0)
        }))

      // After a takeover, the node that froze may answer lines the other has answered since: its counts said
      // 32 requests and their tokens more than the batch had (a window), as if they were billed twice.
      it.effect("lines another node stored first (a takeover) are that node's: this node counts only what it stored", () =>
        Effect.gen(function*() {
          const openai = yield* client
          const store = yield* BatchStore
          const before = yield* scrape()
          const file = yield* upload(openai, Array.from({ length: 4 }, (_, i) => chatLine(`r${i}`, `slow ${i} [sleep:600]`)))
          const created = yield* createBatch(openai, file.id)
          yield* waitFor(openai, created.id, (b) => b.status === "in_progress")
          yield* eventually(() => scrape().pipe(Effect.map((now) => expect(sum(now, "batch_upstream_inflight", { upstream: "default" })).toBe(1))))
          // Lines 1 to 3 answered meanwhile by "another node": line 1's call is out, the others wait their turn.
          const elsewhere = [1, 2, 3].map((line) => responseOutcome(line, { customId: `r${line - 1}` }))
          expect(yield* store.recordOutcomes(BatchId.make(created.id), elsewhere)).toEqual(new Set([1, 2, 3]))
          const done = yield* waitFor(openai, created.id, terminal)
          expect([done.status, done.request_counts]).toEqual(["completed", { total: 4, completed: 4, failed: 0 }])
          const after = yield* scrape()
          expect(outcomes(before, after, chat)).toEqual({ success: 1, upstream_error: 0, no_response: 0, cancelled: 0, expired: 0 })
        }))
    })
  }

  // DATA_DIR holds the SQLite database and local file bytes; with PostgreSQL and file bytes in it, nothing.
  for (const { backend, fileStorage } of storages) {
    layer(testApp({ fileStorage: Option.some(fileStorage) }, backend))(`the space of DATA_DIR (${backend}, ${fileStorage} files)`, (it) => {
      it.effect(backend === "postgres" ? "is left out: DATA_DIR is not used" : "is that of its file system, read at the scrape", () =>
        Effect.gen(function*() {
          const { dataDir } = yield* AppConfig
          const parsed = yield* scrape()
          const samples = parsed.samples.filter((s) => s.name.startsWith("batch_data_dir_"))
          if (backend === "postgres") return expect(samples).toEqual([])
          const fs = yield* Effect.promise(() => statfs(dataDir))
          const available = sum(parsed, "batch_data_dir_available_bytes", { path: dataDir })
          expect(sum(parsed, "batch_data_dir_size_bytes", { path: dataDir })).toBe(fs.blocks * fs.bsize)
          // Other writers share the file system: within 64 MiB of what it has free now.
          expect(Math.abs(available - fs.bavail * fs.bsize)).toBeLessThan(64 * 1024 * 1024)
          expect(samples.map((s) => s.name).sort()).toEqual(["batch_data_dir_available_bytes", "batch_data_dir_size_bytes"])
        }))
    })
  }

  layer(testAppWithUpstream({ completionWindow: Duration.seconds(2) }), { excludeTestServices: true })("an expired batch", (it) => {
    it.effect("its requests ended by the expiry are counted expired", () =>
      Effect.gen(function*() {
        const openai = yield* client
        const before = yield* scrape()
        const file = yield* upload(openai, ["quick", "stuck [hang]", "stuck too [hang]"].map((p, i) => chatLine(`r${i}`, p)))
        const created = yield* createBatch(openai, file.id)
        const done = yield* waitFor(openai, created.id, terminal)
        expect(done.status).toBe("expired")
        const moved = outcomes(before, yield* scrape(), chat)
        expect(moved).toEqual({ success: 1, upstream_error: 0, no_response: 0, cancelled: 0, expired: 2 })
        expect(done.request_counts).toEqual({ total: 3, completed: 1, failed: 2 })
      }))
  })

  // --- access ----------------------------------------------------------------------------------------------------

  const KEYS = { project: "sk-project-key-0123456789", admin: "sk-operator-key-0123456789" }
  layer(testApp({ apiKeys: [Redacted.make(`${KEYS.project}:projA`)], adminApiKeys: [Redacted.make(KEYS.admin)] }))(
    "with API keys",
    (it) => {
      it.effect("only an operator key reads them: 401 without a key or with a wrong one, 403 with a project's", () =>
        Effect.gen(function*() {
          const url = `${yield* baseUrl}/metrics`
          const none = yield* get(url)
          expect(none.status).toBe(401)
          expect(JSON.parse(none.text).error.code).toBe("invalid_api_key")
          expect((yield* get(url, { authorization: "Bearer sk-wrong" })).status).toBe(401)
          const project = yield* get(url, { authorization: `Bearer ${KEYS.project}` })
          expect(project.status).toBe(403)
          expect(JSON.parse(project.text).error).toMatchObject({ type: "invalid_request_error", code: "insufficient_permissions" })
          expect(project.text).not.toContain("batch_")
          // A request refused before routing is counted under the route asked for, in the router's form.
          expect((yield* get(`${yield* baseUrl}/v1/batches/batch_abc`)).status).toBe(401)
          const admin = yield* scrape({ authorization: `Bearer ${KEYS.admin}` })
          expect(admin.types.get("batch_requests_total")).toBe("counter")
          const refused = { method: "GET", route: "/v1/batches/:batch_id", status: "401" }
          expect(sum(admin, "batch_http_requests_total", refused)).toBe(1)
        }))
    }
  )

  /** The app with `MetricsServerLive` (as `main.ts` runs it) on a free `METRICS_PORT`, and `overrides`. */
  const withMetricsPort = (overrides: Parameters<typeof configFor>[0] = {}) =>
    Layer.unwrapEffect(Effect.map(Effect.promise(freePort), (metricsPort) =>
      Layer.merge(HttpLive, MetricsServerLive).pipe(
        Layer.provide(ServicesLive),
        Layer.provideMerge(TestHttpServer),
        Layer.provideMerge(configFor({ metricsPort: Option.some(metricsPort), ...overrides })),
        Layer.provideMerge(Layer.merge(TestDataDir.Default, TestDatabase.layer("sqlite"))),
        Layer.provide(Logger.minimumLogLevel(LogLevel.Warning))
      )))
  const metricsPortUrl = (path: string) =>
    Effect.map(AppConfig, (config) => `http://127.0.0.1:${Option.getOrThrow(config.metricsPort)}${path}`)

  layer(withMetricsPort({ adminApiKeys: [Redacted.make(KEYS.admin)] }))("with METRICS_PORT", (it) => {
    it.effect("they are served on that port without a key, and not on the main port", () =>
      Effect.gen(function*() {
        const res = yield* get(yield* metricsPortUrl("/metrics"))
        expect(res.status).toBe(200)
        expect(res.contentType).toBe("text/plain; version=0.0.4; charset=utf-8")
        const parsed = parsePrometheus(res.text)
        expect(parsed.types.get("batch_batches_active")).toBe("gauge")
        expect(sum(parsed, "batch_batches_active")).toBe(0)
        expect((yield* get(yield* metricsPortUrl("/v1/files"))).status).toBe(404)
        // A web page's script gets none, its own origin too (a name rebound to this address); an address typed in does.
        for (const headers of [{ "sec-fetch-site": "same-origin" }, { "sec-fetch-site": "cross-site" }, { origin: "http://evil.example" }]) {
          expect([headers, (yield* get(yield* metricsPortUrl("/metrics"), headers)).status]).toEqual([headers, 403])
        }
        expect((yield* get(yield* metricsPortUrl("/metrics"), { "sec-fetch-site": "none" })).status).toBe(200)
        // The main port: no route there (404 to an operator; without a key, the 401 of any protected path).
        const main = yield* get(`${yield* baseUrl}/metrics`, { authorization: `Bearer ${KEYS.admin}` })
        expect(main.status).toBe(404)
        expect((yield* get(`${yield* baseUrl}/metrics`)).status).toBe(401)
        // Counted as a path no route serves there, not as the metrics route.
        const counted = parsePrometheus((yield* get(yield* metricsPortUrl("/metrics"))).text)
        expect(sum(counted, "batch_http_requests_total", { route: "/metrics" })).toBe(0)
        expect(sum(counted, "batch_http_requests_total", { route: "unmatched", status: "404" })).toBe(1)
      }))
  })

  layer(withMetricsPort())("with METRICS_PORT and no keys", (it) => {
    it.effect("the metrics port answers loopback names only, as the main port does", () =>
      Effect.gen(function*() {
        expect((yield* get(yield* metricsPortUrl("/metrics"))).status).toBe(200)
        expect((yield* get(`${yield* baseUrl}/metrics`)).status).toBe(404)
        // A page whose DNS name was rebound to 127.0.0.1 (fetch() sends no Host of our choosing: a raw request does).
        const url = new URL(yield* metricsPortUrl("/metrics"))
        const rebound = yield* Effect.promise(() =>
          new Promise<number>((resolve, reject) => {
            const options = { host: "127.0.0.1", port: url.port, path: "/metrics", headers: { host: `evil.example:${url.port}` } }
            const req = httpRequest(options, (res) => {
              res.resume()
              resolve(res.statusCode ?? 0)
            })
            req.on("error", reject)
            req.end()
          })
        )
        expect(rebound).toBe(421)
      }))
  })

  // --- bounded labels --------------------------------------------------------------------------------------------

  it.effect(`at most ${MAX_MODELS} models get a label of their own; the rest are counted as other`, () =>
    Effect.gen(function*() {
      const metrics = makeMetrics({ processWide: false })
      for (let i = 0; i < MAX_MODELS + 50; i++) {
        metrics.requests("/v1/chat/completions", `model-${i}`, "default").answered(200, { input: 1, output: 2, cached: 0, reasoning: 0 })
        metrics.attempts("default")(`model-${i}`, 0.01)
      }
      metrics.requests("/v1/moderations", null, "default").answered(500, { input: 0, output: 0, cached: 0, reasoning: 0 })
      const parsed = parsePrometheus(yield* metrics.render(undefined))
      const models = new Set(parsed.samples.filter((s) => s.name === "batch_requests_total").map((s) => s.labels.model))
      expect(models.size).toBe(MAX_MODELS + 2) // the first 100, other, none
      expect(sum(parsed, "batch_requests_total", { model: "other", outcome: "success" })).toBe(50)
      expect(sum(parsed, "batch_requests_total", { model: "none", outcome: "upstream_error" })).toBe(1)
      expect(sum(parsed, "batch_tokens_total", { model: "other", type: "output" })).toBe(100)
      const timed = parsed.samples.filter((s) => s.name === "batch_upstream_request_duration_seconds_count")
      expect(new Set(timed.map((s) => s.labels.model)).size).toBe(MAX_MODELS + 1)
      expect(parsed.types.has("batch_batches_active")).toBe(true)
      expect(parsed.samples.some((s) => s.name === "batch_batches_active")).toBe(false) // not counted: left out
      expect(parsed.types.has("process_cpu_user_seconds_total")).toBe(false) // the app's own figures only
    }))
})
