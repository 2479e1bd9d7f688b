/**
 * An OpenAI-compatible upstream simulator for tests, the demo and the benchmark: `/v1/chat/completions`,
 * `/v1/completions`, `/v1/embeddings`, `/v1/responses` and `/v1/models`, with settable latency and failure injection.
 *
 * Failures are injected by directives inside the prompt text (the last message's content, `prompt` or `input`):
 *   [fail:400]          answer 400 with an OpenAI error body (any status works: [fail:404], [fail:500]…)
 *   [flaky:429x2]       answer 429 (with `Retry-After: 0.05`) to the first 2 attempts of this prompt, then succeed
 *   [flaky:500x1]       the same with 500
 *   [sleep:250]         answer after 250 ms
 *   [hang]              never answer (until the client gives up)
 *   [pretty]            answer with indented, multi-line JSON
 *   [bignum]            the answer's first member is `"big": [123456789012345678901234567890, 1.50, "…"]`, written
 *                       as is (numbers `JSON.stringify` cannot write; a string with escapes and inner spaces)
 *   [html]              answer 200 with an HTML page (`content-type: text/html`) instead of JSON
 *   [trickle:100]       send the answer's head at once, then its body one byte every 100 ms
 *   [big:40]            pad the answer's content so that the body is about 40 MiB (fractions work: [big:0.01])
 * Unknown models get a 404 `model_not_found`, like OpenAI.
 *
 *   npx tsx scripts/simulator.ts [--port 8000] [--latency 0]
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http"
import type { AddressInfo } from "node:net"

export interface SimulatorOptions {
  readonly port?: number
  /** Added to every answer, in milliseconds. */
  readonly latencyMs?: number
  readonly models?: ReadonlyArray<string>
  /** Seconds sent in `Retry-After` with injected 429s. */
  readonly retryAfterSeconds?: number
}

export interface SimulatorStats {
  /** Inference requests received (every attempt counts; `GET /v1/models` does not). */
  requests: number
  inFlight: number
  maxInFlight: number
  /** Requests whose client went away before the answer. */
  aborted: number
  /** How many times each prompt was received. */
  readonly byPrompt: Map<string, number>
}

export interface Simulator {
  readonly url: string
  readonly stats: SimulatorStats
  latencyMs: number
  readonly reset: () => void
  readonly close: () => Promise<void>
}

const promptOf = (body: any): string => {
  if (Array.isArray(body?.messages)) {
    const last = body.messages.at(-1)?.content
    return typeof last === "string" ? last : JSON.stringify(last ?? "")
  }
  const text = body?.prompt ?? body?.input
  return typeof text === "string" ? text : JSON.stringify(text ?? "")
}

const tokens = (text: string) => Math.max(1, Math.ceil(text.length / 4))

const answer = (path: string, body: any, prompt: string) => {
  const model = body.model
  const created = Math.floor(Date.now() / 1000)
  const reply = `echo: ${prompt}`
  const usage = { prompt_tokens: tokens(prompt), completion_tokens: tokens(reply) }
  switch (path) {
    case "/v1/chat/completions":
      return {
        id: `chatcmpl-${created}`,
        object: "chat.completion",
        created,
        model,
        choices: [{ index: 0, message: { role: "assistant", content: reply }, finish_reason: "stop" }],
        usage: {
          ...usage,
          total_tokens: usage.prompt_tokens + usage.completion_tokens,
          prompt_tokens_details: { cached_tokens: 0 },
          completion_tokens_details: { reasoning_tokens: 0 }
        }
      }
    case "/v1/completions":
      return {
        id: `cmpl-${created}`,
        object: "text_completion",
        created,
        model,
        choices: [{ index: 0, text: reply, finish_reason: "stop" }],
        usage: { ...usage, total_tokens: usage.prompt_tokens + usage.completion_tokens }
      }
    case "/v1/embeddings": {
      const inputs = Array.isArray(body.input) ? body.input : [body.input]
      return {
        object: "list",
        model,
        data: inputs.map((_: unknown, index: number) => ({
          object: "embedding",
          index,
          embedding: Array.from({ length: 8 }, (_, i) => ((prompt.length + i) % 10) / 10)
        })),
        usage: { prompt_tokens: usage.prompt_tokens, total_tokens: usage.prompt_tokens }
      }
    }
    default:
      return {
        id: `resp_${created}`,
        object: "response",
        created_at: created,
        status: "completed",
        model,
        output: [{ type: "message", role: "assistant", content: [{ type: "output_text", text: reply }] }],
        usage: {
          input_tokens: usage.prompt_tokens,
          input_tokens_details: { cached_tokens: 0 },
          output_tokens: usage.completion_tokens,
          output_tokens_details: { reasoning_tokens: 0 },
          total_tokens: usage.prompt_tokens + usage.completion_tokens
        }
      }
  }
}

/** Lengthens the first text of `json` (message content, text, output text) until its JSON is about `bytes` long. */
const pad = (json: any, bytes: number) => {
  const missing = Math.max(0, bytes - JSON.stringify(json).length)
  const filler = "lorem ipsum dolor sit amet ".repeat(Math.ceil(missing / 27)).slice(0, missing)
  const choice = json.choices?.[0]
  if (choice?.message !== undefined) choice.message.content += filler
  else if (choice !== undefined) choice.text += filler
  else if (json.output !== undefined) json.output[0].content[0].text += filler
  else json.filler = filler
}

