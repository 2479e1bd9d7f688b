/**
 * What a node holds at once. The JSON bodies (`MAX_JSON_BODIES_BYTES`): each body is bounded by `MAX_JSON_BODY_BYTES`, and
 * all of them by the budget. Here 4 KiB of bodies of at most 1 KiB: clients that send most of a body and stop hold
 * their bytes; a body that does not fit gets a 503 in the error envelope with `Retry-After` (the client, still sending,
 * gets it rather than a reset), and once the held bodies are gone a body fits again. The uploads
 * (`MAX_UPLOADS_AT_ONCE`, here 2): while two clients send theirs slowly, a third gets a 503 with `Retry-After`; once
 * one is gone, it is stored. The downloads (`MAX_DOWNLOADS_AT_ONCE`, here 1, and `STALL_TIMEOUT` 1 s): while a
 * client takes nothing of a file's content, another download gets a 503; the stalled client is cut off, and the next
 * download gets the whole file. Bodies (`STALL_TIMEOUT`, here 1 s): one that stops coming has its connection closed,
 * an upload that keeps coming slowly for longer is stored, and one sent a byte at a time (under `MIN_BODY_RATE`) is
 * cut off soon after the stall timeout. A project's share: with keys of several projects, one that
 * holds half the uploads (or the JSON bodies' bytes) gets a 429, and the others are served; the last quarter is kept
 * for projects that hold at most one request's worth, so that two projects cannot hold it all between them; with one
 * project's keys, it may hold them all.
 */
import { describe, expect, it, layer } from "@effect/vitest"
import { Duration, Effect } from "effect"
import { connect, type Socket } from "node:net"
import { toFile } from "openai"
import { AuthTest } from "../src/auth/Auth.js"
import { Budget } from "../src/http/holding.js"
import { sdk } from "./support/Batches.js"
import { baseUrl, eventuallyEffect, testApp } from "./support/TestApp.js"

const BODY = 1024
const BODIES = 4 * BODY

/** A client that sends the start of a 1 MiB file to `POST /v1/files` (with `key`, when given), and waits. */
const stalledUpload = (base: string, key?: string): Socket => {
  const url = new URL(base)
  const socket = connect(Number(url.port), url.hostname)
  socket.on("error", () => {})
  const head = `--b\r\ncontent-disposition: form-data; name="purpose"\r\n\r\nbatch\r\n` +
    `--b\r\ncontent-disposition: form-data; name="file"; filename="a.jsonl"\r\n\r\n`
  socket.write(
    `POST /v1/files HTTP/1.1\r\nhost: ${url.host}\r\ncontent-type: multipart/form-data; boundary=b\r\n` +
      (key === undefined ? "" : `authorization: Bearer ${key}\r\n`) +
      `content-length: ${1024 * 1024}\r\n\r\n${head}{"custom_id":`
  )
  return socket
}

/** A client that sends `POST /v1/batches` (with `key`, when given) with a body of `BODY` bytes but its last 4, and waits. */
const stalledBody = (base: string, key?: string): Socket => {
  const url = new URL(base)
  const socket = connect(Number(url.port), url.hostname)
  socket.on("error", () => {})
  socket.write(
    `POST /v1/batches HTTP/1.1\r\nhost: ${url.host}\r\ncontent-type: application/json\r\ncontent-length: ${BODY}\r\n` +
      (key === undefined ? "" : `authorization: Bearer ${key}\r\n`) + "\r\n" +
      `{"metadata":{"pad":"${"x".repeat(BODY - 4 - 20)}`
  )
  return socket
}

const createBatch = (base: string, key?: string) =>
  Effect.promise(async () => {
    const response = await fetch(`${base}/v1/batches`, {
      method: "POST",
      headers: { "content-type": "application/json", ...(key === undefined ? {} : { authorization: `Bearer ${key}` }) },
      body: JSON.stringify({ input_file_id: "file-missing", endpoint: "/v1/chat/completions", completion_window: "24h" })
    })
    return { status: response.status, retryAfter: response.headers.get("retry-after"), body: await response.json() as any }
  })

/**
 * `request` (refused while held: a refusal holds nothing) until it passes: what was held is given back once the server
 * has seen the connections close, which on a loaded machine took longer than 100 ms.
 */
