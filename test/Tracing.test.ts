/**
 * OpenTelemetry traces: the real server process exporting to a fake OTLP/HTTP collector (HTTP request spans that
 * continue an incoming `traceparent`, batch phase spans, upstream call spans named and attributed by the GenAI
 * conventions, sampled), the protobuf protocol, and the `OTEL_*` settings.
 */
import * as HttpClient from "@effect/platform/HttpClient"
import * as HttpClientResponse from "@effect/platform/HttpClientResponse"
import { describe, expect, it } from "@effect/vitest"
import { ConfigProvider, Duration, Effect, Either, Exit, Layer, Logger, Option, Redacted } from "effect"
import * as EffectTracer from "effect/Tracer"
import * as OtelApi from "@opentelemetry/api"
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-base"
import { mkdtempSync, rmSync } from "node:fs"
import * as Http from "node:http"
import { tmpdir } from "node:os"
import * as Path from "node:path"
import OpenAI, { toFile } from "openai"
import { startSimulator } from "../scripts/simulator.js"
import { AppConfig } from "../src/Config.js"
import { Inference, InferenceOverHttpClient } from "../src/inference/Inference.js"
import { layerWith, serverSpanConventions } from "../src/observability/Tracing.js"
import { DEFAULT_UPSTREAM_CALLS, parseHeaders, tracingSettings } from "../src/observability/tracingSettings.js"
import { layerUpstreamCallTracing, makeFractionPicker } from "../src/observability/upstreamCallSpans.js"
import { chatLine } from "./support/Batches.js"
import { manualHandBack } from "./support/HandBack.js"
import { type CollectedSpan, startCollector } from "./support/OtlpCollector.js"
import { runServerToExit, startServer } from "./support/ServerProcess.js"
import { eventually } from "./support/TestApp.js"

const SERVER = 2
const CLIENT = 3
const ERROR = 2

/** Runs `body` with a collector, the simulator and the server exporting to the collector with `env`. */
const withTracedServer = (
  env: Record<string, string>,
  body: (ctx: {
    url: string
    upstreamUrl: string
    collector: Awaited<ReturnType<typeof startCollector>>
    stop: () => Promise<unknown>
    stdout: () => string
  }) => Promise<void>
) =>
  Effect.promise(async () => {
    const dataDir = mkdtempSync(Path.join(tmpdir(), "batch-trace-"))
    const collector = await startCollector()
    const simulator = await startSimulator()
    const server = await startServer({
      DATA_DIR: dataDir,
      INFERENCE_BASE_URL: simulator.url,
      INFERENCE_RETRY_BASE_DELAY: "10 millis",
      OTEL_EXPORTER_OTLP_ENDPOINT: collector.url,
      OTEL_BSP_SCHEDULE_DELAY: "100",
      ...env
    })
    try {
      await body({ url: server.url, upstreamUrl: simulator.url, collector, stop: () => server.stop("SIGTERM"), stdout: server.stdout })
    } finally {
      await server.stop("SIGTERM")
      await simulator.close()
      await collector.close()
      rmSync(dataDir, { recursive: true, force: true })
    }
  })

const client = (url: string, headers: Record<string, string> = {}) =>
  new OpenAI({ baseURL: `${url}/v1`, apiKey: "sk-test", maxRetries: 0, defaultHeaders: headers })

const runBatch = async (openai: OpenAI, lines: ReadonlyArray<string>, create: OpenAI = openai) => {
  const file = await openai.files.create({ file: await toFile(Buffer.from(lines.join("\n") + "\n"), "in.jsonl"), purpose: "batch" })
  const created = await create.batches.create({ input_file_id: file.id, endpoint: "/v1/chat/completions", completion_window: "24h" })
  const deadline = Date.now() + 60_000
  for (;;) {
    const batch = await openai.batches.retrieve(created.id)
    if (["completed", "failed", "expired", "cancelled"].includes(batch.status)) return batch
    if (Date.now() > deadline) throw new Error(`batch stuck in ${batch.status}`)
    await new Promise((r) => setTimeout(r, 50))
  }
}

const lines = async (openai: OpenAI, fileId: string | null | undefined): Promise<Array<any>> =>
  fileId ? (await (await openai.files.content(fileId)).text()).split("\n").filter((l) => l !== "").map((l) => JSON.parse(l)) : []

