/**
 * The logs an operator reads: the real server process writes one JSON object a line (the default when stdout is
 * not a terminal), with the lifecycle of a batch under its `batch_id`, one line per HTTP request under its
 * `request_id` (the caller's `x-request-id` when it sent a sane one), and no secret anywhere; `LOG_FORMAT=pretty`
 * and `LOG_LEVEL=debug` change the format and let the probes' lines through. The JSON logger itself: annotations at
 * the top level, the current span's ids.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import type * as HttpApp from "@effect/platform/HttpApp"
import * as HttpServerRequest from "@effect/platform/HttpServerRequest"
import * as HttpServerResponse from "@effect/platform/HttpServerResponse"
import { Cause, Effect, Exit, Layer, Logger, LogLevel, Option, Redacted } from "effect"
import { defaults } from "../src/Config.js"
import { addressUrl, listeningLine } from "../src/observability/Lifecycle.js"
import { postgresText } from "../src/observability/urlText.js"
import Database from "better-sqlite3"
import { mkdtempSync, readFileSync, rmSync } from "node:fs"
import { connect } from "node:net"
import { tmpdir } from "node:os"
import * as Path from "node:path"
import OpenAI from "openai"
import { type Simulator, startSimulator } from "../scripts/simulator.js"
import { noteProject, requestIdFrom, requestLog } from "../src/http/RequestLog.js"
import { jsonLineLogger } from "../src/observability/Logging.js"
import * as BatchLines from "../src/observability/batchLines.js"
import { chatLine, createBatch, sdk, terminal, upload, waitFor } from "./support/Batches.js"
import { type ServerProcess, startServer } from "./support/ServerProcess.js"

const API_KEY = "sk-log-test-client-key-0123456789"
const UPSTREAM_KEY = "sk-log-test-upstream-key-9876543210"
/** The trace a caller's `traceparent` continues (the server itself exports none: no `OTEL_*` endpoint). */
const CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"

/** The process's stdout, each line parsed (a line that is not JSON fails the test). */
const jsonLines = (server: ServerProcess): Array<Record<string, any>> =>
  server.stdout().split("\n").filter((line) => line !== "").map((line) => {
    try {
      return JSON.parse(line)
    } catch {
      throw new Error(`not a JSON line: ${line}`)
    }
  })

