/**
 * An OpenAI-compatible upstream simulator for tests, the demo and the benchmark: `/v1/chat/completions`,
 * `/v1/completions`, `/v1/embeddings`, `/v1/responses`, `/v1/moderations`, `/v1/images/generations`, vLLM's
 * `/v1/rerank` and `/v1/score`, and `/v1/models`, with settable latency and failure injection,
 * a vLLM-like queue (at most `maxRunning` requests processed at once, the others wait) and vLLM's queue gauges at
 * `GET /metrics` (`vllm:num_requests_running`, `vllm:num_requests_waiting`; Prometheus text format 0.0.4), with its
 * own `simulator_requests_total`, `simulator_rejected_total` and `simulator_max_in_flight`.
 *
 * Failures are injected by directives inside the prompt text (`DIRECTIVES` below, which `--help` prints). Unknown
 * models get a 404 `model_not_found`, like OpenAI; a moderation naming none is answered by the first model.
 *
 * Overload and outages, set at run time on the `Simulator` (or as options): `capacity` answers 429
 * `rate_limit_exceeded` at once (no Retry-After) to a request arriving while more than `capacity` are in flight;
 * `failAll` answers every inference request at once with its status (and `Retry-After`, the error's `code` and
 * `message` when given); `gone` answers every request 404 in plain text (a route removed); `stop()` closes
 * the socket and every connection (connection refused) and `start()` listens again on the same port.
 *
 * Options (`startSimulator`): port, latencyMs, models, retryAfterSeconds, maxRunning, capacity, apiKey, tls ({ key, cert }:
 * HTTPS, the `url` then starts with `https://`), keepBodies (every inference request's body text in `stats.bodies`).
 *
 *   npm run simulator -- [--port 8000] [--latency 0] [--models sim-model,other] [--max-running N] [--capacity N]
 *                        [--api-key KEY]
 */
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from "node:http"
import { createServer as createHttpsServer } from "node:https"
import type { AddressInfo } from "node:net"
import { parseArgs } from "node:util"
import { gzipSync } from "node:zlib"
import { answer, BIGNUM_MEMBER, errorBody, HTML_PAGE, pad, promptOf } from "./simulator-answers.js"
import { makeQueue, METRICS_CONTENT_TYPE, metricsText } from "./simulator-queue.js"

export { BIGNUM_COMPACT, BIGNUM_MEMBER, HTML_PAGE } from "./simulator-answers.js"

export interface SimulatorOptions {
  readonly port?: number
  /** Added to every answer, in milliseconds. */
  readonly latencyMs?: number
  /** The models served (default `["sim-model"]`); the first one names the `/metrics` gauges. */
  readonly models?: ReadonlyArray<string>
  /** Seconds sent in `Retry-After` with injected 429s. */
  readonly retryAfterSeconds?: number
  /** At most this many inference requests processed at once (latency and sleeps counting); the others wait, FIFO. */
  readonly maxRunning?: number
  /** A request arriving while more than this many are in flight (itself included) is answered 429 at once. */
  readonly capacity?: number
  /** Answer 401, as OpenAI does, every `/v1` request without `Authorization: Bearer <apiKey>`. */
  readonly apiKey?: string
  /** Serve HTTPS with this key and certificate (PEM). */
  readonly tls?: { readonly key: string; readonly cert: string }
  /** Keep the body text of every inference request received, in `stats.bodies` (tests of what is forwarded). */
  readonly keepBodies?: boolean
  /** `false`: no `GET /v1/models` route (a 404, as for any unknown route), as some servers and gateways have none. */
  readonly listsModels?: boolean
}

export interface SimulatorStats {
  /** Inference requests received (every attempt counts; `GET /v1/models` does not). */
  requests: number
  inFlight: number
  maxInFlight: number
  /** Requests being processed (their latency counting); at most `maxRunning`. */
  running: number
  /** Requests waiting for a processing slot (only with `maxRunning`), and the most seen since start or `reset()`. */
  waiting: number
  maxWaiting: number
  /** Requests answered at once by `capacity` (429) or `failAll`. */
  rejected: number
  /** Requests whose client went away before the answer. */
  aborted: number
  /** `GET /v1/models` requests received. */
  modelLists: number
  /** How many times each prompt was received (rejected attempts included). */
  readonly byPrompt: Map<string, number>
  /** Inference requests per `body.model` (rejected attempts included). */
  readonly byModel: Map<string, number>
  /** With `keepBodies`: each inference request's path and body text, in arrival order. */
  readonly bodies: Array<{ readonly path: string; readonly body: string }>
  /** Inference requests per `accept-encoding` header value ("" for none). */
  readonly acceptEncodings: Map<string, number>
}