const named = (spans: ReadonlyArray<CollectedSpan>, name: string) => spans.filter((s) => s.name === name)
const one = (spans: ReadonlyArray<CollectedSpan>, name: string, batchId?: string) => {
  const found = named(spans, name).filter((s) => batchId === undefined || s.attributes["batch.id"] === batchId)
  expect(found.map((s) => s.name)).toEqual([name])
  return found[0]!
}

describe("tracing", () => {
  it.live("HTTP requests continue the caller's traceparent; a batch's phases and a sampled few of its upstream calls are exported", () => {
    const traceId = "4bf92f3577b34da6a3ce929d0e0e4736"
    const parentId = "00f067aa0ba902b7"
    const unsampledTrace = "5a8c1e2f3b4d5e6f708192a3b4c5d6e7"
    const refusedTrace = "7e1d2c3b4a5968778695a4b3c2d1e0f9"
    const queryTrace = "3c4d5e6f708192a3b4c5d6e7f8091a2b"
    const requests = 400
    // A heartbeat every 100 ms: the periodic work runs many times while the batch does.
    const env = {
      OTEL_EXPORTER_OTLP_PROTOCOL: "http/json",
      OTEL_SERVICE_NAME: "batch-under-test",
      HEARTBEAT_INTERVAL: "100 millis",
      NODE_ID: "node-traced",
      // Values percent-encoded, one holding "=" (W3C baggage form, as OpenTelemetry's specification reads it).
      OTEL_RESOURCE_ATTRIBUTES: "deployment.environment=prod%20eu,k8s.pod.name=batch=7"
    }
    return withTracedServer(env, async ({ url, collector, stop, stdout }) => {
      // The start says where spans go.
      const listening = stdout().split("\n").find((l) => l.includes('"event":"server.listening"'))
      expect(JSON.parse(listening!).tracing).toBe(`${collector.url}/v1/traces`)
      // A caller whose own trace was not sampled: nothing of this request is exported.
      expect((await fetch(`${url}/v1/files`, { headers: { traceparent: `00-${unsampledTrace}-${parentId}-00` } })).status).toBe(200)
      const foreignHost = await new Promise<number | undefined>((resolve, reject) =>
        Http.get(`${url}/v1/files`, { headers: { host: "evil.example", traceparent: `00-${refusedTrace}-${parentId}-01` } }, (res) => {
          res.resume()
          resolve(res.statusCode)
        }).on("error", reject))
      expect(foreignHost).toBe(421)
      const openai = client(url)
      const traced = client(url, { traceparent: `00-${traceId}-${parentId}-01`, "api-key": "sk-azure-style", "x-custom-token": "tok-custom" })
      // A key in the query (not read from there), in a sampled trace of its own.
      const listed = await fetch(`${url}/v1/files?api_key=QUERYSECRET&limit=5`, {
        headers: { authorization: "Bearer sk-test", traceparent: `00-${queryTrace}-${parentId}-01` }
      })
      expect(listed.status).toBe(200)
      const batch = await runBatch(openai, Array.from({ length: requests }, (_, i) => chatLine(`r${i}`, `prompt ${i}`)), traced)
      expect(batch.request_counts).toMatchObject({ total: requests, completed: requests })
      // A load balancer's probes and Prometheus' scrapes, every second or so: no trace each (their statements neither).
      for (let i = 0; i < 4; i++) {
        for (const path of ["/v1/health", "/v1/ready", "/metrics"]) expect((await fetch(`${url}${path}`)).status).toBe(200)
      }
      await stop() // flushes what is still queued
      const spans = collector.spans()

      // The create request: a server span named by its route, child of the caller's span, in the caller's trace.
      const create = one(spans.filter((s) => s.traceId === traceId), "POST /v1/batches")
      // The node's id tells the nodes' spans apart.
      expect(create).toMatchObject({ kind: SERVER, parentSpanId: parentId, service: "batch-under-test", instance: "node-traced" })
      expect(create.resource).toMatchObject({ "deployment.environment": "prod eu", "k8s.pod.name": "batch=7", "telemetry.sdk.language": "nodejs" })
      expect(spans.filter((s) => ["GET /v1/health", "GET /v1/ready", "GET /metrics"].includes(s.name))).toEqual([])
      expect(create.attributes).toMatchObject({ "http.request.method": "POST", "http.route": "/v1/batches", "http.response.status_code": 200 })
      // Polls are named by their route, not their URL.
      expect(named(spans, "GET /v1/batches/:batch_id").length).toBeGreaterThan(0)
      // A request refused before routing (421: a foreign Host) is named by the route it asked for, as logged.
      const refused = one(spans.filter((s) => s.traceId === refusedTrace), "GET /v1/files")
      expect(refused.attributes).toMatchObject({ "http.route": "/v1/files", "http.response.status_code": 421 })
      // A server span's status is its answer's: below 500, unset (Effect's tracer said OK), as the HTTP conventions say.
      expect([refused.status, create.status]).toEqual([{ code: 0 }, { code: 0 }])
      expect(spans.filter((s) => s.traceId === unsampledTrace)).toEqual([])
      // No key in any span (the client sends `Authorization: Bearer sk-test`; headers are recorded, that one redacted).
      expect(create.attributes["http.request.header.authorization"]).toBe("<redacted>")
      expect(JSON.stringify(spans)).not.toContain("sk-test")
      expect(create.attributes["http.request.header.api-key"]).toBe("<redacted>") // Azure's key header too
      expect(JSON.stringify(spans)).not.toContain("sk-azure-style")
      expect(create.attributes["http.request.header.x-custom-token"]).toBe("<redacted>") // any name that says key or token
      expect(JSON.stringify(spans)).not.toContain("tok-custom")
      const list = one(spans.filter((s) => s.traceId === queryTrace), "GET /v1/files")
      expect(list.attributes).toMatchObject({ "url.query": "api_key=REDACTED&limit=5", "url.full": `${url}/v1/files?api_key=REDACTED&limit=5` })
      expect(JSON.stringify(spans)).not.toContain("QUERYSECRET")

      // The batch's work: a trace of its own, linked to the create request's trace, with every phase under it.
      const root = one(spans, "BatchRunner.batch", batch.id)
      expect(root.parentSpanId).toBeUndefined()
      expect(root.links.map((l) => l.traceId)).toEqual([traceId])
      for (const phase of ["BatchRunner.validate", "BatchRunner.run", "BatchRunner.finish"]) {
        expect(one(spans, phase, batch.id)).toMatchObject({ traceId: root.traceId, parentSpanId: root.spanId })
      }
      expect(one(spans, "BatchRunner.finish", batch.id).attributes).toMatchObject({ move: "complete" })

      // Upstream calls: far fewer spans than requests (1 % by default), each under the run.
      const run = one(spans, "BatchRunner.run", batch.id)
      const calls = named(spans, "chat sim-model")
      expect(calls.length).toBeGreaterThanOrEqual(1)
      expect(calls.length).toBeLessThanOrEqual(Math.ceil(requests * DEFAULT_UPSTREAM_CALLS) + 1)
      for (const call of calls) expect(call).toMatchObject({ kind: CLIENT, traceId: root.traceId, parentSpanId: run.spanId })
      // Nor is every outcome group's write traced, nor the heartbeat.
      expect(named(spans, "BatchStore.recordOutcomes").length).toBeLessThanOrEqual(calls.length + 1)
      expect(named(spans, "BatchRunner.heartbeat")).toEqual([])
      // Nor the webhook worker's look for due deliveries (every heartbeat too): the statements that are traces of
      // their own are the start's (once or twice each), none made every second.
      expect(named(spans, "Webhooks.claimDue")).toEqual([])
      const rootStatements = spans.filter((s) => s.name === "sql.execute" && s.parentSpanId === undefined)
        .map((s) => String(s.attributes["db.query.text"]))
      expect(rootStatements.filter((text) => rootStatements.filter((t) => t === text).length > 2)).toEqual([])
      // Nor the probes' and scrapes' (readiness's `SELECT 1`, the count of active batches).
      expect(rootStatements.filter((text) => text === "SELECT 1" || text.includes("GROUP BY status"))).toEqual([])
    })
  }, 120_000)

  it.live("with OTEL_TRACES_SAMPLER=always_on every upstream call has a span with the GenAI attributes", () =>
    withTracedServer({ OTEL_EXPORTER_OTLP_PROTOCOL: "http/json", OTEL_TRACES_SAMPLER: "always_on" }, async ({ url, upstreamUrl, collector, stop }) => {
      const openai = client(url)
      const prompts = [...Array.from({ length: 8 }, (_, i) => `hello ${i}`), "once more [flaky:500x1]", "refused [fail:400]", "portal [html]"]
      const batch = await runBatch(openai, prompts.map((p, i) => chatLine(`r${i}`, p)))
      expect(batch.request_counts).toMatchObject({ total: 11, completed: 9, failed: 2 })
      const output = await lines(openai, batch.output_file_id)
      await stop()
      const spans = collector.spans()
      const run = one(spans, "BatchRunner.run", batch.id)
      const calls = named(spans, "chat sim-model")
      expect(calls.length).toBe(11)
      for (const call of calls) {
        expect(call).toMatchObject({ kind: CLIENT, parentSpanId: run.spanId })
        expect(call.attributes).toMatchObject({
          "gen_ai.operation.name": "chat",
          "gen_ai.request.model": "sim-model",
          "gen_ai.provider.name": "default",
          "server.address": "127.0.0.1",
          "server.port": Number(new URL(upstreamUrl).port)
        })
      }
      // The successful answers: each one's id and token usage, as the output file has them.
      const ok = calls.filter((c) => c.attributes["http.response.status_code"] === 200)
      const seen = ok.map((c) => [c.attributes["gen_ai.response.id"], c.attributes["gen_ai.usage.input_tokens"], c.attributes["gen_ai.usage.output_tokens"]])
      const answered = output.map((l) => [l.response.body.id, l.response.body.usage.prompt_tokens, l.response.body.usage.completion_tokens])
      expect(seen.map(String).sort()).toEqual(answered.map(String).sort())
      for (const call of ok) {
        expect(call.attributes).toMatchObject({ "gen_ai.response.model": "sim-model", "gen_ai.response.finish_reasons": ["stop"] })
        expect(call.status.code).not.toBe(ERROR)
      }
      // A retried call is one span (the retry an event in it); a 400 ends its span in error.
      expect(ok.filter((c) => c.events.some((e) => e.name === "retry" && e.attributes.reason === "status 500")).length).toBe(1)
      const refused = calls.filter((c) => c.attributes["http.response.status_code"] === 400)
      expect(refused.length).toBe(1)
      expect(refused[0]).toMatchObject({ status: { code: ERROR }, attributes: { "error.type": "400" } })
      // An answer that is no JSON object ends its span in error by its code alone: its text (the answer itself,
      // often) is in no span.
      const unusable = calls.filter((c) => c.attributes["error.type"] === "invalid_upstream_response")
      expect(unusable.length).toBe(1)
      expect(unusable[0]!.status.code).toBe(ERROR)
      expect(JSON.stringify(spans)).not.toContain("Please sign in")
    }), 120_000)

  it.live("http/protobuf (the default protocol) posts application/x-protobuf to /v1/traces", () =>
    withTracedServer({}, async ({ url, collector }) => {
      expect((await fetch(`${url}/v1/files`)).status).toBe(200) // a probe's request would make no span
      await Effect.runPromise(Effect.promise(() =>
        collector.waitFor(() => collector.exports().some((e) => e.body.includes("GET /v1/files")), 20_000)
      ))
      const exported = collector.exports()
      expect(exported.every((e) => e.path === "/v1/traces")).toBe(true)
      expect(exported.every((e) => e.headers["content-type"] === "application/x-protobuf")).toBe(true)
      expect(exported.some((e) => e.body.includes("effect-openai-batch"))).toBe(true)
    }), 60_000)

  it.live("a wrong OTEL_* value stops the start, naming the variable", () =>
    Effect.promise(async () => {
      const dataDir = mkdtempSync(Path.join(tmpdir(), "batch-trace-"))
      const { code, output } = await runServerToExit({
        DATA_DIR: dataDir,
        PORT: "0",
        OTEL_EXPORTER_OTLP_ENDPOINT: "http://127.0.0.1:4318",
        OTEL_EXPORTER_OTLP_PROTOCOL: "grpc"
      }, 30_000).finally(() => rmSync(dataDir, { recursive: true, force: true }))
      expect(code).toBe(1)
      expect(output).toContain("Invalid configuration")
      expect(output).toContain("OTEL_EXPORTER_OTLP_PROTOCOL")
      expect(output).toContain("gRPC is not supported")
      expect(output.split("Invalid configuration").length - 1).toBe(1) // said once (it was twice)
    }), 60_000)
})

