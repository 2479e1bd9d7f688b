/**
 * A shutdown closes each keep-alive connection once its request is answered. Node's `server.close()` ends only the
 * connections idle at that moment: one whose request was still under way stayed open after its answer (a client's
 * keep-alive pool holds it for reuse), and the shutdown waited the whole `SHUTDOWN_TIMEOUT` for it to be cut. Now an
 * answer not yet begun says `Connection: close` (the client will not reuse the connection, and Node closes it once
 * the answer is sent); one already streaming has its connection closed as soon as it has ended. Answers are
 * forgotten when they close or their connection does (on Node 20 an answer queued behind another on a pipelined
 * connection gets no 'close' when the client hangs up: kept until then, each stayed in memory for good).
 */
import type { IncomingMessage, Server, ServerResponse } from "node:http"
import type { Socket } from "node:net"

/** Watches `server`'s requests; the function it gives starts the shutdown's closing (before `server.close()`). */
export const closeWhenAnswered = (server: Server): () => void => {
  /** Each connection's answers not yet closed. */
  const open = new Map<Socket, Set<ServerResponse>>()
  let closing = false
  const closeAfter = (response: ServerResponse) => {
    if (!response.headersSent) response.setHeader("connection", "close")
    // The connection is marked idle by Node's own 'finish' listener; closed on the next turn.
    else response.once("finish", () => setImmediate(() => server.closeIdleConnections()))
  }
  server.on("request", (request: IncomingMessage, response: ServerResponse) => {
    if (closing) return closeAfter(response)
    const connection = request.socket
    let answers = open.get(connection)
    if (answers === undefined) {
      const unclosed = new Set<ServerResponse>()
      answers = unclosed
      open.set(connection, unclosed)
      connection.once("close", () => open.delete(connection))
    }
    const mine = answers
    mine.add(response)
    response.once("close", () => mine.delete(response))
  })
  return () => {
    closing = true
    for (const answers of open.values()) for (const response of answers) closeAfter(response)
    open.clear()
  }
}
