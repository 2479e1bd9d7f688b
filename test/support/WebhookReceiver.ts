/** A webhook receiver on a local port for tests: it records every request and answers as told. */
import { Effect } from "effect"
import { createServer, type IncomingHttpHeaders } from "node:http"
import type { AddressInfo } from "node:net"

export interface Received {
  /** The request's path (and query). */
  readonly path: string
  readonly headers: Record<string, string>
  readonly body: string
  /** When the request had arrived whole (epoch ms). */
  readonly at: number
}

/**
 * How to answer the `n`-th request (from 1): a status, headers, a body, how long to wait before answering; `stall`: send
 * the status and the body, then never end the answer (until the receiver closes).
 */
export type Answer = (n: number, request: Received) => {
  readonly status: number
  readonly headers?: Record<string, string>
  readonly body?: string
  readonly delayMs?: number
  readonly stall?: boolean
}

export interface Receiver {
  /** `http://127.0.0.1:<port>/hook`. */
  readonly url: string
  readonly port: number
  /** Every request so far, in arrival order. */
  readonly received: Array<Received>
  /** How it answers from now on (default: 200). */
  answer: Answer
}

const ok: Answer = () => ({ status: 200 })

const flat = (headers: IncomingHttpHeaders): Record<string, string> =>
  Object.fromEntries(Object.entries(headers).map(([name, value]) => [name, Array.isArray(value) ? value.join(", ") : value ?? ""]))

/** A receiver on `port` (0: any free one), closed with the scope. */
export const webhookReceiver = (port = 0, answer: Answer = ok) =>
  Effect.acquireRelease(
    Effect.async<{ readonly receiver: Receiver; readonly close: () => void }>((resume) => {
      const received: Array<Received> = []
      const receiver: Receiver = { url: "", port: 0, received, answer }
      const server = createServer((req, res) => {
        const chunks: Array<Buffer> = []
        req.on("data", (chunk: Buffer) => chunks.push(chunk))
        req.on("end", () => {
          const request = { path: req.url ?? "", headers: flat(req.headers), body: Buffer.concat(chunks).toString("utf8"), at: Date.now() }
          received.push(request)
          const { body = "", delayMs = 0, stall = false, status, headers = {} } = receiver.answer(received.length, request)
          setTimeout(() => {
            res.writeHead(status, { "content-type": "text/plain", ...headers })
            if (!stall) return void res.end(body)
            res.flushHeaders()
            if (body !== "") res.write(body)
          }, delayMs)
        })
      })
      server.listen(port, "127.0.0.1", () => {
        const bound = (server.address() as AddressInfo).port
        Object.assign(receiver, { url: `http://127.0.0.1:${bound}/hook`, port: bound })
        resume(Effect.succeed({ receiver, close: () => {
          server.close()
          server.closeAllConnections()
        } }))
      })
    }),
    ({ close }) => Effect.sync(close)
  ).pipe(Effect.map(({ receiver }) => receiver))

/** Has `receiver` answer with `answer` until the scope closes, then with 200 again (for the tests after). */
export const answering = (receiver: Receiver, answer: Answer) =>
  Effect.acquireRelease(Effect.sync(() => void (receiver.answer = answer)), () => Effect.sync(() => void (receiver.answer = ok)))
