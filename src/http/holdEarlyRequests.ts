/**
 * The platform's Node server listens first and attaches its request handler only once the layer that serves the app
 * (`HttpLive`) is built; a request that arrives in between, while the rest of the app starts, has no listener and
 * would wait forever. Such requests are held here and handed to the first request listener attached after this one;
 * those whose client has gone meanwhile are dropped (the platform would never hear of their closing).
 */
import type { IncomingMessage, Server, ServerResponse } from "node:http"

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
  }
  server.on("request", hold)
  server.on("newListener", handOver)
}