describe("the logs of the server process", () => {
  let sim: Simulator
  let server: ServerProcess
  let dataDir: string
  let lines: Array<Record<string, any>>
  let batch: OpenAI.Batch
  let createRequestId: string | null
  let oddIdAnswer: string | null

  beforeAll(async () => {
    sim = await startSimulator()
    dataDir = mkdtempSync(Path.join(tmpdir(), "batch-logs-"))
    server = await startServer({
      DATA_DIR: dataDir,
      INFERENCE_BASE_URL: sim.url,
      INFERENCE_API_KEY: UPSTREAM_KEY,
      API_KEYS: `${API_KEY}:projL`,
      NODE_ID: "logs-node-1",
      // A proxy nothing goes through (the simulator is exempted), and a range undici does not match.
      ...Object.fromEntries(["http_proxy", "HTTP_PROXY"].map((name) => [name, "http://127.0.0.1:9"])),
      ...Object.fromEntries(["no_proxy", "NO_PROXY"].map((name) => [name, "127.0.0.1,localhost,10.0.0.0/8"])),
      https_proxy: "",
      HTTPS_PROXY: ""
    })
    const openai = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: API_KEY, maxRetries: 0 })
    const file = await Effect.runPromise(upload(openai, [
      chatLine("a", "hello"),
      chatLine("b", "[fail:400] refused"),
      chatLine("c", "world")
    ]))
    const created = await openai.batches.create(
      { input_file_id: file.id, endpoint: "/v1/chat/completions", completion_window: "24h" },
      { headers: { "x-request-id": "create-req-1", traceparent: `00-${CALLER_TRACE}-00f067aa0ba902b7-01` } }
    ).withResponse()
    createRequestId = created.response.headers.get("x-request-id")
    batch = await Effect.runPromise(waitFor(openai, created.data.id, terminal))
    // A request id that is not sane (spaces, too long) is replaced by one of the server's own.
    const odd = await fetch(`${server.url}/v1/batches/${batch.id}`, {
      headers: { authorization: `Bearer ${API_KEY}`, "x-request-id": `bad id ${"x".repeat(200)}` }
    })
    oddIdAnswer = odd.headers.get("x-request-id")
    // Trace contexts W3C says to ignore (upper-case hex, all-zero ids, version ff, version 00 with more), and a later
    // version's, read as far as version 00 goes.
    const traceparents = {
      "tp-upper": `00-${CALLER_TRACE.toUpperCase()}-00f067aa0ba902b7-01`,
      "tp-zero-trace": `00-${"0".repeat(32)}-00f067aa0ba902b7-01`,
      "tp-zero-parent": `00-${CALLER_TRACE}-${"0".repeat(16)}-01`,
      "tp-version-ff": `ff-${CALLER_TRACE}-00f067aa0ba902b7-01`,
      "tp-00-longer": `00-${CALLER_TRACE}-00f067aa0ba902b7-01-extra`,
      "tp-later": `01-${CALLER_TRACE}-00f067aa0ba902b7-01-what-comes-next`
    }
    for (const [id, traceparent] of Object.entries(traceparents)) {
      const answer = await fetch(`${server.url}/v1/files`, { headers: { authorization: `Bearer ${API_KEY}`, "x-request-id": id, traceparent } })
      expect(answer.status).toBe(200)
    }
    // A key refused: its line names the client's address.
    expect((await fetch(`${server.url}/v1/files`, { headers: { authorization: "Bearer sk-guess", "x-request-id": "guess-1" } })).status).toBe(401)
    // A fault in an API route (its table gone for a moment): a 500, and the fault's own line.
    const db = new Database(Path.join(dataDir, "batches.sqlite"))
    db.exec("ALTER TABLE files RENAME TO files_away")
    const faulted = await fetch(`${server.url}/v1/files`, { headers: { authorization: `Bearer ${API_KEY}`, "x-request-id": "faulted-1" } })
    db.exec("ALTER TABLE files_away RENAME TO files")
    db.close()
    expect(faulted.status).toBe(500)
    // A client that gives up halfway through its body.
    const url = new URL(server.url)
    const quitter = connect(Number(url.port), url.hostname)
    quitter.on("error", () => {})
    quitter.write(
      `POST /v1/batches HTTP/1.1\r\nhost: ${url.host}\r\nauthorization: Bearer ${API_KEY}\r\n` +
        `x-request-id: gave-up-1\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{"input_file_id":`
    )
    await new Promise((r) => setTimeout(r, 200))
    quitter.destroy()
    for (let i = 0; i < 100 && !server.stdout().includes('"request_id":"gave-up-1"'); i++) await new Promise((r) => setTimeout(r, 20))
    expect(await server.stop("SIGTERM")).toBe(0)
    lines = jsonLines(server)
  }, 60_000)

  afterAll(async () => {
    await server?.stop("SIGKILL")
    await sim?.close()
    if (dataDir) rmSync(dataDir, { recursive: true, force: true })
  })

  const event = (name: string) => lines.filter((l) => l.event === name)

  it("are JSON objects, one a line, each with its time, level, message and node", () => {
    expect(lines.length).toBeGreaterThan(5)
    for (const line of lines) {
      expect(line).toMatchObject({ timestamp: expect.any(String), level: expect.any(String), message: expect.any(String), node_id: "logs-node-1" })
      expect(Date.parse(line.timestamp)).not.toBeNaN()
    }
  })

  it("take a client that went away mid-body for a 499, not for a fault of the server", () => {
    expect(lines.find((l) => l.request_id === "gave-up-1")).toMatchObject({
      level: "INFO",
      event: "http.request",
      route: "/v1/batches",
      status: 499
    })
    expect(lines.filter((l) => l.level === "ERROR" && l.request_id !== "faulted-1")).toEqual([])
  })

  it("say where the server listens, on which database, to which upstream, and when it shuts down", () => {
    expect(event("server.listening")).toEqual([expect.objectContaining({
      level: "INFO",
      address: server.url,
      backend: "sqlite",
      upstreams: [{ name: "default", base_url: sim.url, models: ["*"], max_concurrency: 256 }],
      api_keys: true,
      tracing: null,
      proxy: { http: "http://127.0.0.1:9/", https: "http://127.0.0.1:9/", no_proxy: "127.0.0.1,localhost,10.0.0.0/8" },
      default_webhook: false
    })])
    // Said once (the upstreams' client and the webhooks' are made apart), after the line that names the proxy.
    expect(lines.filter((l) => l.message.startsWith("NO_PROXY gives"))).toEqual([expect.objectContaining({
      level: "WARN",
      message: "NO_PROXY gives 10.0.0.0/8: address ranges are not matched (list the hosts, or their domain as .example.internal): calls to those hosts go through the proxy"
    })])
    expect(event("server.listening")[0]!.message).toContain("; API keys required")
    // Where to point an SDK and a browser; on every interface, this machine's address.
    expect(event("server.listening")[0]!.message).toMatch(new RegExp(`: the SDKs' base URL is ${server.url}/v1, the dashboard ${server.url}/ui/$`))
    // An IPv6 address as a URL writes it: in brackets.
    expect(addressUrl({ _tag: "TcpAddress", hostname: "::1", port: 8321 })).toBe("http://[::1]:8321")
    expect(addressUrl({ _tag: "TcpAddress", hostname: "127.0.0.1", port: 8321 })).toBe("http://127.0.0.1:8321")
    // HOST=:: listens on both families, which the platform's address calls 0.0.0.0.
    expect(addressUrl({ _tag: "TcpAddress", hostname: "0.0.0.0", port: 8321 }, "::")).toBe("http://[::]:8321")
    expect(addressUrl({ _tag: "TcpAddress", hostname: "0.0.0.0", port: 8321 }, "::0")).toBe("http://[::]:8321")
    expect(addressUrl({ _tag: "TcpAddress", hostname: "0.0.0.0", port: 8321 }, "0.0.0.0")).toBe("http://0.0.0.0:8321")
    for (const everywhere of ["http://0.0.0.0:8321", addressUrl({ _tag: "TcpAddress", hostname: "::", port: 8321 })]) {
      expect(listeningLine(everywhere, defaults, true, [], Option.none()).message)
        .toMatch(/: the SDKs' base URL is http:\/\/localhost:8321\/v1, the dashboard http:\/\/localhost:8321\/ui\/$/)
    }
    // Nodes of several schemas on one PostgreSQL database told apart, never with the password.
    const onSchema = listeningLine(server.url, { ...defaults, databaseUrl: Option.some(Redacted.make("postgres://u:pw@db:5432/app?options=-c%20search_path%3Dbatches%2Cpublic")) }, true, [], Option.none())
    expect(onSchema.message).toContain("(PostgreSQL at db:5432/app, schema batches;")
    expect(onSchema.message).not.toContain("pw")
    expect(postgresText("postgres://db/app?options=--search_path%3D%22Jobs%22")).toBe("PostgreSQL at db/app, schema Jobs")
    expect(postgresText("postgres://db/app?options=-c%20statement_timeout%3D5s")).toBe("PostgreSQL at db/app")
    expect(postgresText("postgres://db/app?options=-c%20search_path%3D%22%24user%22%2Cpublic")).toBe("PostgreSQL at db/app")
    const order = lines.map((l) => l.event).filter((e) => e?.startsWith("server."))
    expect(order).toEqual(["server.listening", "server.shutdown_started", "server.shutdown_finished"])
  })

  it("follow the batch from creation to its end under its batch_id, with its counts and usage", () => {
    expect(event("batch.created")).toEqual([expect.objectContaining({
      batch_id: batch.id,
      request_id: "create-req-1", // logged while serving the create
      project: "projL",
      endpoint: "/v1/chat/completions",
      input_file_id: batch.input_file_id
    })])
    expect(event("batch.validated")).toEqual([expect.objectContaining({ batch_id: batch.id, lines: 3, model: "sim-model", project: "projL" })])
    const [finished] = event("batch.finished")
    expect(event("batch.finished")).toHaveLength(1)
    expect(finished).toMatchObject({
      batch_id: batch.id,
      status: "completed",
      total: 3,
      completed: 2,
      failed: 1,
      input_tokens: batch.usage!.input_tokens,
      cached_tokens: batch.usage!.input_tokens_details.cached_tokens,
      output_tokens: batch.usage!.output_tokens,
      reasoning_tokens: batch.usage!.output_tokens_details.reasoning_tokens,
      total_tokens: batch.usage!.total_tokens,
      duration_s: expect.any(Number),
      project: "projL" // a project's usage from its finished lines alone
    })
    expect(batch.request_counts).toEqual({ total: 3, completed: 2, failed: 1 })
    // The batch's own lines do not carry the id of the request that created it, long over by then.
    expect(finished!.request_id).toBeUndefined()
  })

  it("have one line per request, under the caller's x-request-id and trace, with the route, status, duration and project", () => {
    expect(createRequestId).toBe("create-req-1")
    const create = lines.filter((l) => l.event === "http.request" && l.request_id === "create-req-1")
    expect(create).toEqual([expect.objectContaining({
      level: "INFO",
      method: "POST",
      route: "/v1/batches",
      path: "/v1/batches",
      status: 200,
      project: "projL",
      duration_ms: expect.any(Number),
      trace_id: CALLER_TRACE
    })])
    expect(oddIdAnswer).toMatch(/^req_[0-9a-f]{32}$/)
    expect(lines.filter((l) => l.request_id === oddIdAnswer)).toEqual([expect.objectContaining({
      event: "http.request",
      method: "GET",
      route: "/v1/batches/:batch_id",
      path: `/v1/batches/${batch.id}`,
      status: 200
    })])
    // Without tracing, a request that continues no trace has no span, hence no trace_id: its request_id finds it.
    expect(lines.find((l) => l.request_id === oddIdAnswer)!.trace_id).toBeUndefined()
    // A fault in an API route: its request's line a warning, the fault's own line an error with its cause.
    expect(lines.filter((l) => l.request_id === "faulted-1")).toEqual([
      expect.objectContaining({ level: "ERROR", event: "http.fault", message: "Unhandled fault while serving a request", cause: expect.stringContaining("files") }),
      expect.objectContaining({ level: "WARN", event: "http.request", status: 500, route: "/v1/files" })
    ])
    expect(lines.find((l) => l.request_id === "guess-1")).toMatchObject({ status: 401, client_address: expect.stringMatching(/127\.0\.0\.1|::1/) })
    expect(lines.find((l) => l.request_id === "create-req-1")!.client_address).toBeUndefined()
    const traceOf = (requestId: string) => lines.find((l) => l.request_id === requestId)!.trace_id
    expect(["tp-upper", "tp-zero-trace", "tp-zero-parent", "tp-version-ff", "tp-00-longer"].map(traceOf)).toEqual([undefined, undefined, undefined, undefined, undefined])
    expect(traceOf("tp-later")).toBe(CALLER_TRACE)
    // Health probes (the test harness polled /v1/health until the server answered) are debug lines: not at info.
    expect(lines.filter((l) => l.path === "/v1/health")).toEqual([])
  })

  it("never hold the API key or the upstream's key", () => {
    expect(server.output()).not.toContain(API_KEY)
    expect(server.output()).not.toContain(UPSTREAM_KEY)
  })
})