// --- in process --------------------------------------------------------------------------------------------------

const settings = (env: Record<string, string>) =>
  Effect.either(Effect.withConfigProvider(tracingSettings, ConfigProvider.fromMap(new Map(Object.entries(env)))))

describe("export", () => {
  it.live("a collector refusing the spans is said once, and its answering again", () =>
    Effect.gen(function*() {
      let status = 400
      const exports: Array<number> = []
      const collector = yield* Effect.acquireRelease(
        Effect.promise(() =>
          new Promise<Http.Server>((resolve) => {
            const server = Http.createServer((req, res) => {
              req.resume()
              req.on("end", () => {
                exports.push(status)
                res.writeHead(status, { "content-type": "application/json" }).end("{}")
              })
            })
            server.listen(0, "127.0.0.1", () => resolve(server))
          })
        ),
        (server) => Effect.promise(() => new Promise((resolve) => server.close(resolve)))
      )
      const url = `http://127.0.0.1:${(collector.address() as { port: number }).port}`
      // The batch span processor's delay, read from the environment when it is made: 50 ms instead of 5 s.
      yield* Effect.acquireRelease(
        Effect.sync(() => {
          const before = process.env.OTEL_BSP_SCHEDULE_DELAY
          process.env.OTEL_BSP_SCHEDULE_DELAY = "50"
          return before
        }),
        (before) => Effect.sync(() => (before === undefined ? delete process.env.OTEL_BSP_SCHEDULE_DELAY : (process.env.OTEL_BSP_SCHEDULE_DELAY = before)))
      )
      const lines: Array<{ level: string; message: string }> = []
      const recorder = Logger.make(({ logLevel, message }) => void lines.push({ level: logLevel.label, message: String(message) }))
      const traced = Option.getOrThrow(Either.getOrThrow(yield* settings({ OTEL_EXPORTER_OTLP_ENDPOINT: url, OTEL_TRACES_SAMPLER: "always_on" })))
      const context = yield* Layer.build(layerWith(traced).pipe(Layer.provide(Logger.replace(Logger.defaultLogger, recorder))))
      const span = Effect.provide(Effect.withSpan(Effect.void, "probe"), context)

      yield* span
      yield* eventually(() => expect(lines).toHaveLength(1), 5000)
      yield* span // a second failure is not said again
      yield* eventually(() => expect(exports.length).toBeGreaterThanOrEqual(2), 5000)
      status = 200
      yield* span
      yield* eventually(() => expect(lines).toHaveLength(2), 5000)
      expect(lines).toEqual([
        { level: "WARN", message: expect.stringMatching(new RegExp(`^Traces could not be sent to ${url}/v1/traces: .*; spans are dropped until it answers$`)) },
        { level: "INFO", message: `Traces are sent to ${url}/v1/traces again` }
      ])
    }).pipe(Effect.scoped))
})

