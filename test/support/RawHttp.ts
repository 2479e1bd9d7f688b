/** Raw HTTP requests, for what the SDKs and `fetch` will not send: any path bytes, headers, framing and body. */
import { Effect } from "effect"
import { type Agent, type IncomingHttpHeaders, request as httpRequest } from "node:http"

export interface RawAnswer {
  readonly status: number
  readonly headers: IncomingHttpHeaders
  readonly text: string
  /** The body parsed, when it is JSON. */
  readonly json: any
  /** Whether the request went out on a connection an earlier request had used (keep-alive). */
  readonly reusedSocket: boolean
}

export interface RawRequest {
  readonly method: string
  /** Sent as it is, query and percent-escapes included. */
  readonly path: string
  /** Exactly these (a `host` header replaces the one Node would send). */
  readonly headers?: Record<string, string>
  /** One write, or chunks (chunked encoding unless `headers` give a length). */
  readonly body?: string | Uint8Array | ReadonlyArray<string | Uint8Array>
  /** The connection to use: `false` (the default) for a fresh one. */
  readonly agent?: Agent | false
  /** A request without an answer by then fails (default 20 s). */
  readonly timeoutMs?: number
}

/** One request to the server at `base` (`http://host:port`); fails when the connection breaks before an answer. */
export const rawRequest = (base: string, request: RawRequest) =>
  Effect.async<RawAnswer, Error>((resume) => {
    const { hostname, port } = new URL(base)
    const { method, path } = request
    const req = httpRequest(
      { hostname, port, method, path, headers: request.headers, agent: request.agent ?? false, timeout: request.timeoutMs ?? 20_000 },
      (res) => {
        const chunks: Array<Buffer> = []
        res.on("data", (c: Buffer) => chunks.push(c))
        res.on("end", () => {
          const text = Buffer.concat(chunks).toString("utf8")
          let json: any = undefined
          try {
            json = JSON.parse(text)
          } catch {
            // not JSON: the assertions say so
          }
          resume(Effect.succeed({ status: res.statusCode!, headers: res.headers, text, json, reusedSocket: req.reusedSocket }))
        })
      }
    )
    req.on("timeout", () => req.destroy(new Error(`no answer in time: ${method} ${path.slice(0, 80)}`)))
    req.on("error", (e) => resume(Effect.fail(e)))
    const body = request.body
    if (Array.isArray(body)) for (const chunk of body) req.write(chunk)
    else if (body !== undefined) req.write(body as string | Uint8Array)
    req.end()
  })
