/**
 * The node-wide bound on upstream answer bytes in memory (`INFERENCE_MAX_BUFFERED_BYTES`): large answers reserve
 * their bytes before they are read, wait (their connection paused, their time limit stopped) while the budget lacks
 * room, and give them back once stored.
 */
import * as HttpBody from "@effect/platform/HttpBody"
import type * as HttpClient from "@effect/platform/HttpClient"
import * as HttpClientRequest from "@effect/platform/HttpClientRequest"
import { describe, expect, it, layer } from "@effect/vitest"
import { Context, Duration, Effect, Fiber, Layer } from "effect"
import { execFileSync } from "node:child_process"
import * as http from "node:http"
import type * as net from "node:net"
import { AppConfig } from "../src/Config.js"
import { AnswerHold, AnswerMemory, currentAnswerHold, defaultAnswerBudget } from "../src/inference/answerMemory.js"
import { Inference, InferenceLive } from "../src/inference/Inference.js"
import * as UpstreamHttpClient from "../src/inference/UpstreamHttpClient.js"
import { chatLine, createBatch, readLines, terminal, upload, waitFor } from "./support/Batches.js"
import { client } from "./support/Upstreams.js"
import { baseUrl, testAppWithUpstream } from "./support/TestApp.js"

const MiB = 1024 * 1024
const sleep = (ms: number) => Effect.promise(() => new Promise((resolve) => setTimeout(resolve, ms)))

describe("AnswerMemory", () => {
  it("its budget, unless configured, is 512 MiB or a quarter of the heap's limit when that is less (a small container's)", () => {
    expect(defaultAnswerBudget(4 * 1024 ** 3)).toBe(512 * 1024 ** 2)
    expect(defaultAnswerBudget(160 * 1024 ** 2)).toBe(40 * 1024 ** 2)
    // The node's own heap limit is what counts: a process started with a small heap gets a small budget.
    const small = execFileSync(process.execPath, [
      "--max-old-space-size=160",
      "--import",
      "tsx",
      "--input-type=module",
      "-e",
      `const { defaults } = await import(${JSON.stringify(new URL("../src/Config.ts", import.meta.url).href)}); console.log(defaults.inferenceMaxBufferedBytes)`
    ], { encoding: "utf8" })
    expect(Number(small) / 1024 ** 2).toBeGreaterThan(39)
    expect(Number(small) / 1024 ** 2).toBeLessThan(64) // V8 adds its young generation to the limit
  })

  it("grants in order: a large reservation is not passed over by smaller ones behind it", () => {
    const memory = new AnswerMemory(10)
    const granted: Array<string> = []
    expect(memory.reserve(6, () => granted.push("a"))).toBe(true)
    expect(memory.reserve(8, () => granted.push("big"))).toBe(false)
    expect(memory.reserve(2, () => granted.push("small"))).toBe(false) // it would fit, but waits its turn
    memory.release(6)
    expect(granted).toEqual(["big", "small"])
    expect([memory.used, memory.peak]).toEqual([10, 10])
  })

  it("a wait cancelled at the head lets the next one in", () => {
    const memory = new AnswerMemory(10)
    const granted: Array<string> = []
    memory.reserve(6, () => {})
    const big = () => granted.push("big")
    memory.reserve(8, big)
    memory.reserve(4, () => granted.push("small"))
    expect(memory.cancel(big)).toBe(true)
    expect(granted).toEqual(["small"])
    expect(memory.cancel(big)).toBe(false)
  })
})

/** A server answering each POST with `size` bytes of a JSON string, announced or chunked. */
const bigAnswers = (size: number, announced: boolean) =>
  Effect.acquireRelease(
    Effect.async<{ readonly url: string; readonly server: http.Server }>((resume) => {
      const body = `"${"x".repeat(size - 2)}"`
      const server = http.createServer((req, res) => {
        req.resume()
        req.on("end", () => {
          if (announced) res.writeHead(200, { "content-type": "application/json", "content-length": body.length })
          else res.writeHead(200, { "content-type": "application/json" })
          res.end(body)
        })
      })
      server.listen(0, "127.0.0.1", () => {
        resume(Effect.succeed({ url: `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`, server }))
      })
    }),
    ({ server }) => Effect.promise(() => new Promise<void>((done) => (server.closeAllConnections(), server.close(() => done()))))
  )