describe("tracing settings", () => {
  it.effect("off unless an endpoint is set (or with OTEL_SDK_DISABLED or OTEL_TRACES_EXPORTER=none)", () =>
    Effect.gen(function*() {
      expect(yield* settings({})).toEqual(Either.right(Option.none()))
      expect(yield* settings({ OTEL_EXPORTER_OTLP_ENDPOINT: "" })).toEqual(Either.right(Option.none()))
      expect(yield* settings({ OTEL_TRACES_SAMPLER: "always_on", OTEL_SERVICE_NAME: "x" })).toEqual(Either.right(Option.none()))
      expect(yield* settings({ OTEL_EXPORTER_OTLP_ENDPOINT: "http://c:4318", OTEL_SDK_DISABLED: "true" })).toEqual(Either.right(Option.none()))
      expect(yield* settings({ OTEL_EXPORTER_OTLP_ENDPOINT: "http://c:4318", OTEL_TRACES_EXPORTER: "none" })).toEqual(Either.right(Option.none()))
      expect(Either.map(yield* settings({ OTEL_EXPORTER_OTLP_ENDPOINT: "http://c:4318", OTEL_TRACES_EXPORTER: "otlp" }), Option.isSome)).toEqual(Either.right(true))
    }))

  it.effect("the standard variables, with their defaults", () =>
    Effect.gen(function*() {
      const base = Option.getOrThrow(Either.getOrThrow(yield* settings({ OTEL_EXPORTER_OTLP_ENDPOINT: "http://c:4318/" })))
      expect({ ...base, headers: Redacted.value(base.headers) }).toEqual({
        url: "http://c:4318/v1/traces",
        protocol: "http/protobuf",
        headers: {},
        serviceName: "effect-openai-batch",
        sampler: "parentbased_always_on",
        samplerArg: 1,
        upstreamCalls: DEFAULT_UPSTREAM_CALLS,
        resourceAttributes: {}
      })
      // The path is added to the base's path, not to its end: a query stays a query.
      const withQuery = yield* settings({ OTEL_EXPORTER_OTLP_ENDPOINT: "https://c.example/otlp/?token=abc" })
      expect(Either.map(withQuery, Option.map((s) => s.url))).toEqual(Either.right(Option.some("https://c.example/otlp/v1/traces?token=abc")))
      const full = Option.getOrThrow(Either.getOrThrow(yield* settings({
        OTEL_EXPORTER_OTLP_ENDPOINT: "http://c:4318/otlp",
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: "https://traces.example/ingest",
        OTEL_EXPORTER_OTLP_PROTOCOL: "http/protobuf",
        OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: "http/json",
        OTEL_EXPORTER_OTLP_HEADERS: "api-key=secret%20one,x-team=batch",
        OTEL_EXPORTER_OTLP_TRACES_HEADERS: "api-key=secret two",
        OTEL_RESOURCE_ATTRIBUTES: "deployment.environment=prod%2Ceu,service.name=from-attributes,service.instance.id=pod-7,k8s.pod.name=a=b",
        OTEL_TRACES_SAMPLER: "parentbased_traceidratio",
        OTEL_TRACES_SAMPLER_ARG: "0.25"
      })))
      expect({ ...full, headers: Redacted.value(full.headers) }).toEqual({
        url: "https://traces.example/ingest",
        protocol: "http/json",
        headers: { "api-key": "secret two", "x-team": "batch" },
        serviceName: "from-attributes",
        instanceId: "pod-7",
        resourceAttributes: { "deployment.environment": "prod,eu", "service.name": "from-attributes", "service.instance.id": "pod-7", "k8s.pod.name": "a=b" },
        sampler: "parentbased_traceidratio",
        samplerArg: 0.25,
        upstreamCalls: DEFAULT_UPSTREAM_CALLS
      })
      const upstreamCalls = (env: Record<string, string>) =>
        Effect.map(settings({ OTEL_EXPORTER_OTLP_ENDPOINT: "http://c:4318", ...env }), (e) => Option.getOrThrow(Either.getOrThrow(e)).upstreamCalls)
      expect(yield* upstreamCalls({ OTEL_TRACES_SAMPLER: "always_on" })).toBe(1)
      expect(yield* upstreamCalls({ OTEL_TRACES_SAMPLER: "always_on", TRACE_UPSTREAM_CALLS: "0.1" })).toBe(0.1)
      expect(yield* upstreamCalls({ OTEL_TRACES_SAMPLER: "always_off" })).toBe(0)
      expect(yield* upstreamCalls({ TRACE_UPSTREAM_CALLS: "all" })).toBe(1)
      expect(yield* upstreamCalls({ TRACE_UPSTREAM_CALLS: "none" })).toBe(0)
    }))

  it.effect("a wrong value is a ConfigError naming its variable (and never repeating a header's value)", () =>
    Effect.gen(function*() {
      const failure = (env: Record<string, string>) =>
        Effect.map(settings({ OTEL_EXPORTER_OTLP_ENDPOINT: "http://c:4318", ...env }), (e) => (Either.isLeft(e) ? String(e.left) : "no error"))
      expect(yield* failure({ OTEL_EXPORTER_OTLP_ENDPOINT: "c:4318" })).toContain("OTEL_EXPORTER_OTLP_ENDPOINT")
      // An endpoint may carry credentials: not repeated.
      for (const name of ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]) {
        const endpoint = yield* failure({ [name]: "ftp://user:PwSECRET@collector/?token=TOKSECRET" })
        expect(endpoint).toContain(name)
        expect(endpoint).not.toMatch(/PwSECRET|TOKSECRET/)
      }
      expect(yield* failure({ OTEL_RESOURCE_ATTRIBUTES: "deployment.environment" })).toContain("OTEL_RESOURCE_ATTRIBUTES")
      expect(yield* failure({ OTEL_RESOURCE_ATTRIBUTES: "team=%E0%A4%A" })).toContain("OTEL_RESOURCE_ATTRIBUTES")
      expect(yield* failure({ OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: "grpc" })).toContain("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
      expect(yield* failure({ OTEL_TRACES_SAMPLER: "sometimes" })).toContain("OTEL_TRACES_SAMPLER")
      expect(yield* failure({ OTEL_TRACES_SAMPLER_ARG: "2" })).toContain("OTEL_TRACES_SAMPLER_ARG")
      expect(yield* failure({ TRACE_UPSTREAM_CALLS: "most" })).toContain("TRACE_UPSTREAM_CALLS")
      expect(yield* failure({ OTEL_TRACES_EXPORTER: "zipkin" })).toContain("OTEL_TRACES_EXPORTER")
      const headers = yield* failure({ OTEL_EXPORTER_OTLP_HEADERS: "api-key=%E0%A4%A" })
      expect(headers).toContain("OTEL_EXPORTER_OTLP_HEADERS")
      expect(headers).not.toContain("%E0")
      expect(parseHeaders("a=1,b")).toEqual(Either.left("Expected name=value pairs separated by commas"))
      // Node's HTTP client refuses a character beyond Latin-1 in a header: every export would fail.
      expect(yield* failure({ OTEL_EXPORTER_OTLP_HEADERS: "x-org=org-%E2%80%A6" })).toContain("OTEL_EXPORTER_OTLP_HEADERS")
      expect(parseHeaders("x-org=caf%C3%A9")).toEqual(Either.right({ "x-org": "café" }))
    }))

  it("a server span's status is its answer's: an error for a 5xx (with error.type), unset below", () => {
    const exporter = new InMemorySpanExporter()
    const provider = new BasicTracerProvider({ spanProcessors: [serverSpanConventions(OtelApi), new SimpleSpanProcessor(exporter)] })
    const tracer = provider.getTracer("test")
    const answered = (status: number, failure?: string) => {
      const span = tracer.startSpan("GET", { kind: OtelApi.SpanKind.SERVER, attributes: { "http.request.method": "GET", "url.path": "/v1/batches" } })
      span.setAttribute("http.response.status_code", status)
      // As Effect's tracer ends it: OK for any answer, an error with its message for a defect.
      span.setStatus(failure === undefined ? { code: OtelApi.SpanStatusCode.OK } : { code: OtelApi.SpanStatusCode.ERROR, message: failure })
      span.end()
      const [ended] = exporter.getFinishedSpans().slice(-1)
      return { name: ended!.name, status: ended!.status, errorType: ended!.attributes["error.type"] }
    }
    expect(answered(500)).toEqual({ name: "GET /v1/batches", status: { code: OtelApi.SpanStatusCode.ERROR }, errorType: "500" })
    expect(answered(503, "the database is unavailable")).toEqual({
      name: "GET /v1/batches",
      status: { code: OtelApi.SpanStatusCode.ERROR, message: "the database is unavailable" },
      errorType: "503"
    })
    expect(answered(404)).toEqual({ name: "GET /v1/batches", status: { code: OtelApi.SpanStatusCode.UNSET }, errorType: undefined })
    expect(answered(499, "{ a dump of the answer }")).toMatchObject({ status: { code: OtelApi.SpanStatusCode.UNSET } })
    expect(answered(200)).toMatchObject({ status: { code: OtelApi.SpanStatusCode.UNSET } })
  })

  it("picks the given fraction of calls, evenly, the first one included", () => {
    expect(makeFractionPicker(0)).toBeUndefined()
    const picks = (fraction: number, n: number) => {
      const pick = makeFractionPicker(fraction)!
      return Array.from({ length: n }, pick)
    }
    expect(picks(1, 5)).toEqual([true, true, true, true, true])
    expect(picks(0.25, 8)).toEqual([true, false, false, false, true, false, false, false])
    expect(picks(0.01, 50_000).filter(Boolean).length).toBe(500)
  })
})