export interface Simulator {
  /** `http(s)://127.0.0.1:<port>/v1`. */
  readonly url: string
  /** `http(s)://127.0.0.1:<port>/metrics` (vLLM serves it at the root). */
  readonly metricsUrl: string
  readonly stats: SimulatorStats
  latencyMs: number
  /** See `SimulatorOptions.maxRunning`; raising it (or `undefined`) starts waiting requests at once. */
  maxRunning: number | undefined
  /** See `SimulatorOptions.capacity`. */
  capacity: number | undefined
  /** While set, every inference request is answered at once with this status (and `retry-after` when given). */
  failAll: { status: number; retryAfter?: string; code?: string; message?: string } | undefined
  /**
   * While set, every request (`GET /v1/models` too) is answered 404 with a plain-text body: what a proxy or an
   * ingress answers once the route to the server is gone, or another server now at its address.
   */
  gone: boolean
  /** See `SimulatorOptions.apiKey`; changing it revokes the key the clients send (or lets them in again). */
  apiKey: string | undefined
  /** The models served: changing it changes `GET /v1/models` and which requests get a 404 (a server restarted with another). */
  readonly models: Set<string>
  readonly reset: () => void
  /** Closes the listening socket and every open connection (clients get connection refused); stats are kept. */
  readonly stop: () => Promise<void>
  /** Listens again, on the same port, after `stop()`. */
  readonly start: () => Promise<void>
  readonly close: () => Promise<void>
}

const endpoints = new Set([
  "/v1/chat/completions",
  "/v1/completions",
  "/v1/embeddings",
  "/v1/responses",
  "/v1/moderations",
  "/v1/images/generations",
  "/v1/rerank",
  "/v1/score"
])