const givenBack = <A>(request: Effect.Effect<A>) => eventuallyEffect(request, 5_000)

/** Uploads a small file (with `key`, when given): its status, `Retry-After` and body. */
const uploadWith = (base: string, key?: string) =>
  Effect.promise(async () => {
    const form = new FormData()
    form.append("purpose", "batch")
    form.append("file", new Blob(["{}\n"]), "b.jsonl")
    const headers: Record<string, string> = key === undefined ? {} : { authorization: `Bearer ${key}` }
    const response = await fetch(`${base}/v1/files`, { method: "POST", body: form, headers })
    return { status: response.status, retryAfter: response.headers.get("retry-after"), body: await response.json() as any }
  })

describe("what a node holds at once", () => {
  layer(testApp({ maxJsonBodyBytes: BODY, maxJsonBodiesBytes: BODIES }), { excludeTestServices: true })("4 KiB of bodies", (it) => {
    it.effect("a body that does not fit while others are held gets a 503 with Retry-After; once they are gone, it fits", () =>
      Effect.gen(function*() {
        const base = yield* baseUrl
        // Four bodies of nearly 1 KiB each: the budget is all but spent, the fifth body does not fit.
        const held = Array.from({ length: 4 }, () => stalledBody(base))
        yield* Effect.sleep("300 millis")
        const refused = yield* createBatch(base)
        expect([refused.status, refused.retryAfter]).toEqual([503, "1"])
        expect(refused.body).toEqual({
          error: {
            message: "The server is reading too many request bodies at once; try again in a second.",
            type: "server_error",
            param: null,
            code: "server_busy"
          }
        })
        for (const socket of held) socket.destroy()
        // The held bodies' bytes were given back: the same request is read, and the batch created.
        yield* givenBack(Effect.map(createBatch(base), (served) => expect([served.status, served.body.object]).toEqual([200, "batch"])))
      }))
  })

  layer(testApp({ maxUploadsAtOnce: 2 }), { excludeTestServices: true })("two uploads at once", (it) => {
    it.effect("a third upload while two are sent slowly gets a 503 with Retry-After; once one is gone, it is stored", () =>
      Effect.gen(function*() {
        const base = yield* baseUrl
        const openai = sdk(base)
        const held = [stalledUpload(base), stalledUpload(base)]
        yield* Effect.sleep("300 millis")
        const refused = yield* uploadWith(base)
        expect([refused.status, refused.retryAfter]).toEqual([503, "5"])
        expect(refused.body.error).toEqual({
          message: "The server is receiving too many uploads at once (2); try again in a few seconds.",
          type: "server_error",
          param: null,
          code: "server_busy"
        })
        held[0]!.destroy()
        const stored = yield* givenBack(Effect.promise(async () =>
          openai.files.create({ file: await toFile(Buffer.from("{}\n"), "c.jsonl"), purpose: "user_data" })
        ))
        expect(stored.bytes).toBe(3)
        held[1]!.destroy()
      }))
  })

  layer(testApp({ maxDownloadsAtOnce: 1, stallTimeout: Duration.seconds(1) }), { excludeTestServices: true })("one download at once", (it) => {
    it.effect("while a client takes nothing of a file, another download gets a 503; the stalled one is cut off, then it is served", () =>
      Effect.gen(function*() {
        const base = yield* baseUrl
        const openai = sdk(base)
        const content = Buffer.alloc(24 * 1024 * 1024, 0x61) // past what the loopback's buffers take in
        const file = yield* Effect.promise(async () =>
          openai.files.create({ file: await toFile(content, "big.bin"), purpose: "user_data" })
        )
        const url = new URL(base)
        const stalled = connect(Number(url.port), url.hostname)
        let cut = false
        stalled.on("error", () => {})
        stalled.once("readable", () => stalled.read(100)) // the head, then nothing
        stalled.on("close", () => cut = true)
        stalled.write(`GET /v1/files/${file.id}/content HTTP/1.1\r\nhost: ${url.host}\r\n\r\n`)
        yield* Effect.sleep("300 millis")
        const download = Effect.promise(async () => {
          const response = await fetch(`${base}/v1/files/${file.id}/content`)
          return { status: response.status, retryAfter: response.headers.get("retry-after"), body: Buffer.from(await response.arrayBuffer()) }
        })
        const refused = yield* download
        expect([refused.status, refused.retryAfter]).toEqual([503, "5"])
        expect(JSON.parse(refused.body.toString()).error.code).toBe("server_busy")
        // Sent again until served: only the stall timeout lets the stalled client's turn go.
        let served = refused
        for (let i = 0; i < 40 && served.status === 503; i++) {
          yield* Effect.sleep("500 millis")
          served = yield* download
        }
        expect([served.status, served.body.equals(content)]).toEqual([200, true])
        // The stalled client, reading again, finds its connection closed once it has read what the loopback held (a
        // few megabytes: on a loaded machine, more than the 100 ms this waited before).
        stalled.resume()
        for (let i = 0; i < 50 && !cut; i++) yield* Effect.sleep("100 millis")
        expect(cut).toBe(true)
      }), { timeout: 40_000 })
  })

  layer(testApp({ stallTimeout: Duration.seconds(1) }), { excludeTestServices: true })("bodies that stop coming", (it) => {
    /**
     * Sends `head` and the pieces of `pieces`, one every `everyMs`, then waits for the connection to close (10 s at
     * most): the answer's status (NaN: none) and body, and whether it closed.
     */
    const send = (base: string, head: string, pieces: ReadonlyArray<string>, everyMs: number) =>
      Effect.promise(() =>
        new Promise<{ status: number; text: string; closed: boolean }>((resolve) => {
          const url = new URL(base)
          const socket = connect(Number(url.port), url.hostname)
          let answer = ""
          socket.on("data", (chunk) => answer += chunk)
          socket.on("error", () => {})
          const done = (closed: boolean) =>
            resolve({ status: Number(answer.split(" ")[1]), text: answer.slice(answer.indexOf("\r\n\r\n") + 4), closed })
          socket.on("close", () => done(true))
          setTimeout(() => done(false), 10_000)
          socket.write(head)
          pieces.forEach((piece, i) => setTimeout(() => socket.writable && socket.write(piece), i * everyMs))
        })
      )

    it.effect("a JSON body that stops coming has its connection closed", () =>
      Effect.gen(function*() {
        const base = yield* baseUrl
        const head = `POST /v1/batches HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n`
        const answer = yield* send(base, head, [`{"input_file_id":`], 0)
        expect([answer.closed, answer.status]).toEqual([true, NaN])
      }))

    it.effect("an upload that keeps coming, slowly, for longer than the stall timeout is stored; one that stops is cut off", () =>
      Effect.gen(function*() {
        const base = yield* baseUrl
        const form = (bytes: number) =>
          `POST /v1/files HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\ncontent-type: multipart/form-data; boundary=b\r\n` +
          `content-length: ${bytes}\r\n\r\n`
        const start = `--b\r\ncontent-disposition: form-data; name="purpose"\r\n\r\nuser_data\r\n` +
          `--b\r\ncontent-disposition: form-data; name="file"; filename="slow.txt"\r\n\r\n`
        const pieces = [start, ...Array.from({ length: 10 }, () => "x".repeat(1000)), "\r\n--b--\r\n"]
        const total = pieces.reduce((n, p) => n + Buffer.byteLength(p), 0)
        // Twelve pieces 300 ms apart: 3.3 s in all, never 1 s without a byte.
        const steady = yield* send(base, form(total), pieces, 300)
        expect([steady.status, JSON.parse(steady.text).bytes]).toEqual([200, 10_000])
        const stopped = yield* send(base, form(total), pieces.slice(0, 3), 300)
        expect([stopped.closed, stopped.status]).toEqual([true, NaN])
      }), { timeout: 20_000 })

    it.effect("a body sent a byte at a time, never stalling but slower than MIN_BODY_RATE, is cut off soon after the stall timeout", () =>
      Effect.gen(function*() {
        const base = yield* baseUrl
        // A byte every 50 ms (20 bytes a second, the default MIN_BODY_RATE 1,024): 8 s for the whole, never 1 s
        // without one. Whole, the JSON body would get a 400 and the upload a 200.
        const bytes = Array.from({ length: 160 }, () => "x")
        const json = `POST /v1/batches HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: 160\r\n\r\n`
        const start = `--b\r\ncontent-disposition: form-data; name="purpose"\r\n\r\nuser_data\r\n` +
          `--b\r\ncontent-disposition: form-data; name="file"; filename="trickle.txt"\r\n\r\n`
        const end = "\r\n--b--\r\n"
        const upload = `POST /v1/files HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: multipart/form-data; boundary=b\r\n` +
          `content-length: ${start.length + bytes.length + end.length}\r\n\r\n${start}`
        for (const [head, pieces] of [[json, bytes], [upload, [...bytes, end]]] as const) {
          const started = Date.now()
          const answer = yield* send(base, head, pieces, 50)
          const took = Date.now() - started
          expect([answer.closed, answer.status]).toEqual([true, NaN])
          expect(took).toBeGreaterThanOrEqual(950) // the stall timeout's grace first
          expect(took).toBeLessThan(6_000) // well before the body's end
        }
      }), { timeout: 30_000 })
  })

  describe("a project's share", () => {
    it("one project holds at most half a budget; what is over its share is refused, and given back", () => {
      const budget = new Budget(4)
      const a = { project: "a", enforce: true }
      expect([budget.take(1, a), budget.take(1, a), budget.take(1, a)]).toEqual(["taken", "taken", "share"])
      budget.give(1, a)
      expect([budget.take(1, a), budget.take(1, a)]).toEqual(["taken", "share"])
      // A share that holds more than half (the JSON bodies' holds one whole body).
      expect(new Budget(4, 3).take(3, a)).toBe("taken")
    })

    it("an operator's key, and a project alone on a node, only meet the whole", () => {
      const budget = new Budget(4)
      expect([budget.take(1), budget.take(1), budget.take(1), budget.take(1), budget.take(1)])
        .toEqual(["taken", "taken", "taken", "taken", "full"])
      expect(budget.take(1, { project: "a", enforce: true })).toBe("full")
      const alone = new Budget(4)
      const only = { project: "a", enforce: false }
      expect([1, 2, 3, 4, 5].map(() => alone.take(1, only))).toEqual(["taken", "taken", "taken", "taken", "full"])
    })

    it("the last quarter is kept for projects holding at most one request's worth: two projects cannot hold it all", () => {
      // 8: a share of 4, a reserve of 2.
      const budget = new Budget(8)
      const [a, b, c, d, e] = ["a", "b", "c", "d", "e"].map((project) => ({ project, enforce: true }))
      expect([1, 2, 3, 4, 5].map(() => budget.take(1, a))).toEqual(["taken", "taken", "taken", "taken", "share"])
      expect([1, 2, 3].map(() => budget.take(1, b))).toEqual(["taken", "taken", "share"])
      // Six held: c and d take one each from the reserve, and no more; then the node is full.
      expect([budget.take(1, c), budget.take(1, c), budget.take(1, d), budget.take(1, e)]).toEqual(["taken", "share", "taken", "full"])
      budget.give(1, a)
      expect([budget.take(1, b), budget.take(1, e)]).toEqual(["share", "taken"])
      // Bytes: a request's worth is one whole body, taken as it arrives, a piece at a time.
      const bytes = new Budget(4096, 1024)
      expect([bytes.take(1000, a), bytes.take(1000, a), bytes.take(1000, b)]).toEqual(["taken", "taken", "taken"])
      expect([bytes.take(500, c), bytes.take(500, c), bytes.take(500, b)]).toEqual(["taken", "taken", "share"])
    })

    it("what a project held while it was alone counts once keys name a second project", () => {
      const budget = new Budget(4)
      const alone = { project: "a", enforce: false }
      expect([budget.take(1, alone), budget.take(1, alone), budget.take(1, alone)]).toEqual(["taken", "taken", "taken"])
      // A reload names project b too: a holds three, over its share of two.
      expect(budget.take(1, { project: "a", enforce: true })).toBe("share")
      expect(budget.take(1, { project: "b", enforce: true })).toBe("taken")
      budget.give(1, alone)
      budget.give(1, alone)
      expect(budget.take(1, { project: "a", enforce: true })).toBe("taken")
    })

    layer(
      testApp(
        { maxUploadsAtOnce: 4, maxJsonBodyBytes: BODY, maxJsonBodiesBytes: BODIES },
        "sqlite",
        { auth: AuthTest({ apiKeys: ["key-a:alpha", "key-b:beta", "key-c:gamma"], adminApiKeys: ["key-op"] }) }
      ),
      { excludeTestServices: true }
    )("four uploads at once, keys of three projects", (it) => {
      it.effect("a project that holds its half gets a 429; a second may not take the last quarter, which serves a third; the operator's key only meets the whole", () =>
        Effect.gen(function*() {
          const base = yield* baseUrl
          const alpha = [stalledUpload(base, "key-a"), stalledUpload(base, "key-a")]
          yield* Effect.sleep("300 millis")
          const refused = yield* uploadWith(base, "key-a")
          expect([refused.status, refused.retryAfter]).toEqual([429, "5"])
          expect(refused.body.error).toEqual({
            message: "Your project is sending too many uploads at once (it holds 2, as many as it may now); try again in a few seconds.",
            type: "requests",
            param: null,
            code: "rate_limit_exceeded"
          })
          // Another project's upload goes through; one held, it may take no second from the last quarter.
          expect((yield* uploadWith(base, "key-b")).status).toBe(200)
          const beta = stalledUpload(base, "key-b")
          yield* Effect.sleep("300 millis")
          const second = yield* uploadWith(base, "key-b")
          expect([second.status, second.body.error.message])
            .toEqual([429, "Your project is sending too many uploads at once (it holds 1, as many as it may now); try again in a few seconds."])
          // A third project is served from it; then the node holds all four.
          expect((yield* uploadWith(base, "key-c")).status).toBe(200)
          const gamma = stalledUpload(base, "key-c")
          yield* Effect.sleep("300 millis")
          const full = yield* uploadWith(base, "key-op")
          expect([full.status, full.body.error.code]).toEqual([503, "server_busy"])
          for (const socket of alpha) socket.destroy()
          yield* givenBack(Effect.map(uploadWith(base, "key-a"), (r) => expect(r.status).toBe(200)))
          expect((yield* uploadWith(base, "key-op")).status).toBe(200)
          beta.destroy()
          gamma.destroy()
        }))

      it.effect("JSON bodies: a project holding half the bytes gets a 429, a second may not take the last quarter, a third's body is read", () =>
        Effect.gen(function*() {
          const base = yield* baseUrl
          const held = [stalledBody(base, "key-a"), stalledBody(base, "key-a")]
          yield* Effect.sleep("300 millis")
          const refused = yield* createBatch(base, "key-a")
          expect([refused.status, refused.retryAfter, refused.body.error.code]).toEqual([429, "1", "rate_limit_exceeded"])
          expect((yield* createBatch(base, "key-b")).status).toBe(200)
          held.push(stalledBody(base, "key-b"))
          yield* Effect.sleep("300 millis")
          const second = yield* createBatch(base, "key-b")
          expect([second.status, second.body.error.code]).toEqual([429, "rate_limit_exceeded"])
          expect((yield* createBatch(base, "key-c")).status).toBe(200)
          for (const socket of held) socket.destroy()
          yield* givenBack(Effect.map(createBatch(base, "key-a"), (r) => expect(r.status).toBe(200)))
          yield* givenBack(Effect.map(createBatch(base, "key-b"), (r) => expect(r.status).toBe(200)))
        }))
    })

    layer(
      testApp({ maxUploadsAtOnce: 4 }, "sqlite", { auth: AuthTest({ apiKeys: ["key-a:alpha", "key-a2:alpha"] }) }),
      { excludeTestServices: true }
    )("four uploads at once, keys of one project", (it) => {
      it.effect("with no other project to share with, the project may hold them all", () =>
        Effect.gen(function*() {
          const base = yield* baseUrl
          const held = [stalledUpload(base, "key-a"), stalledUpload(base, "key-a2"), stalledUpload(base, "key-a")]
          yield* Effect.sleep("300 millis")
          expect((yield* uploadWith(base, "key-a2")).status).toBe(200)
          held.push(stalledUpload(base, "key-a"))
          yield* Effect.sleep("300 millis")
          expect((yield* uploadWith(base, "key-a")).status).toBe(503)
          for (const socket of held) socket.destroy()
        }))
    })
  })
})