describe("the logs across a restart", () => {
  it.live("a batch unfinished when the server stopped is logged as taken up by the next start, under its batch_id", () =>
    Effect.promise(async () => {
      const sim = await startSimulator()
      const dataDir = mkdtempSync(Path.join(tmpdir(), "batch-logs-"))
      try {
        const first = await startServer({ DATA_DIR: dataDir, INFERENCE_BASE_URL: sim.url })
        const openai = sdk(first.url)
        const file = await Effect.runPromise(upload(openai, [chatLine("slow", "[sleep:1500] take your time")]))
        const batch = await Effect.runPromise(createBatch(openai, file.id))
        await Effect.runPromise(waitFor(openai, batch.id, (b) => b.status === "in_progress"))
        expect(await first.stop("SIGTERM")).toBe(0)
        expect(jsonLines(first).filter((l) => l.event === "batch.picked_up")).toEqual([]) // created here: not picked up
        // The stop says what it leaves, before its last line.
        const stopping = jsonLines(first).map((l) => l.event).filter((e) => e?.startsWith("server."))
        expect(stopping.slice(-3)).toEqual(["server.shutdown_started", "server.batches_left", "server.shutdown_finished"])
        expect(jsonLines(first).filter((l) => l.event === "server.batches_left")).toEqual([
          expect.objectContaining({ count: 1, batch_ids: [batch.id], message: expect.stringContaining(batch.id) })
        ])

        const second = await startServer({ DATA_DIR: dataDir, INFERENCE_BASE_URL: sim.url })
        const done = await Effect.runPromise(waitFor(sdk(second.url), batch.id, terminal))
        expect(await second.stop("SIGTERM")).toBe(0)
        const lines = jsonLines(second)
        expect(lines.filter((l) => l.event === "batch.picked_up")).toEqual([
          // On SQLite, one process runs the batches: no other node is hinted at.
          expect.objectContaining({
            batch_id: batch.id,
            reason: "restart",
            message: "Batch taken up as this node started: left unfinished by the last process to run this database's batches"
          })
        ])
        expect(lines.filter((l) => l.event === "batch.finished")).toEqual([
          expect.objectContaining({ batch_id: batch.id, status: done.status, completed: 1 })
        ])
        // The pick-up is the first line of the batch's work on this node: in its trace, not the heartbeat's.
        const [pickedUp] = lines.filter((l) => l.event === "batch.picked_up")
        const [finished] = lines.filter((l) => l.event === "batch.finished")
        expect(pickedUp.trace_id).toBeDefined()
        expect(pickedUp.trace_id).toBe(finished.trace_id)
      } finally {
        await sim.close()
        rmSync(dataDir, { recursive: true, force: true })
      }
    }), 60_000)
})