export const startSimulator = async (options: SimulatorOptions = {}): Promise<Simulator> => {
  const models = new Set(options.models ?? ["sim-model"])
  const metricsModel = [...models][0] ?? "sim-model"
  const retryAfter = options.retryAfterSeconds ?? 0.05
  const stats: SimulatorStats = {
    requests: 0,
    inFlight: 0,
    maxInFlight: 0,
    running: 0,
    waiting: 0,
    maxWaiting: 0,
    rejected: 0,
    aborted: 0,
    modelLists: 0,
    byPrompt: new Map(),
    byModel: new Map(),
    bodies: [],
    acceptEncodings: new Map()
  }
  const queue = makeQueue(stats, options.maxRunning)
  const scheme = options.tls === undefined ? "http" : "https"
  let port = options.port ?? 0

  const handle = (req: IncomingMessage, res: ServerResponse, raw: string, overCapacity: boolean) => {
    let pretty = false
    let bignum = false
    let trickleMs = 0
    const send = (status: number, json: unknown, headers: Record<string, string> = {}) => {
      let text = pretty ? JSON.stringify(json, null, 2) : JSON.stringify(json)
      if (bignum) {
        const member = pretty
          ? `\n  ${BIGNUM_MEMBER.replace("[", "[\n    ").replace(/, /g, ",\n    ").replace(/\]$/, "\n  ]")},`
          : `${BIGNUM_MEMBER},`
        text = `{${member}${text.slice(1)}`
      }
      write(status, text, { "content-type": "application/json", ...headers })
    }
    const write = (status: number, text: string, headers: Record<string, string>) => {
      const bytes = Buffer.from(text)
      res.writeHead(status, { "content-length": bytes.length, ...headers })
      if (trickleMs <= 0) return res.end(bytes)
      res.flushHeaders()
      let at = 0
      const timer = setInterval(() => {
        if (res.destroyed) return clearInterval(timer)
        res.write(bytes.subarray(at, ++at))
        if (at >= bytes.length) {
          clearInterval(timer)
          res.end()
        }
      }, trickleMs)
      res.on("close", () => clearInterval(timer))
    }
    const path = (req.url ?? "").split("?")[0]!
    if (sim.gone) return write(404, "404 page not found", { "content-type": "text/plain" })
    if (sim.apiKey !== undefined && path.startsWith("/v1/") && req.headers.authorization !== `Bearer ${sim.apiKey}`) {
      return send(401, { error: { message: "Incorrect API key provided.", type: "invalid_request_error", param: null, code: "invalid_api_key" } })
    }
    if (req.method === "GET" && path === "/v1/models" && options.listsModels !== false) {
      stats.modelLists++
      return send(200, { object: "list", data: [...models].map((id) => ({ id, object: "model", owned_by: "simulator" })) })
    }
    if (req.method === "GET" && path === "/metrics") {
      return write(200, metricsText(metricsModel, stats), { "content-type": METRICS_CONTENT_TYPE })
    }
    if (req.method !== "POST" || !endpoints.has(path)) return send(404, errorBody(404, `Unknown route ${req.method} ${path}`))
    let body: any
    try {
      body = JSON.parse(raw)
    } catch {
      return send(400, errorBody(400, "Invalid JSON body"))
    }
    if (options.keepBodies) stats.bodies.push({ path, body: raw })
    const accepts = req.headers["accept-encoding"] ?? ""
    stats.acceptEncodings.set(accepts, (stats.acceptEncodings.get(accepts) ?? 0) + 1)
    if (path === "/v1/moderations" && typeof body === "object" && body !== null && body.model === undefined) body.model = metricsModel
    const prompt = promptOf(body)
    const seen = (stats.byPrompt.get(prompt) ?? 0) + 1
    stats.byPrompt.set(prompt, seen)
    const model = String(body?.model)
    stats.byModel.set(model, (stats.byModel.get(model) ?? 0) + 1)

    const refusal: Simulator["failAll"] = sim.failAll ?? (overCapacity ? { status: 429 } : undefined)
    if (refusal !== undefined) {
      stats.rejected++
      const status = refusal.status
      const message = sim.failAll === undefined
        ? `Over capacity (${sim.capacity} requests in flight)`
        : refusal.message ?? `Injected outage ${status}`
      const headers: Record<string, string> = refusal.retryAfter === undefined ? {} : { "retry-after": refusal.retryAfter }
      return send(status, errorBody(status, message, refusal.code ?? (status === 429 ? "rate_limit_exceeded" : null)), headers)
    }
    pretty = prompt.includes("[pretty]")
    bignum = prompt.includes("[bignum]")
    trickleMs = Number(/\[trickle:(\d+)\]/.exec(prompt)?.[1] ?? 0)

    const respond = () => {
      if (!models.has(body.model)) {
        return send(404, errorBody(404, `The model '${body.model}' does not exist`, "model_not_found"))
      }
      const fail = /\[fail:(\d{3})\]/.exec(prompt)
      if (fail) return send(Number(fail[1]), errorBody(Number(fail[1]), `Injected failure ${fail[1]}`))
      let flakyUpTo = 0 // several in a row: each after the ones before
      for (const flaky of prompt.matchAll(/\[flaky:(\d{3})x(\d+)\]/g)) {
        flakyUpTo += Number(flaky[2])
        if (seen > flakyUpTo) continue
        const status = Number(flaky[1])
        return send(status, errorBody(status, `Injected transient ${status}`), status === 429 ? { "retry-after": String(retryAfter) } : {})
      }
      if (prompt.includes("[html]")) return write(200, HTML_PAGE, { "content-type": "text/html; charset=utf-8" })
      const deep = /\[deep:(\d+)\]/.exec(prompt)
      if (deep) return write(200, `{"deep":${"[".repeat(Number(deep[1]))}${"]".repeat(Number(deep[1]))}}`, { "content-type": "application/json" })
      if (prompt.includes("[latin1]") || prompt.includes("[utf8-as-latin1]")) {
        const text = JSON.stringify(answer(path, body, prompt))
        const bytes = Buffer.from(text, prompt.includes("[latin1]") ? "latin1" : "utf8")
        res.writeHead(200, { "content-type": "application/json; charset=iso-8859-1", "content-length": bytes.length })
        return res.end(bytes)
      }
      if (prompt.includes("[gzip]")) {
        const gzipped = gzipSync(JSON.stringify(answer(path, body, prompt)))
        res.writeHead(200, { "content-type": "application/json", "content-encoding": "gzip", "content-length": gzipped.length })
        return res.end(gzipped)
      }
      const json = answer(path, body, prompt)
      const big = /\[big:(\d+(?:\.\d+)?)\]/.exec(prompt)
      if (big) pad(json, Math.round(Number(big[1]) * 1024 * 1024))
      send(200, json, { "x-request-id": `req_sim_${stats.requests}` })
    }
    const processing = () => {
      if (prompt.includes("[hang]")) return // never answered; the client aborts
      const sleep = /\[sleep:(\d+)\]/.exec(prompt)
      const delay = sim.latencyMs + (sleep ? Number(sleep[1]) : 0)
      if (delay > 0) setTimeout(respond, delay)
      else respond()
    }
    if (res.destroyed) return // the client already went away
    const release = queue.enter(processing)
    res.once("finish", release)
    res.once("close", release)
  }

  const onRequest = (req: IncomingMessage, res: ServerResponse) => {
    const chunks: Array<Buffer> = []
    req.on("data", (c: Buffer) => chunks.push(c))
    // `capacity` is judged on arrival (this request counted), not once the body is in.
    let overCapacity = false
    req.on("end", () => handle(req, res, Buffer.concat(chunks).toString("utf8"), overCapacity))
    if (req.method !== "POST") return // only inference requests are counted
    stats.requests++
    stats.inFlight++
    stats.maxInFlight = Math.max(stats.maxInFlight, stats.inFlight)
    overCapacity = sim.capacity !== undefined && stats.inFlight > sim.capacity
    let finished = false
    const finish = () => {
      if (finished) return
      finished = true
      stats.inFlight--
    }
    res.on("finish", finish)
    res.on("close", () => {
      if (!res.writableFinished) stats.aborted++
      finish()
    })
  }
  // An HTTPS server is an HTTP server over TLS: the same handler, connection tracking and keep-alive settings.
  const server: Server =
    options.tls === undefined ? createHttpServer(onRequest) : (createHttpsServer(options.tls, onRequest) as unknown as Server)
  server.keepAliveTimeout = 60_000
  const listen = () =>
    new Promise<void>((resolve, reject) => {
      server.once("error", reject)
      server.listen(port, "127.0.0.1", () => {
        server.off("error", reject)
        port = (server.address() as AddressInfo).port
        resolve()
      })
    })
  const shut = () =>
    new Promise<void>((done) => {
      server.closeAllConnections()
      server.close(() => done())
    })

  const sim: Simulator = {
    get url() {
      return `${scheme}://127.0.0.1:${port}/v1`
    },
    get metricsUrl() {
      return `${scheme}://127.0.0.1:${port}/metrics`
    },
    stats,
    latencyMs: options.latencyMs ?? 0,
    get maxRunning() {
      return queue.limit
    },
    set maxRunning(limit) {
      queue.limit = limit
    },
    capacity: options.capacity,
    failAll: undefined,
    gone: false,
    apiKey: options.apiKey,
    models,
    reset: () => {
      stats.requests = 0
      stats.maxInFlight = stats.inFlight
      stats.maxWaiting = stats.waiting
      stats.rejected = 0
      stats.aborted = 0
      stats.modelLists = 0
      stats.byPrompt.clear()
      stats.byModel.clear()
      stats.bodies.length = 0
    },
    // `server.close` on a server not listening would wait forever for a 'close' event.
    stop: () => (server.listening ? shut() : Promise.resolve()),
    start: () => (server.listening ? Promise.resolve() : listen()),
    close: () => (server.listening ? shut() : Promise.resolve())
  }
  await listen()
  return sim
}

