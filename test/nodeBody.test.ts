/**
 * A request body read as a stream (`http/nodeBody.ts`): whole and in order, in few pieces however small the chunks
 * it was sent in (each piece costs Effect's machinery ~17 µs: a body of 1-byte chunks cost 2 s of CPU per 100 KB),
 * and failed, not left waiting, when its client goes away.
 */
import { describe, expect, it } from "@effect/vitest"
import { Chunk, Effect, Exit, Stream } from "effect"
import { createServer, type IncomingMessage } from "node:http"
import { connect, type Socket } from "node:net"
import { bodyStream } from "../src/http/nodeBody.js"

/** A server handing its first request to the test; the client's socket, with the request's head sent. */
const oneRequest = (head: string) =>
  Effect.acquireRelease(
    Effect.async<{ readonly request: IncomingMessage; readonly client: Socket; readonly close: () => void }>((resume) => {
      const server = createServer()
      server.listen(0, "127.0.0.1", () => {
        const client = connect((server.address() as { port: number }).port, "127.0.0.1")
        client.on("error", () => {})
        server.once("request", (request: IncomingMessage) =>
          resume(Effect.succeed({ request, client, close: () => (client.destroy(), server.close()) })))
        client.write(head)
      })
    }),
    ({ close }) => Effect.sync(close)
  )

const chunked = "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"

describe("a request body as a stream", () => {
  it.scopedLive("10,000 chunks of one byte sent at once come out whole, in a few pieces", () =>
    Effect.gen(function*() {
      const { client, request } = yield* oneRequest(chunked)
      const body = Array.from({ length: 10_000 }, (_, i) => String.fromCharCode(97 + (i % 26)))
      client.write(body.map((c) => `1\r\n${c}\r\n`).join("") + "0\r\n\r\n")
      const pieces = Chunk.toReadonlyArray(yield* Stream.runCollect(bodyStream(request)))
      expect(Buffer.concat(pieces).toString()).toBe(body.join(""))
      // One per socket read, not one per chunk (the platform's reader gave 10,000 here).
      expect(pieces.length).toBeLessThan(20)
    }))

  it.scopedLive("a body that comes in several writes comes out whole, and in order", () =>
    Effect.gen(function*() {
      const { client, request } = yield* oneRequest("POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 300000\r\n\r\n")
      const parts = [0, 1, 2].map((i) => Buffer.alloc(100_000, 48 + i))
      const writes = Effect.forEach(parts, (part) => Effect.zipRight(Effect.sleep("20 millis"), Effect.sync(() => client.write(part))), { discard: true })
      const [read] = yield* Effect.all([Stream.runCollect(bodyStream(request)), writes], { concurrency: 2 })
      expect(Buffer.concat(Chunk.toReadonlyArray(read)).equals(Buffer.concat(parts))).toBe(true)
    }))

  it.scopedLive("a body that had all arrived, and ended, before reading began comes out whole", () =>
    Effect.gen(function*() {
      const { request } = yield* oneRequest("POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\n\r\nhello")
      request.resume() // read it to its end, unseen, so that it has ended
      yield* Effect.async<void>((resume) => void request.once("end", () => resume(Effect.void)))
      expect(Chunk.toReadonlyArray(yield* Stream.runCollect(bodyStream(request)))).toEqual([])
      const { request: early } = yield* oneRequest("POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\n\r\nhello")
      yield* Effect.sleep("50 millis") // arrived and buffered, not read yet
      expect(Buffer.concat(Chunk.toReadonlyArray(yield* Stream.runCollect(bodyStream(early)))).toString()).toBe("hello")
    }))

  it.scopedLive("a client that goes away mid-body fails the stream rather than leave it waiting", () =>
    Effect.gen(function*() {
      const { client, request } = yield* oneRequest("POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\nhalf")
      const reading = yield* Effect.fork(Stream.runCollect(bodyStream(request)))
      yield* Effect.sleep("50 millis")
      client.destroy()
      const exit = yield* Effect.timeout(reading.await, "5 seconds")
      expect(Exit.isFailure(exit)).toBe(true)
    }))
})