const clientWith = (memory: AnswerMemory, timeoutMs = 5000) =>
  Effect.map(UpstreamHttpClient.dispatcher, (d) => UpstreamHttpClient.make(d, { timeoutMs, maxBodyBytes: 4 * MiB, memory }))

/** One call's answer length, made for the request `hold` holds for (none: a call outside batch work). */
const call = (http: HttpClient.HttpClient, url: string, hold?: AnswerHold) =>
  Effect.map(
    http.execute(HttpClientRequest.post(`${url}/v1/chat/completions`).pipe(HttpClientRequest.setBody(HttpBody.text("{}")))).pipe(
      Effect.flatMap((res) => res.text),
      Effect.locally(currentAnswerHold, hold)
    ),
    (text) => text.length
  )

describe("the upstream client under a memory budget", () => {
  it.scoped("answers of 2 MiB under 5 MiB: two are held, the third waits past its time limit, then is read once one is let go", () =>
    Effect.gen(function*() {
      const { url } = yield* bigAnswers(2 * MiB, true)
      const memory = new AnswerMemory(5 * MiB)
      // A time limit a 2 MiB answer meets under the whole suite on two cores (400 ms did not, once).
      const upstream = yield* clientWith(memory, 1000)
      const holds = [new AnswerHold(), new AnswerHold(), new AnswerHold()]
      expect(yield* call(upstream, url, holds[0])).toBe(2 * MiB)
      expect(yield* call(upstream, url, holds[1])).toBe(2 * MiB)
      expect(memory.used).toBe(4 * MiB) // both answers held until stored
      const third = yield* Effect.fork(call(upstream, url, holds[2]))
      yield* sleep(1500) // longer than its time limit: waiting for memory is not the upstream's time
      expect(third.unsafePoll()).toBeNull()
      holds[0]!.release()
      expect(yield* Fiber.join(third)).toBe(2 * MiB)
      expect(memory.peak).toBeLessThanOrEqual(5 * MiB)
      holds[1]!.release()
      holds[2]!.release()
      expect(memory.used).toBe(0)
    }))

  it.scoped("an answer that announces no size reserves the largest answer once past 1 MiB", () =>
    Effect.gen(function*() {
      const announced = yield* bigAnswers(2 * MiB, true)
      const chunked = yield* bigAnswers(1.5 * MiB, false)
      const memory = new AnswerMemory(5 * MiB)
      const upstream = yield* clientWith(memory)
      const held = new AnswerHold()
      yield* call(upstream, announced.url, held)
      const hold = new AnswerHold()
      const waiting = yield* Effect.fork(call(upstream, chunked.url, hold))
      yield* sleep(300)
      expect(waiting.unsafePoll()).toBeNull() // 2 + 4 MiB would pass 5
      held.release()
      expect(yield* Fiber.join(waiting)).toBe(1.5 * MiB)
      expect(memory.used).toBe(1.5 * MiB) // what came of the largest answer it reserved
      hold.release()
    }))

  it.scoped("bytes given back while a connection's answer is being read let the next call in (outside holds; an answer refused as too large)", () =>
    Effect.gen(function*() {
      const { url } = yield* bigAnswers(3 * MiB, true)
      const memory = new AnswerMemory(4 * MiB)
      const upstream = yield* clientWith(memory)
      // Each gives its bytes back as its answer ends, in its connection's callback: the other resumes.
      expect(yield* Effect.all([call(upstream, url), call(upstream, url)], { concurrency: "unbounded" })).toEqual([3 * MiB, 3 * MiB])
      const tooLarge = yield* bigAnswers(5 * MiB, false)
      const outcomes = yield* Effect.all(
        [Effect.either(call(upstream, tooLarge.url)), call(upstream, url)],
        { concurrency: "unbounded" }
      )
      expect(outcomes[0]._tag).toBe("Left")
      expect(outcomes[1]).toBe(3 * MiB)
      expect(memory.peak).toBeLessThanOrEqual(4 * MiB)
    }))

  it.scoped("a budget smaller than the largest answer: such an answer takes all of it, alone", () =>
    Effect.gen(function*() {
      const { url } = yield* bigAnswers(2 * MiB, true)
      const memory = new AnswerMemory(1.5 * MiB)
      const upstream = yield* clientWith(memory)
      expect(yield* Effect.all([call(upstream, url), call(upstream, url)], { concurrency: "unbounded" })).toEqual([2 * MiB, 2 * MiB])
      expect([memory.used, memory.peak]).toEqual([0, 1.5 * MiB])
      // INFERENCE_MAX_RESPONSE_BYTES raised alone is not refused for passing the default budget.
      const config = yield* Effect.provide(AppConfig, AppConfig.layerWith({ inferenceMaxResponseBytes: 1024 * MiB }))
      expect(config.inferenceMaxBufferedBytes).toBe(512 * MiB)
    }))

  it.scoped("a call interrupted while it waits leaves the queue; a call outside a hold gives its bytes back once read", () =>
    Effect.gen(function*() {
      const { url } = yield* bigAnswers(2 * MiB, true)
      const memory = new AnswerMemory(3 * MiB)
      const upstream = yield* clientWith(memory)
      const held = new AnswerHold()
      yield* call(upstream, url, held)
      const waiting = yield* Effect.fork(call(upstream, url, new AnswerHold()))
      yield* sleep(200)
      yield* Fiber.interrupt(waiting)
      held.release()
      expect(memory.used).toBe(0)
      expect(yield* call(upstream, url)).toBe(2 * MiB)
      expect(memory.used).toBe(0)
      expect(memory.peak).toBe(2 * MiB)
    }))
})