/** The failures a prompt's text asks for (the last message's content, `prompt` or `input`). */
const DIRECTIVES = `  [fail:400]      answer 400 with an OpenAI error body (any status works: [fail:404], [fail:503]…)
  [flaky:429x2]   answer 429 (with Retry-After: 0.05) to the first 2 attempts of this prompt, then succeed
  [flaky:500x1]   the same with 500; several in a row take turns ([flaky:500x1][flaky:401x1]: 500, then 401, then
                  an answer)
  [sleep:250]     answer after 250 ms
  [hang]          never answer (until the client gives up; with --max-running, it holds its slot until then)
  [pretty]        answer with indented, multi-line JSON
  [bignum]        the answer's first member is "big": [123456789012345678901234567890, 1.50, "…"], written as is
                  (numbers JSON.stringify cannot write; a string with escapes and inner spaces)
  [html]          answer 200 with an HTML page (content-type: text/html) instead of JSON
  [gzip]          answer 200 with the JSON gzipped (content-encoding: gzip), whatever the request accepts
  [latin1]        answer 200 with the JSON in ISO-8859-1 (content-type: application/json; charset=iso-8859-1)
  [utf8-as-latin1] answer 200 with the JSON in UTF-8, labelled as [latin1] is
  [deep:100]      answer 200 with a JSON object whose "deep" member nests 100 arrays
  [trickle:100]   send the answer's head at once, then its body one byte every 100 ms
  [big:40]        pad the answer's content so that the body is about 40 MiB (fractions work: [big:0.01])
  [cached:7]      report 7 cached input tokens in the usage details (chat and responses answers)
  [reasoning:9]   report 9 reasoning output tokens in the same way`

