/**
 * A request sent with `Expect: 100-continue` (curl's uploads over 1 MB, .NET's and Java's clients) is told to go on
 * when the app first reads its body, not as it arrives (Node's default): one the app refuses before reading (401
 * without a key, 413 over the size bound, 429, 503 while draining) gets its final answer alone, and its client does
 * not send a body nobody reads (a refused upload was sent whole first).
 */
import type { IncomingMessage, Server, ServerResponse } from "node:http"

export const continueWhenRead = (server: Server): void => {
  server.on("checkContinue", (request: IncomingMessage, response: ServerResponse) => {
    // A request without a body has nothing to hold back: told at once, its connection stays open (Node closes one
    // whose 100 was never sent).
    const bodyless = request.headers["transfer-encoding"] === undefined && Number(request.headers["content-length"] ?? 0) === 0
    if (bodyless) response.writeContinue()
    // A reader of the body listens to 'data' or 'readable'; 'newListener' fires as one starts (before its listener is
    // added). Once an answer is under way, the body is only drained (`lingerAfterEarlyAnswers`): no 100 after it.
    const onListener = (event: string | symbol) => {
      if (event !== "data" && event !== "readable") return
      request.off("newListener", onListener)
      if (!response.headersSent && !response.writableEnded) response.writeContinue()
    }
    if (!bodyless) request.on("newListener", onListener)
    // The request goes on to the 'request' listeners as any other (Node emits only this event for it).
    server.emit("request", request, response)
  })
}