describe("Inference's retries", () => {
  it.scopedLive("the answer of an attempt to be retried is not held through the wait", () =>
    Effect.gen(function*() {
      // A 500 with a 2 MiB body, then a 200.
      let calls = 0
      const server = yield* Effect.acquireRelease(
        Effect.async<http.Server>((resume) => {
          const s = http.createServer((req, res) => {
            req.resume()
            if (req.method !== "POST") return void res.end(`{"data":[]}`) // the start-up probe
            req.on("end", () => {
              const body = ++calls === 1 ? `{"error":"${"x".repeat(2 * MiB)}"}` : "{}"
              res.writeHead(calls === 1 ? 500 : 200, { "content-type": "application/json", "content-length": body.length })
              res.end(body)
            })
          })
          s.listen(0, "127.0.0.1", () => resume(Effect.succeed(s)))
        }),
        (s) => Effect.promise(() => new Promise<void>((done) => (s.closeAllConnections(), s.close(() => done()))))
      )
      const url = `http://127.0.0.1:${(server.address() as net.AddressInfo).port}/v1`
      const services = yield* Layer.build(InferenceLive.pipe(Layer.provide(AppConfig.layerWith({
        inferenceBaseUrl: url,
        inferenceMaxAttempts: 2,
        inferenceRetryBaseDelay: Duration.millis(800)
      }))))
      const inference = Context.get(services, Inference)
      const hold = new AnswerHold()
      const sent = yield* Effect.fork(
        Effect.locally(inference.send("/v1/chat/completions", `{"model":"m"}`, { model: "m" }), currentAnswerHold, hold)
      )
      yield* sleep(400) // within the retry's wait
      expect([calls, hold.holding()]).toEqual([1, false])
      expect((yield* Fiber.join(sent)).status).toBe(200)
    }))
})

const app = testAppWithUpstream({
  maxConcurrentRequestsPerBatch: 8,
  inferenceMaxResponseBytes: 3 * MiB,
  inferenceMaxBufferedBytes: 5 * MiB
})

/** `batch_upstream_answer_bytes`, as `/metrics` gives it. */
const heldBytes = Effect.flatMap(baseUrl, (url) =>
  Effect.promise(async () => Number(/^batch_upstream_answer_bytes (\d+)$/m.exec(await (await fetch(`${url}/metrics`)).text())?.[1])))

layer(app, { excludeTestServices: true })("batches under a memory budget", (it) => {
  it.effect("every 2 MiB answer of two batches is stored, eight calls at a time under 5 MiB, and the memory is all given back", () =>
    Effect.gen(function*() {
      const openai = yield* client
      for (const round of [1, 2]) {
        const file = yield* upload(openai, Array.from({ length: 12 }, (_, i) => chatLine(`r${round}-${i}`, `[big:2] ${round} ${i}`)))
        const batch = yield* createBatch(openai, file.id)
        const done = yield* waitFor(openai, batch.id, terminal, 30_000)
        expect(done.request_counts).toEqual({ total: 12, completed: 12, failed: 0 })
        const lines = yield* readLines(openai, done.output_file_id)
        expect(lines.every((line) => JSON.stringify(line).length > 2 * MiB)).toBe(true)
      }
      expect(yield* heldBytes).toBe(0)
    }), { timeout: 60_000 })
})