const USAGE = `Usage: npm run simulator -- [options]   (from the repository: node --import tsx scripts/simulator.ts)

An OpenAI-compatible upstream for tests and demos: chat, completions, embeddings, responses, moderations, images,
rerank and score, /v1/models, and vLLM's queue gauges at /metrics.

Options:
  --port N          the port on 127.0.0.1 (8000)
  --latency MS      answer every request after MS milliseconds (0)
  --models A,B      the models it serves (sim-model); others get a 404 model_not_found
  --max-running N   process at most N requests at once, the others wait (vLLM's queue)
  --capacity N      answer 429 at once to a request arriving while more than N are in flight
  --api-key KEY     answer 401 to a request without Authorization: Bearer KEY
  -h, --help        this text

Failures, asked for inside a prompt's text:
${DIRECTIVES}`

const isMain = process.argv[1] !== undefined && import.meta.url.endsWith(process.argv[1].replace(/^.*\/scripts\//, "scripts/"))
if (isMain) {
  const fail = (message: string, code: number) => {
    console.error(message)
    process.exit(code)
  }
  const options = (() => {
    try {
      return parseArgs({
        options: {
          port: { type: "string", default: "8000" },
          latency: { type: "string", default: "0" },
          models: { type: "string", default: "sim-model" },
          "max-running": { type: "string" },
          capacity: { type: "string" },
          "api-key": { type: "string" },
          help: { type: "boolean", short: "h" }
        }
      }).values
    } catch (error) {
      return fail(`${(error as Error).message}\n\n${USAGE}`, 2)
    }
  })()
  if (options.help) fail(USAGE, 0)
  const count = (name: string, text: string | undefined) => {
    if (text === undefined) return undefined
    if (!/^\d+$/.test(text)) fail(`--${name} takes a whole number, not '${text}'.`, 2)
    return Number(text)
  }
  const models = options.models.split(",").map((m) => m.trim()).filter((m) => m !== "")
  const maxRunning = count("max-running", options["max-running"])
  const capacity = count("capacity", options.capacity)
  startSimulator({
    port: count("port", options.port)!,
    latencyMs: count("latency", options.latency)!,
    models,
    ...(maxRunning === undefined ? {} : { maxRunning }),
    ...(capacity === undefined ? {} : { capacity }),
    ...(options["api-key"] === undefined ? {} : { apiKey: options["api-key"] })
  }).then(
    (sim) => {
      const queue = sim.maxRunning === undefined ? "" : `, max running: ${sim.maxRunning}`
      console.log(`simulator listening on ${sim.url} (models: ${models.join(", ")}${queue})`)
    },
    (error: NodeJS.ErrnoException) =>
      fail(error.code === "EADDRINUSE" ? `Port ${options.port} is in use; pick another with --port.` : String(error), 1)
  )
}
