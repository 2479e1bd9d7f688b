/**
 * Result pages and slow readers (`GET /v1/batches/{id}/results`): a page stays in memory until its client has taken
 * it, so a node holds at most `RESULT_PAGES_AT_ONCE` of them. Here one, with a stall timeout of 1 s: a client that
 * never reads its page is cut off after the stall timeout and the next request (sent again after each 503) gets
 * its turn; while a client reads its page slowly, the next request gets a 503 in the error envelope with
 * `Retry-After`, and the page once that reader is gone. Raw sockets play the slow clients (a client that reads
 * nothing, or 16 KiB every 5 ms); pages of 32 MiB, past what the loopback's buffers take in. (The loopback's
 * buffers grow to megabytes, and the kernel wakes a writer once a third of its buffer is free: a reader much slower
 * than this one would see the server's writes pause for seconds at a time, longer than the test's stall timeout.)
 */
import { describe, expect, layer } from "@effect/vitest"
import { Duration, Effect } from "effect"
import { connect, type Socket } from "node:net"
import { chatLine, createBatch, sdk, terminal, upload, waitFor } from "./support/Batches.js"
import { baseUrl, testAppWithUpstream } from "./support/TestApp.js"

const STALL_MS = 1000

/**
 * The results path of a finished batch whose output page is one answer of 32 MiB: made by the first test that asks,
 * and read by both (a page is read again for each request).
 */
const bigPage = Effect.gen(function*() {
  const openai = sdk(yield* baseUrl)
  const file = yield* upload(openai, [chatLine("l1", "one [big:32]")])
  const batch = yield* createBatch(openai, file.id)
  expect((yield* waitFor(openai, batch.id, terminal)).status).toBe("completed")
  return `/v1/batches/${batch.id}/results`
}).pipe(Effect.cached, Effect.runSync)

/**
 * A client that asks for `path`, reads the first bytes that come, then `reading` bytes every 5 ms (0: none, ever);
 * `take` reads the rest at full speed and gives how many bytes came in all, head included, once the connection ends.
 */
const slowClient = (base: string, path: string, reading: number) => {
  const url = new URL(base)
  const socket: Socket = connect({ host: url.hostname, port: Number(url.port) })
  let received = 0
  const ended = new Promise<void>((resolve) => socket.once("close", () => resolve()))
  socket.on("error", () => {})
  // The first bytes (the head) are read once they come; after that, only what `reading` says.
  let answering = false
  socket.once("readable", () => {
    answering = true
    received += socket.read()?.length ?? 0
  })
  socket.write(`GET ${path} HTTP/1.1\r\nhost: ${url.host}\r\n\r\n`)
  const timer = reading > 0
    ? setInterval(() => {
      received += socket.read(reading)?.length ?? 0
    }, 5)
    : undefined
  return {
    /** Its answer has begun to come. */
    answering: () => answering,
    drop: () => {
      clearInterval(timer)
      socket.destroy()
    },
    take: async () => {
      clearInterval(timer)
      socket.on("data", (chunk: Buffer) => received += chunk.length)
      socket.resume()
      await ended
      return received
    }
  }
}

/** Until `check` holds (polled every 10 ms). */
const until = (check: () => boolean) =>
  Effect.promise(async () => {
    while (!check()) await new Promise((r) => setTimeout(r, 10))
  })

/** A plain request: its answer, its body, and how long its head took to come. */
const get = (base: string, path: string) =>
  Effect.promise(async () => {
    const started = performance.now()
    const response = await fetch(`${base}${path}`)
    const ms = performance.now() - started
    return { response, body: Buffer.from(await response.arrayBuffer()), ms }
  })

/**
 * `get`, sent again after each 503 as its `Retry-After` says (as the SDKs do), for up to 20 s; and how long from the
 * first call to the answer.
 */
const getServed = (base: string, path: string) =>
  Effect.gen(function*() {
    const started = performance.now()
    let answer = yield* get(base, path)
    while (answer.response.status === 503 && performance.now() - started < 20_000) {
      yield* Effect.sleep(Duration.seconds(Number(answer.response.headers.get("retry-after"))))
      answer = yield* get(base, path)
    }
    return { ...answer, waited: performance.now() - started }
  })

describe("result pages held by slow readers", () => {
  layer(
    testAppWithUpstream({ resultPagesAtOnce: 1, stallTimeout: Duration.millis(STALL_MS) }),
    { excludeTestServices: true }
  )("one page at a time, a stall timeout of 1 s", (it) => {
    it.effect("a client that never reads is cut off after the stall timeout; the next request then gets its turn", () =>
      Effect.gen(function*() {
        const base = yield* baseUrl
        const path = yield* bigPage
        const stalled = slowClient(base, path, 0)
        yield* until(stalled.answering)
        // The page held by the client that reads nothing more is let go once the loopback's buffers are full and the
        // stall timeout has passed (the buffers take seconds to fill on a busy machine), or never.
        const next = yield* getServed(base, path)
        expect([next.response.status, next.body.length]).toEqual([200, Number(next.response.headers.get("content-length"))])
        expect(next.body.length).toBeGreaterThan(32 * 1024 * 1024)
        // It waited for the stalled client's page to be let go.
        expect(next.waited).toBeGreaterThan(STALL_MS * 0.7)
        // The stalled client's connection was closed before all of its page came.
        expect(yield* Effect.promise(() => stalled.take())).toBeLessThan(next.body.length)
      }), { timeout: 30_000 })

    it.effect("while a client reads its page slowly, the next request gets a 503 with Retry-After; once that reader is gone, the page", () =>
      Effect.gen(function*() {
        const base = yield* baseUrl
        const path = yield* bigPage
        const slow = slowClient(base, path, 16 * 1024)
        yield* until(slow.answering)
        const refused = yield* get(base, path)
        expect(refused.response.status).toBe(503)
        expect(refused.response.headers.get("retry-after")).toBe("1")
        expect(JSON.parse(refused.body.toString())).toEqual({
          error: {
            message: "Too many result pages are being sent at once (1); try again in a second.",
            type: "server_error",
            param: null,
            code: "server_busy"
          }
        })
        slow.drop()
        // Its turn was given back with the connection, once the server has seen it close (its only way back now).
        const served = yield* getServed(base, path)
        expect(served.response.status).toBe(200)
      }), { timeout: 30_000 })
  })
})
