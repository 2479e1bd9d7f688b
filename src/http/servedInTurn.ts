/**
 * A request's life on its connection, where Node 20 leaves handlers waiting for ever:
 * - Requests pipelined on one connection are served one at a time, in order: each once the answer before it has
 *   been sent (when Node gives its answer the connection), as HTTP/1.1 answers them in that order anyway. Node 20
 *   starts them all at once, and when the client hung up, the answers queued behind the one being sent got no
 *   'close' (nodejs/node#62534, fixed in later releases): what they held was never given back (a client's pipelined
 *   downloads, its connection closed, left its project refused every download for good). Served in turn, a request
 *   whose connection has gone is dropped unserved. A connection with more than `MOST_WAITING` requests waiting
 *   behind its answer is closed: 48,000 pipelined requests on 16 connections made `/v1/health` wait a minute
 *   behind them (a warning says so, at most once a minute).
 * - A request whose connection closes before its answer has all been sent does not wait for ever to send it. The
 *   platform writes the answer once the handler is done and waits for its 'finish', which Node does not give on a
 *   closed connection to an answer queued behind another (Node 20), nor to one ended but not all sent (Node 24;
 *   Node 20 and 22 give that one its 'finish' as the connection closes, and it is left alone). Its handlers run
 *   uninterruptibly (with the flags of the runtime it captured while its layer was built), so its own interruption
 *   on a client's abort waits for that too. Each such request stayed in memory for good, its connection's other
 *   requests with it (~10 KB for each client that hung up mid-request; 3,000 pipelined requests on 4 connections,
 *   closed: 80 MB). Now an answer not begun is ended unsent as the connection closes (the platform then writes
 *   none, once it has interrupted the handler), and one being sent is told it has finished, once (Node's own
 *   'finish' work on a closed connection only lets it go).
 */
import * as HttpServerRequest from "@effect/platform/HttpServerRequest"
import * as HttpServerResponse from "@effect/platform/HttpServerResponse"
import * as NodeHttpServerRequest from "@effect/platform-node/NodeHttpServerRequest"
import { Effect } from "effect"
import { IncomingMessage, type ServerResponse } from "node:http"
import type { Socket } from "node:net"
import { ONCE_A_MINUTE_MS, saidWithin } from "../observability/saidWithin.js"

/** Requests a connection may have waiting behind the answer it is being sent (no client pipelines near as deep). */
export const MOST_WAITING = 32

/** Each connection's requests waiting for their turn: told when it closes. */
const waitingOn = new WeakMap<Socket, Set<() => void>>()
const due = saidWithin()

/** `response`'s turn: true once Node gives it the connection, false once the connection closes first. */
const turnOf = (response: ServerResponse, connection: Socket) =>
  Effect.async<boolean>((resume) => {
    let waiting = waitingOn.get(connection)
    if (waiting === undefined) {
      const all = new Set<() => void>()
      waiting = all
      waitingOn.set(connection, all)
      connection.once("close", () => {
        for (const gone of all) gone()
      })
    }
    const queue = waiting
    const leave = () => {
      queue.delete(gone)
      response.off("socket", served)
    }
    // Given a connection already closed (Node hands it on when the answer before finished as it closed): no turn.
    const served = () => {
      leave()
      resume(Effect.succeed(!connection.destroyed))
    }
    const gone = () => {
      leave()
      resume(Effect.succeed(false))
    }
    queue.add(gone)
    response.once("socket", served)
    return Effect.sync(leave)
  })

/** Server middleware: `app` for each request in its turn on its connection; none for one whose connection has gone. */
export const servedInTurn = <E, R>(app: Effect.Effect<HttpServerResponse.HttpServerResponse, E, R>) =>
  Effect.flatMap(HttpServerRequest.HttpServerRequest, (request) => {
    const source = request.source
    if (!(source instanceof IncomingMessage)) return app // not on a Node server
    const response = NodeHttpServerRequest.toServerResponse(request)
    const connection = source.socket
    if (connection.destroyed) return unserved(response)
    if (response.socket !== null) return endedWithConnection(response, connection, app) // the usual case: no answer ahead of it
    if ((waitingOn.get(connection)?.size ?? 0) >= MOST_WAITING) {
      connection.destroy()
      const said = due("pipelined", Date.now(), ONCE_A_MINUTE_MS)
        ? Effect.annotateLogs(
          Effect.logWarning(
            `A connection sent more than ${MOST_WAITING} requests without waiting for their answers: closed ` +
              "(said at most once a minute)"
          ),
          "event",
          "http.pipelined"
        )
        : Effect.void
      return Effect.zipRight(said, unserved(response))
    }
    return Effect.flatMap(turnOf(response, connection), (mine) => (mine ? endedWithConnection(response, connection, app) : unserved(response)))
  })

/** `app`, its answer let go if its connection closes before the answer is all sent (see the header). */
const endedWithConnection = <A, E, R>(response: ServerResponse, connection: Socket, app: Effect.Effect<A, E, R>) =>
  Effect.suspend(() => {
    response.once("close", () => {
      if (response.writableFinished || !connection.destroyed) return
      if (response.writableEnded) return void response.emit("finish")
      // Nothing is written to a closed connection: none to wait for. On the next turn: the platform's own 'close'
      // listener (added after this one) must see the answer open, and interrupt a stream's writing, which would
      // wait for a 'drain' that never comes (a download whose client hung up held its file or cursor for good).
      process.nextTick(() => {
        if (!response.writableEnded) response.end()
      })
    })
    return app
  })

/**
 * No answer for a request whose connection has gone: its Node answer is ended here, unsent, so that the platform
 * writes none (it would wait for ever to hear it was sent).
 */
const unserved = (response: ServerResponse) =>
  Effect.sync(() => {
    if (!response.writableEnded) response.end()
    return HttpServerResponse.empty()
  })
