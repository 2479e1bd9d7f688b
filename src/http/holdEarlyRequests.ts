/**
 * The requests no app listens to. The platform's Node server listens first and attaches its request handler only
 * once the layer that serves the app (`HttpLive`) is built; a request that arrives in between, while the rest of the
 * app starts, has no listener and would wait forever. Such requests are held here and handed to the first request
 * listener attached after this one; those whose client has gone meanwhile are dropped (the platform would never hear
 * of their closing). At shutdown the app's listener goes before the server stops listening: a request sent then on
 * a kept-alive connection had no listener either, and waited the whole `SHUTDOWN_TIMEOUT` for its connection to be
 * cut. It gets a 503 (the server is shutting down; its connection closes), which the SDKs try again elsewhere.
 */
import type { IncomingMessage, Server, ServerResponse } from "node:http"
import { answerDirectly } from "./clientErrors.js"

const refuseLate = (_request: IncomingMessage, response: ServerResponse) =>
  answerDirectly(response, 503, "server_shutting_down", "The server is shutting down; send the request again.", "server_error", {
    "retry-after": "1"
  })

export const holdEarlyRequests = (server: Server): void => {
  const held: Array<readonly [IncomingMessage, ServerResponse]> = []
  const hold = (request: IncomingMessage, response: ServerResponse) => {
    held.push([request, response])
  }
  const handOver = (event: string | symbol, listener: (...args: Array<any>) => void) => {
    if (event !== "request" || listener === hold) return
    server.off("newListener", handOver)
    server.off("request", hold)
    // 'newListener' fires just before the listener is added: the held requests go to it once it is.
    process.nextTick(() => {
      for (const [request, response] of held.splice(0)) {
        if (!response.destroyed) listener(request, response)
      }
    })
    const appGone = (event: string | symbol, removed: (...args: Array<any>) => void) => {
      if (event !== "request" || removed !== listener) return
      server.off("removeListener", appGone)
      server.on("request", refuseLate)
    }
    server.on("removeListener", appGone)
  }
  server.on("request", hold)
  server.on("newListener", handOver)
}
