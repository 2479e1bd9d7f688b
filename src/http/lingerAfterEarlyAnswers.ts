/**
 * An answer given before its request's body was all read (a 413, a 401 on an upload…). The rest of the body is
 * read and dropped, whoever stopped reading it (Node drops it only when nobody had started to). And on a connection
 * that closes after the answer (the client sent `Connection: close`, or spoke HTTP/1.0), Node closes the socket as
 * soon as the answer is written: the rest of the body then arrives at a closed socket, and the reset that follows
 * can reach the client before it has read our answer, so it sees EPIPE or ECONNRESET instead of the 413. Such
 * connections linger instead, as nginx's do: the write side is closed, and the socket closes once the body has
 * ended, or when none of it arrived for `idleMs`, or after `maxMs` in all. A kept-alive connection gets the same
 * two limits, or a body trickled in after its answer would hold it for ever (Node's keep-alive timeout is rearmed by
 * every byte). (Answers Node gives by itself, such as a 400 for a request it cannot parse, never reach this.)
 */
import type { IncomingMessage, Server, ServerResponse } from "node:http"
import { finished } from "node:stream"

export const lingerAfterEarlyAnswers = (server: Server, { idleMs = 5_000, maxMs = 30_000 } = {}): void => {
  server.on("request", (request: IncomingMessage, response: ServerResponse) => {
    // Runs after Node's own 'finish' listener, which, on a closing connection, ends the socket with `destroySoon`:
    // its write side is ended and `destroy` waits for the socket's 'finish'.
    response.once("finish", () => {
      if (request.complete) return
      request.resume()
      const socket = request.socket
      const closing = socket.listeners("finish").includes(socket.destroy)
      if (closing) socket.off("finish", socket.destroy)
      const idle = setTimeout(() => socket.destroy(), idleMs).unref()
      const cap = setTimeout(() => socket.destroy(), maxMs).unref()
      request.on("data", () => idle.refresh())
      finished(request, () => {
        clearTimeout(idle)
        clearTimeout(cap)
        if (closing) socket.destroySoon()
      })
    })
  })
}
