/**
 * A shutdown closes each keep-alive connection once its request is answered. Node's `server.close()` ends only the
 * connections idle at that moment: one whose request was still under way stayed open after its answer (a client's
 * keep-alive pool holds it for reuse), and the shutdown waited the whole `SHUTDOWN_TIMEOUT` for it to be cut. Now an
 * answer not yet begun says `Connection: close` (the client will not reuse the connection, and Node closes it once
 * the answer is sent); one already streaming has its connection closed as soon as it has ended.
 */
import type { IncomingMessage, Server, ServerResponse } from "node:http"

/** Watches `server`'s requests; the function it gives starts the shutdown's closing (before `server.close()`). */
export const closeWhenAnswered = (server: Server): () => void => {
  const open = new Set<ServerResponse>()
  let closing = false
  const closeAfter = (response: ServerResponse) => {
    if (!response.headersSent) response.setHeader("connection", "close")
    // The connection is marked idle by Node's own 'finish' listener; closed on the next turn.
    else response.once("finish", () => setImmediate(() => server.closeIdleConnections()))
  }
  server.on("request", (_request: IncomingMessage, response: ServerResponse) => {
    if (closing) return closeAfter(response)
    open.add(response)
    response.once("close", () => open.delete(response))
  })
  return () => {
    closing = true
    for (const response of open) closeAfter(response)
    open.clear()
  }
}