const errorBody = (status: number, message: string, code: string | null = null) => ({
  error: { message, type: status >= 500 ? "server_error" : "invalid_request_error", param: null, code }
})

/** What `[bignum]` adds: written by hand, as `JSON.stringify` would lose the big integer and the `1.50`. */
export const BIGNUM_MEMBER = `"big": [123456789012345678901234567890, 1.50, "two  spaces\\t \\"q\\" \\u00e9 \\\\"]`
/** The same member as a compact JSON text keeps it (whitespace inside the string kept). */
export const BIGNUM_COMPACT = `"big":[123456789012345678901234567890,1.50,"two  spaces\\t \\"q\\" \\u00e9 \\\\"]`

/** What `[html]` answers (with a 200), as a captive portal or a misrouted proxy would. */
export const HTML_PAGE = [
  "<!DOCTYPE html>",
  "<html>",
  "<head><title>Sign in</title></head>",
  "<body><h1>Please sign in to continue</h1></body>",
  "</html>",
  ""
].join("\n")

const endpoints = new Set(["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses"])

export const startSimulator = (options: SimulatorOptions = {}): Promise<Simulator> => {
  const models = new Set(options.models ?? ["sim-model"])
  const retryAfter = options.retryAfterSeconds ?? 0.05
  const stats: SimulatorStats = { requests: 0, inFlight: 0, maxInFlight: 0, aborted: 0, byPrompt: new Map() }
  let server: Server

  const handle = (req: IncomingMessage, res: ServerResponse, raw: string, sim: Simulator) => {
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
    if (req.method === "GET" && path === "/v1/models") {
      return send(200, { object: "list", data: [...models].map((id) => ({ id, object: "model", owned_by: "simulator" })) })
    }
    if (req.method !== "POST" || !endpoints.has(path)) return send(404, errorBody(404, `Unknown route ${req.method} ${path}`))
    let body: any
    try {
      body = JSON.parse(raw)
    } catch {
      return send(400, errorBody(400, "Invalid JSON body"))
    }
    const prompt = promptOf(body)
    pretty = prompt.includes("[pretty]")
    bignum = prompt.includes("[bignum]")
    trickleMs = Number(/\[trickle:(\d+)\]/.exec(prompt)?.[1] ?? 0)
    const seen = (stats.byPrompt.get(prompt) ?? 0) + 1
    stats.byPrompt.set(prompt, seen)

    const respond = () => {
      if (!models.has(body.model)) {
        return send(404, errorBody(404, `The model '${body.model}' does not exist`, "model_not_found"))
      }
      const fail = /\[fail:(\d{3})\]/.exec(prompt)
      if (fail) return send(Number(fail[1]), errorBody(Number(fail[1]), `Injected failure ${fail[1]}`))
      const flaky = /\[flaky:(\d{3})x(\d+)\]/.exec(prompt)
      if (flaky && seen <= Number(flaky[2])) {
        const status = Number(flaky[1])
        return send(status, errorBody(status, `Injected transient ${status}`), status === 429 ? { "retry-after": String(retryAfter) } : {})
      }
      if (prompt.includes("[html]")) return write(200, HTML_PAGE, { "content-type": "text/html; charset=utf-8" })
      const json = answer(path, body, prompt)
      const big = /\[big:(\d+(?:\.\d+)?)\]/.exec(prompt)
      if (big) pad(json, Math.round(Number(big[1]) * 1024 * 1024))
      send(200, json, { "x-request-id": `req_sim_${stats.requests}` })
    }
    if (prompt.includes("[hang]")) return // never answered; the client aborts
    const sleep = /\[sleep:(\d+)\]/.exec(prompt)
    const delay = sim.latencyMs + (sleep ? Number(sleep[1]) : 0)
    if (delay > 0) setTimeout(respond, delay)
    else respond()
  }

  return new Promise((resolve) => {
    const sim: Simulator = {
      url: "",
      stats,
      latencyMs: options.latencyMs ?? 0,
      reset: () => {
        stats.requests = 0
        stats.maxInFlight = stats.inFlight
        stats.aborted = 0
        stats.byPrompt.clear()
      },
      close: () =>
        new Promise((done) => {
          server.closeAllConnections()
          server.close(() => done())
        })
    }
    server = createServer((req, res) => {
      const chunks: Array<Buffer> = []
      req.on("data", (c: Buffer) => chunks.push(c))
      req.on("end", () => handle(req, res, Buffer.concat(chunks).toString("utf8"), sim))
      if (req.method !== "POST") return // only inference requests are counted
      stats.requests++
      stats.inFlight++
      stats.maxInFlight = Math.max(stats.maxInFlight, stats.inFlight)
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
    })
    server.keepAliveTimeout = 60_000
    server.listen(options.port ?? 0, "127.0.0.1", () => {
      const { port } = server.address() as AddressInfo
      resolve(Object.assign(sim, { url: `http://127.0.0.1:${port}/v1` }))
    })
  })
}

const isMain = process.argv[1] !== undefined && import.meta.url.endsWith(process.argv[1].replace(/^.*\/scripts\//, "scripts/"))
if (isMain) {
  const arg = (name: string) => {
    const i = process.argv.indexOf(`--${name}`)
    return i > 0 ? process.argv[i + 1] : undefined
  }
  startSimulator({ port: Number(arg("port") ?? 8000), latencyMs: Number(arg("latency") ?? 0) }).then((sim) => {
    console.log(`simulator listening on ${sim.url} (models: sim-model)`)
  })
}