describe("LOG_FORMAT and LOG_LEVEL", () => {
  it.live("pretty lines, and the probes' lines at debug level", () =>
    Effect.promise(async () => {
      const dataDir = mkdtempSync(Path.join(tmpdir(), "batch-logs-"))
      try {
        const server = await startServer({ DATA_DIR: dataDir, LOG_FORMAT: "pretty", LOG_LEVEL: "debug" })
        await fetch(`${server.url}/v1/ready`)
        expect(await server.stop()).toBe(0)
        const out = server.stdout()
        expect(() => JSON.parse(out.split("\n")[0]!)).toThrow()
        expect(out).toMatch(/DEBUG .*GET \/v1\/ready 200/)
        expect(out).toMatch(/INFO .*Listening on http:\/\/127\.0\.0\.1:\d+/)
      } finally {
        rmSync(dataDir, { recursive: true, force: true })
      }
    }), 60_000)
})

/** The CPU time (user and system) a process used so far, in seconds (Linux). */
const cpuSeconds = (pid: number) => {
  const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ")
  return (Number(fields[11]) + Number(fields[12])) / 100 // utime and stime, in clock ticks of 1/100 s
}

describe("a log reader that goes away", () => {
  it.live("leaves the server serving, idle, and stopping on SIGTERM", () =>
    Effect.promise(async () => {
      const dataDir = mkdtempSync(Path.join(tmpdir(), "batch-logs-"))
      let server: ServerProcess | undefined
      try {
        server = await startServer({ DATA_DIR: dataDir, LOG_LEVEL: "info" })
        // As `npm start | head -1` once head has its line: the pipes' reading ends close.
        server.child.stdout!.destroy()
        server.child.stderr!.destroy()
        // Each request's log line goes to the closed pipe.
        for (let i = 0; i < 20; i++) expect((await fetch(`${server.url}/v1/files`)).status).toBe(200)
        await new Promise((resolve) => setTimeout(resolve, 200))
        const before = cpuSeconds(server.child.pid!)
        await new Promise((resolve) => setTimeout(resolve, 1000))
        expect(cpuSeconds(server.child.pid!) - before).toBeLessThan(0.3) // idle: not spinning on its own errors
        expect((await fetch(`${server.url}/v1/files`)).status).toBe(200)
        expect(await server.stop()).toBe(0)
      } finally {
        server?.child.kill("SIGKILL") // when a check failed before the stop
        rmSync(dataDir, { recursive: true, force: true })
      }
    }), 60_000)
})

