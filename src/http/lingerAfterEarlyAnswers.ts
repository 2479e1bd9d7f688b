/**
 * An answer given before its request's body was read (a 413, a 401 on an upload…) on a connection that closes
 * after it (the client sent `Connection: close`): Node closes the socket as soon as the answer is written, the rest
 * of the body then arrives at a closed socket, and the reset that follows can reach the client before it has read
 * our answer, so it sees EPIPE or ECONNRESET instead of the 413. Such connections linger instead, as nginx's do:
 * the answer is sent and the write side closed, the rest of the body is read and discarded, and the socket closes
 * once the body has ended, or after `lingerMs` if it does not.
 */
import type { IncomingMessage, Server, ServerResponse } from "node:http"
import { finished } from "node:stream"

export const LINGER_MS = 5_000

export const lingerAfterEarlyAnswers = (server: Server, lingerMs = LINGER_MS): void => {
  server.on("request", (request: IncomingMessage, response: ServerResponse) => {
    // Runs after Node's own 'finish' listener, which discards the unread body and, on a closing connection, ends
    // the socket with `destroySoon`: its write side is ended and `destroy` waits for the socket's 'finish'.
    response.once("finish", () => {
      const socket = request.socket
      if (request.complete || !socket.listeners("finish").includes(socket.destroy)) return
      socket.off("finish", socket.destroy)
      const timer = setTimeout(() => socket.destroy(), lingerMs).unref()
      finished(request, () => {
        clearTimeout(timer)
        socket.destroySoon()
      })
    })
  })
}