describe("upstream call spans", () => {
  /** An upstream that answers every call (with `status`) and keeps each request's `traceparent` header. */
  const upstream = (status = 200) => {
    const seen: Array<string | undefined> = []
    // Built with `makeWith`, as the live upstream client is: no span or header of the platform's own.
    const http = HttpClient.makeWith<never, never, never, never>((effect) =>
      Effect.map(effect, (request) => {
        if (request.method === "POST") seen.push(request.headers["traceparent"])
        const body = request.method === "GET" ? `{"data":[{"id":"m"}]}` : `{"id":"chatcmpl-7","model":"m","usage":{"prompt_tokens":3,"completion_tokens":4,"prompt_tokens_details":{"cached_tokens":2},"completion_tokens_details":{"reasoning_tokens":1}}}`
        return HttpClientResponse.fromWeb(request, new Response(body, { status: request.method === "GET" ? 200 : status }))
      }), Effect.succeed)
    return { seen, http }
  }
  /** A tracer that keeps every span it makes. */
  const recording = () => {
    const spans: Array<EffectTracer.Span> = []
    const native = EffectTracer.make({
      span: (name, parent, context, links, startTime, kind) => {
        const span = new (class implements EffectTracer.Span {
          readonly _tag = "Span"
          readonly spanId = Math.random().toString(16).slice(2, 18).padEnd(16, "0")
          readonly traceId = "0af7651916cd43dd8448eb211c80319c"
          readonly sampled = true
          readonly attributes = new Map<string, unknown>()
          status: EffectTracer.SpanStatus = { _tag: "Started", startTime }
          readonly name = name
          readonly parent = parent
          readonly context = context
          readonly links = links
          readonly kind = kind
          end(endTime: bigint, exit: any) {
            this.status = { _tag: "Ended", startTime, endTime, exit }
          }
          attribute(key: string, value: unknown) {
            this.attributes.set(key, value)
          }
          event() {}
          addLinks() {}
        })()
        spans.push(span)
        return span
      },
      context: (f) => f()
    })
    return { spans, native }
  }

  const inference = (http: HttpClient.HttpClient, fraction: number) =>
    InferenceOverHttpClient.pipe(
      Layer.provide(Layer.succeed(HttpClient.HttpClient, http)),
      Layer.provide(layerUpstreamCallTracing(fraction)),
      Layer.provide(AppConfig.layerWith({ inferenceBaseUrl: "http://vllm.internal:8000/v1", upstreamProbeInterval: Duration.seconds(60) }))
    )

  it.live("a traced call is a CLIENT span that sends its traceparent upstream; the others send none and make no span", () => {
    const { http, seen } = upstream()
    const { native, spans } = recording()
    return Effect.gen(function*() {
      const inf = yield* Inference
      for (let i = 0; i < 4; i++) yield* inf.send("/v1/chat/completions", `{"model":"m","temperature":0.5,"max_tokens":9}`, { model: "m" })
      const calls = spans.filter((s) => s.kind === "client")
      expect(calls.map((s) => s.name)).toEqual(["chat m", "chat m"])
      expect(seen.map((h) => h === undefined)).toEqual([false, true, false, true])
      expect(seen.filter((h) => h !== undefined)).toEqual(calls.map((s) => `00-${s.traceId}-${s.spanId}-01`))
      expect(Object.fromEntries(calls[0]!.attributes)).toEqual({
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "default",
        "gen_ai.request.model": "m",
        "gen_ai.request.max_tokens": 9,
        "gen_ai.request.temperature": 0.5,
        "server.address": "vllm.internal",
        "server.port": 8000,
        "http.response.status_code": 200,
        "gen_ai.response.id": "chatcmpl-7",
        "gen_ai.response.model": "m",
        "gen_ai.usage.input_tokens": 3,
        "gen_ai.usage.output_tokens": 4,
        "gen_ai.usage.cache_read.input_tokens": 2,
        "gen_ai.usage.reasoning.output_tokens": 1
      })
    }).pipe(Effect.provide(inference(http, 0.5)), Effect.withTracer(native))
  })

  it.live("a call handed back in its backoff (its batch's turn ended) ends its span OK: nothing failed", () => {
    const { http } = upstream(429)
    const { native, spans } = recording()
    const { handBack, want } = manualHandBack()
    want()
    return Effect.gen(function*() {
      const inf = yield* Inference
      const failure = yield* Effect.flip(inf.send("/v1/chat/completions", `{"model":"m"}`, { model: "m", attempts: { used: 0 }, handBack }))
      expect(failure._tag).toBe("HandedBack")
      const calls = spans.filter((s) => s.kind === "client")
      expect(calls.length).toBe(1)
      expect(calls[0]!.status._tag === "Ended" && Exit.isSuccess(calls[0]!.status.exit)).toBe(true)
      expect(calls[0]!.attributes.get("error.type")).toBeUndefined()
    }).pipe(Effect.provide(inference(http, 1)), Effect.withTracer(native))
  })

  it.live("without TracingLive (the default) no call makes a span or sends a traceparent", () => {
    const { http, seen } = upstream()
    const { native, spans } = recording()
    return Effect.gen(function*() {
      const inf = yield* Inference
      for (let i = 0; i < 3; i++) yield* inf.send("/v1/chat/completions", `{"model":"m"}`, { model: "m" })
      expect(spans.filter((s) => s.kind === "client")).toEqual([])
      expect(seen).toEqual([undefined, undefined, undefined])
    }).pipe(
      Effect.provide(InferenceOverHttpClient.pipe(
        Layer.provide(Layer.succeed(HttpClient.HttpClient, http)),
        Layer.provide(AppConfig.layerWith({ inferenceBaseUrl: "http://vllm.internal:8000/v1", upstreamProbeInterval: Duration.seconds(60) }))
      )),
      Effect.withTracer(native)
    )
  })
})