describe("the JSON line logger", () => {
  const capture = () => {
    const written: Array<string> = []
    const layer = Logger.replace(Logger.defaultLogger, Logger.map(jsonLineLogger, (line) => void written.push(line)))
    return { written, layer: layer as Layer.Layer<never> }
  }

  it.effect("lifts the annotations to the top level and adds the current span's ids", () =>
    Effect.gen(function*() {
      const { layer, written } = capture()
      const span = yield* Effect.logWarning("disk almost full").pipe(
        Effect.annotateLogs({ batch_id: "batch_1", level: "not-a-level" }),
        Effect.zipRight(Effect.currentSpan),
        Effect.withSpan("phase"),
        Effect.provide(layer)
      )
      expect(written).toHaveLength(1)
      const line = JSON.parse(written[0]!)
      expect(line).toMatchObject({
        level: "WARN", // an annotation never overwrites a field of the line
        message: "disk almost full",
        batch_id: "batch_1",
        trace_id: span.traceId,
        span_id: span.spanId
      })
    }))

  it.effect("keeps a cause, and writes one line however odd the values", () =>
    Effect.gen(function*() {
      const { layer, written } = capture()
      const circular: Record<string, unknown> = { name: "loop" }
      circular.self = circular
      yield* Effect.logError("failed", Cause.fail(new Error("boom"))).pipe(
        Effect.annotateLogs({ odd: circular, big: 10n }),
        Effect.provide(layer)
      )
      expect(written[0]!.split("\n")).toHaveLength(1)
      const line = JSON.parse(written[0]!)
      expect(line).toMatchObject({ level: "ERROR", message: "failed", cause: expect.stringContaining("Error: boom") })
      expect(line.big).toBe("10")
      expect(line.trace_id).toBeUndefined()
    }))

  it.effect("a cause logged alone (runMain's report of a failed start) has its first line as the message", () =>
    Effect.gen(function*() {
      const { layer, written } = capture()
      yield* Effect.logError(Cause.fail(new Error("Invalid data at upstreams"))).pipe(Effect.provide(layer))
      const line = JSON.parse(written[0]!)
      expect(line.message).toBe("Error: Invalid data at upstreams") // it was []
      expect(line.cause).toContain("Invalid data at upstreams")
    }))
})

describe("the request id", () => {
  it("is the caller's when sane, else a new one", () => {
    expect(requestIdFrom("create-req-1")).toBe("create-req-1")
    expect(requestIdFrom("4bf92f3577b34da6a3ce929d0e0e4736")).toBe("4bf92f3577b34da6a3ce929d0e0e4736")
    for (const bad of [undefined, "", "has space", "x".repeat(129), "line\nbreak", "quote\"d", "ünïcode"]) {
      expect(requestIdFrom(bad)).toMatch(/^req_[0-9a-f]{32}$/)
    }
  })
})

describe("a request's line", () => {
  /** `app` served through `requestLog` for a request of `path` (a GET unless `method` says). */
  const serve = (path: string, app: HttpApp.Default<unknown>, minimum: LogLevel.LogLevel, method = "GET") =>
    Effect.gen(function*() {
      const written: Array<Record<string, any>> = []
      const layer = Logger.replace(Logger.defaultLogger, Logger.map(jsonLineLogger, (line) => void written.push(JSON.parse(line))))
      const exit = yield* requestLog(Effect.zipRight(noteProject("projR"), app)).pipe(
        Effect.provideService(HttpServerRequest.HttpServerRequest, HttpServerRequest.fromWeb(new Request(`http://localhost${path}?x=1`, { method }))),
        Effect.provide(Layer.merge(layer, Logger.minimumLogLevel(minimum))),
        Effect.exit
      )
      return { exit, written }
    })

  it.effect("a fault no handler answered: an error line with its cause and status 500; the fault goes on", () =>
    Effect.gen(function*() {
      const { exit, written } = yield* serve("/docs", Effect.die(new Error("renderer broke")), LogLevel.Info)
      expect(Exit.isFailure(exit)).toBe(true)
      expect(written).toHaveLength(1)
      expect(written[0]).toMatchObject({
        level: "ERROR",
        message: expect.stringMatching(/^GET \/docs 500 [0-9.]+ ms$/),
        event: "http.request",
        route: "/docs",
        path: "/docs",
        status: 500,
        project: "projR",
        cause: expect.stringContaining("renderer broke")
      })
    }))

  it.effect("an answer: an info line; a probe's is debug, left out at info and written at debug", () =>
    Effect.gen(function*() {
      const ok = Effect.succeed(HttpServerResponse.text("ok"))
      const answered = yield* serve("/v1/files", ok, LogLevel.Info)
      expect(answered.written).toMatchObject([{ level: "INFO", route: "/v1/files", status: 200, project: "projR" }])
      expect(answered.written[0]!.cause).toBeUndefined()
      expect((yield* serve("/v1/health", ok, LogLevel.Info)).written).toEqual([])
      expect((yield* serve("/v1/health/", ok, LogLevel.Info)).written).toEqual([]) // the router's /v1/health too
      expect((yield* serve("/v1/health", ok, LogLevel.Debug)).written).toMatchObject([{ level: "DEBUG", path: "/v1/health", status: 200 }])
      expect((yield* serve("/metrics", ok, LogLevel.Info, "HEAD")).written).toEqual([])
      // Another method there is no probe (a scanner's PROPFIND, a POST): its line is not hidden at info.
      const notFound = Effect.succeed(HttpServerResponse.empty({ status: 404 }))
      for (const method of ["PROPFIND", "POST"]) {
        expect((yield* serve("/v1/health", notFound, LogLevel.Info, method)).written)
          .toMatchObject([{ level: "INFO", method, path: "/v1/health", status: 404 }])
      }
      // A probe refused (a scraper's key wrong, someone trying keys, a name not served), or sent where no metrics are
      // served (the main port once METRICS_PORT is set): info, seen at the default level.
      for (const status of [401, 403, 404, 421]) {
        expect((yield* serve("/metrics", Effect.succeed(HttpServerResponse.empty({ status })), LogLevel.Info)).written)
          .toMatchObject([{ level: "INFO", path: "/metrics", status }])
      }
    }))
})

describe("a batch's lines", () => {
  it.effect("quote what a client chose cut short, its control characters escaped: no line bloated, none forged", () =>
    Effect.gen(function*() {
      const written: Array<string> = []
      const layer = Logger.replace(Logger.defaultLogger, Logger.map(jsonLineLogger, (line) => void written.push(line))) as Layer.Layer<never>
      const fileId = `file-x\n[17:00:00.000] ERROR (#1): forged${"y".repeat(500_000)}`
      const batch = { id: "batch_1", endpoint: "/v1/chat/completions", input_file_id: fileId }
      yield* BatchLines.created(batch as any, "p").pipe(Effect.provide(layer))
      yield* BatchLines.validated("batch_1" as any, 3, "model\nERROR forged", "p").pipe(Effect.provide(layer))
      const [created, validated] = written.map((line) => JSON.parse(line))
      expect(written.join("").length).toBeLessThan(2000)
      expect(created.input_file_id).toBe(`${fileId.slice(0, 64).replace("\n", "\\u000a")}…`)
      expect(validated.message).toBe("Batch validated: 3 request(s) for model\\u000aERROR forged") // one line in any format
    }))
})
