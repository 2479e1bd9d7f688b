/** The Batches API end to end: the official `openai` client → the server → the upstream simulator. */
import { describe, expect, layer } from "@effect/vitest"
import { Duration, Effect } from "effect"
import OpenAI, { toFile } from "openai"
import { chatLine, createBatch, failure, readLines, sdk, terminal, upload, waitFor } from "./support/Batches.js"
import { backends, baseUrl, eventually, testAppWithUpstream, Upstream } from "./support/TestApp.js"
import { sideBySide } from "./support/SideBySide.js"

const client = Effect.map(baseUrl, sdk)

const fastRetries = {
  inferenceRetryBaseDelay: Duration.millis(10),
  inferenceMaxAttempts: 4,
  maxRequestsPerBatch: 50,
  maxConcurrentBatches: 2,
  maxConcurrentRequestsPerBatch: 3
}

for (const backend of backends) sideBySide(`batches (${backend})`, () => {
  layer(testAppWithUpstream(fastRetries, {}, backend), { excludeTestServices: true })("batches end to end", (it) => {
    it.effect("a mixed batch completes: one output line per success, one error line per failure, in input order", () =>
      Effect.gen(function*() {
        const openai = yield* client
        const sim = yield* Upstream
        const prompts = Array.from({ length: 12 }, (_, i) => `mixed ${i}`)
        prompts[1] = "mixed 1 [pretty]" // a multi-line upstream body still makes one output line
        prompts[3] = "mixed 3 [fail:400]"
        prompts[5] = "mixed 5 [flaky:429x2]"
        prompts[8] = "mixed 8 [flaky:500x1]"
        prompts[10] = "mixed 10 [fail:422]"
        const file = yield* upload(openai, prompts.map((p, i) => chatLine(`req-${i}`, p)))
        const created = yield* createBatch(openai, file.id, { metadata: { run: "mixed" } })
        expect(created).toMatchObject({
          object: "batch",
          status: "validating",
          model: null,
          errors: null,
          output_file_id: null,
          error_file_id: null,
          in_progress_at: null,
          request_counts: { total: 0, completed: 0, failed: 0 },
          usage: { input_tokens: 0, input_tokens_details: { cached_tokens: 0 }, output_tokens: 0, output_tokens_details: { reasoning_tokens: 0 }, total_tokens: 0 },
          metadata: { run: "mixed" }
        })
        expect(created.id).toMatch(/^batch_[0-9a-f]{32}$/)
        expect(created.expires_at).toBe(created.created_at + 86400)

        const done = yield* waitFor(openai, created.id, terminal)
        expect(done.status).toBe("completed")
        expect(done.model).toBe("sim-model")
        expect(done.request_counts).toEqual({ total: 12, completed: 10, failed: 2 })
        expect(done.usage!.total_tokens).toBeGreaterThan(0)
        expect(done.usage!.total_tokens).toBe(done.usage!.input_tokens + done.usage!.output_tokens)
        for (const stamp of ["in_progress_at", "finalizing_at", "completed_at"] as const) expect(done[stamp]).toEqual(expect.any(Number))

        const output = yield* readLines(openai, done.output_file_id)
        const errors = yield* readLines(openai, done.error_file_id)
        expect(output.map((l) => l.custom_id)).toEqual(prompts.map((_, i) => `req-${i}`).filter((id) => id !== "req-3" && id !== "req-10"))
        for (const line of output) {
          expect(Object.keys(line).sort()).toEqual(["custom_id", "error", "id", "response"])
          expect(line.id).toMatch(/^batch_req_[0-9a-f]{32}$/)
          expect(line.error).toBeNull()
          expect(line.response.status_code).toBe(200)
          expect(typeof line.response.body).toBe("object")
          expect(line.response.body.choices[0].message.content).toBe(`echo: ${prompts[Number(line.custom_id.slice(4))]}`)
        }
        expect(errors.map((l) => [l.custom_id, l.response.status_code])).toEqual([["req-3", 400], ["req-10", 422]])
        expect(errors[0].response.body).toEqual({ error: { message: "Injected failure 400", type: "invalid_request_error", param: null, code: null } })
        expect(errors[0].error).toBeNull()

        // 429 twice and 500 once were retried; nothing else was sent twice.
        expect(sim.stats.byPrompt.get("mixed 5 [flaky:429x2]")).toBe(3)
        expect(sim.stats.byPrompt.get("mixed 8 [flaky:500x1]")).toBe(2)
        expect(sim.stats.byPrompt.get("mixed 3 [fail:400]")).toBe(1)

        const outputFile = yield* Effect.promise(() => openai.files.retrieve(done.output_file_id!))
        expect(outputFile).toMatchObject({ purpose: "batch_output", filename: `${done.id}_output.jsonl` })
      }))

    it.effect("every endpoint: completions, embeddings and responses bodies reach the upstream and come back", () =>
      Effect.gen(function*() {
        const openai = yield* client
        const cases = [
          ["/v1/completions", { model: "sim-model", prompt: "complete me", vendor_field: { top_k: 3 } }, "text_completion"],
          ["/v1/embeddings", { model: "sim-model", input: ["a", "b"] }, "list"],
          ["/v1/responses", { model: "sim-model", input: "respond" }, "response"]
        ] as const
        for (const [endpoint, body, object] of cases) {
          const file = yield* upload(openai, [JSON.stringify({ custom_id: "only", method: "POST", url: endpoint, body })])
          const batch = yield* createBatch(openai, file.id, { endpoint })
          const done = yield* waitFor(openai, batch.id, terminal)
          expect(done.status).toBe("completed")
          const [line] = yield* readLines(openai, done.output_file_id)
          expect(line.response.body.object).toBe(object)
          expect(done.usage!.input_tokens).toBeGreaterThan(0)
        }
      }))

    it.effect("an invalid file fails the batch with every problem and its 1-based line, sending nothing upstream", () =>
      Effect.gen(function*() {
        const openai = yield* client
        const sim = yield* Upstream
        const before = sim.stats.requests
        const lines = [
          chatLine("ok-1", "fine"),
          "this is not json",
          JSON.stringify({ method: "POST", url: "/v1/chat/completions", body: { model: "sim-model", messages: [] } }),
          JSON.stringify({ custom_id: "u", method: "POST", url: "/v1/embeddings", body: { model: "sim-model", messages: [] } }),
          chatLine("ok-1", "duplicate id"),
          JSON.stringify({ custom_id: "s", method: "POST", url: "/v1/chat/completions", body: { model: "sim-model", messages: [], stream: true } }),
          JSON.stringify({ custom_id: "m", method: "POST", url: "/v1/chat/completions", body: { messages: [] } }),
          JSON.stringify({ custom_id: "g", method: "GET", url: "/v1/chat/completions", body: { model: "sim-model", messages: [] } }),
          chatLine("other-model", "x", "another-model"),
          "",
          "[1,2]",
          JSON.stringify({ custom_id: "t", method: "POST", url: "/v1/chat/completions", body: { model: "sim-model", messages: [], stream: "true" } }),
          JSON.stringify({ custom_id: "f", method: "POST", url: "/v1/chat/completions", body: { model: "sim-model", messages: [], stream: false } })
        ]
        const file = yield* upload(openai, lines)
        const batch = yield* createBatch(openai, file.id)
        const done = yield* waitFor(openai, batch.id, terminal)
        expect(done.status).toBe("failed")
        expect(done.failed_at).toEqual(expect.any(Number))
        expect(done.errors!.object).toBe("list")
        expect(done.errors!.data!.map((e) => [e.code, e.line, e.param])).toEqual([
          ["invalid_json_line", 2, null],
          ["missing_required_parameter", 3, "custom_id"],
          ["invalid_url", 4, "url"],
          ["duplicate_custom_id", 5, "custom_id"],
          ["streaming_unsupported", 6, "body.stream"],
          ["invalid_request", 7, "body.model"],
          ["invalid_request", 8, "method"],
          ["model_mismatch", 9, "body.model"],
          ["invalid_json_line", 11, null],
          ["invalid_request", 12, "body.stream"] // a lenient upstream would read "true" as true
        ])
        for (const e of done.errors!.data!) expect(e.message).toEqual(expect.any(String))
        // What was compared, beside OpenAI's words.
        expect(done.errors!.data![2]!.message).toBe(
          "The URL provided for this request does not match the batch endpoint ('/v1/embeddings' here, '/v1/chat/completions' for the batch)."
        )
        expect(done.output_file_id).toBeNull()
        expect(done.error_file_id).toBeNull()
        expect(sim.stats.requests).toBe(before)
      }))

    it.effect("empty files, too many requests and unknown models fail validation", () =>
      Effect.gen(function*() {
        const openai = yield* client
        const sim = yield* Upstream
        const before = sim.stats.requests
        const run = (lines: ReadonlyArray<string>) =>
          Effect.gen(function*() {
            const file = yield* upload(openai, lines)
            const batch = yield* createBatch(openai, file.id)
            return yield* waitFor(openai, batch.id, terminal)
          })
        const empty = yield* run(["", "  "])
        expect(empty.errors!.data!.map((e) => e.code)).toEqual(["empty_file"])
        const tooMany = yield* run(Array.from({ length: 51 }, (_, i) => chatLine(`n${i}`, `p${i}`)))
        expect(tooMany.errors!.data!.map((e) => [e.code, e.line])).toEqual([["too_many_tasks", 51]])
        const unknown = yield* run([chatLine("a", "x", "no-such-model"), chatLine("b", "y", "no-such-model")])
        expect(unknown.errors!.data!.map((e) => [e.code, e.line, e.param])).toEqual([["model_not_found", 1, "body.model"]])
        expect(sim.stats.requests).toBe(before)
      }))

    it.effect("bad create parameters are synchronous 400/404s; idempotency keys return the same batch or a 409", () =>
      Effect.gen(function*() {
        const openai = yield* client
        const file = yield* upload(openai, [chatLine("a", "idem")])
        const bad = (params: any) => failure(() => openai.batches.create({ input_file_id: file.id, endpoint: "/v1/chat/completions", completion_window: "24h", ...params }))
        const endpoint = yield* bad({ endpoint: "/v1/invalid/endpoint" })
        expect(endpoint).toBeInstanceOf(OpenAI.BadRequestError)
        expect([endpoint.param, endpoint.code]).toEqual(["endpoint", "invalid_value"])
        expect(endpoint.message).toContain("Supported values are")
        expect((yield* bad({ completion_window: "48h" })).param).toBe("completion_window")
        const metadata = yield* bad({ metadata: { tags: ["a"] } })
        expect([metadata.param, metadata.code]).toEqual(["metadata.tags", "invalid_type"])
        expect((yield* bad({ metadata: Object.fromEntries(Array.from({ length: 17 }, (_, i) => [`k${i}`, "v"])) })).param).toBe("metadata")
        expect((yield* bad({ output_expires_after: { anchor: "created_at", seconds: 5 } })).param).toBe("output_expires_after.seconds")
        // An anchor of any length is named, cut short: the answer stays small.
        const anchor = yield* bad({ output_expires_after: { anchor: "x".repeat(100_000), seconds: 3600 } })
        expect([anchor.param, anchor.code]).toEqual(["output_expires_after.anchor", "invalid_value"])
        expect(anchor.message.length).toBeLessThan(400)
        // A misspelt parameter ignored would leave its wish undone (an output kept for ever): refused, named.
        const misspelt = yield* bad({ output_expire_after: { anchor: "created_at", seconds: 3600 } })
        expect([misspelt.status, misspelt.param, misspelt.code]).toEqual([400, "output_expire_after", "unknown_parameter"])
        expect(misspelt.error.message).toBe("Unknown parameter: 'output_expire_after'. Did you mean 'output_expires_after'?")
        expect((yield* bad({ completionWindow: "24h" })).param).toBe("completionWindow")
        // As OpenAI: an unknown input file is no 404 at create, the batch fails validation.
        const missing = yield* createBatch(openai, "file-nope")
        expect((yield* waitFor(openai, missing.id, terminal)).errors!.data![0]).toMatchObject({ code: "invalid_request", param: "input_file_id", line: null })
        const notBatch = yield* Effect.promise(async () => openai.files.create({ file: await toFile(Buffer.from("{}"), "x.jsonl"), purpose: "user_data" }))
        expect((yield* bad({ input_file_id: notBatch.id })).param).toBe("input_file_id")
        const noFile = yield* failure(() => openai.batches.create({ endpoint: "/v1/chat/completions", completion_window: "24h" } as any))
        expect([noFile.status, noFile.param, noFile.code]).toEqual([400, "input_file_id", "missing_required_parameter"])

        // A gateway's own parameter (LiteLLM's) is no misspelling of OpenAI's: let through.
        const foreign = yield* createBatch(openai, file.id, { custom_llm_provider: "openai" } as any)
        expect(foreign.status).toBe("validating")

        const params = { idempotency_key: "key-1", metadata: { a: "1" } } as any
        const first = yield* createBatch(openai, file.id, params)
        const again = yield* createBatch(openai, file.id, params)
        expect(again.id).toBe(first.id)
        const conflict = yield* failure(() => openai.batches.create({ input_file_id: file.id, endpoint: "/v1/chat/completions", completion_window: "24h", idempotency_key: "key-1", metadata: { a: "2" } } as any))
        expect(conflict.status).toBe(409)
        expect(conflict.param).toBe("idempotency_key")
        expect(conflict.headers.get("x-should-retry")).toBe("false")

        // Uploaded again (a script that uploads and creates as one step, run twice): the same bytes are the same
        // input, the batch made the first time is given; other bytes, even of the same size, are a 409.
        const sameAgain = yield* upload(openai, [chatLine("a", "idem")])
        expect((yield* createBatch(openai, sameAgain.id, params)).id).toBe(first.id)
        const otherBytes = yield* upload(openai, [chatLine("a", "mdei")])
        expect(otherBytes.bytes).toBe(file.bytes)
        const differs = yield* failure(() => openai.batches.create({ input_file_id: otherBytes.id, endpoint: "/v1/chat/completions", completion_window: "24h", ...params }))
        expect([differs.status, differs.param]).toEqual([409, "idempotency_key"])
        // … as is the same file with other parameters.
        const otherParams = yield* failure(() => openai.batches.create({ input_file_id: sameAgain.id, endpoint: "/v1/chat/completions", completion_window: "24h", idempotency_key: "key-1", metadata: { a: "2" } } as any))
        expect(otherParams.status).toBe(409)
        // Two such creates at once (a job and its retry): one batch.
        const [one, two] = [yield* upload(openai, [chatLine("b", "twice")]), yield* upload(openai, [chatLine("b", "twice")])]
        const keyed = { idempotency_key: "key-2" } as any
        const both = yield* Effect.all([createBatch(openai, one.id, keyed), createBatch(openai, two.id, keyed)], { concurrency: 2 })
        expect(both[1].id).toBe(both[0].id)
        // The first one's input file gone, the bytes cannot be compared: a 409 that says so.
        yield* Effect.promise(() => openai.files.delete(both[0].input_file_id))
        const three = yield* upload(openai, [chatLine("b", "twice")])
        const gone = yield* failure(() => openai.batches.create({ input_file_id: three.id, endpoint: "/v1/chat/completions", completion_window: "24h", ...keyed }))
        expect([gone.status, gone.param]).toEqual([409, "idempotency_key"])
        expect(gone.message).toContain(`batch ${both[0].id} from file ${both[0].input_file_id}, which can no longer be read`)
        // A new input file that cannot be read is this request's difference, not the first one's file gone.
        const unknown = yield* failure(() => openai.batches.create({ input_file_id: "file-nope", endpoint: "/v1/chat/completions", completion_window: "24h", idempotency_key: "key-1", metadata: { a: "1" } } as any))
        expect([unknown.status, unknown.message]).toEqual([409, "409 This idempotency_key was already used to create a batch with different parameters."])
      }))

    it.effect("retrieve and cancel of unknown batches are 404s; cancelling a finished batch is a 409; lists page newest first", () =>
      Effect.gen(function*() {
        const openai = yield* client
        expect((yield* failure(() => openai.batches.retrieve("batch_nope"))).status).toBe(404)
        expect((yield* failure(() => openai.batches.cancel("batch_nope"))).status).toBe(404)

        const file = yield* upload(openai, [chatLine("a", "quick")])
        const batch = yield* createBatch(openai, file.id)
        yield* waitFor(openai, batch.id, (b) => b.status === "completed")
        const finished = yield* failure(() => openai.batches.cancel(batch.id))
        expect(finished.status).toBe(409)
        expect(finished.message).toContain("Cannot cancel a batch with status 'completed'")
        // OpenAI's recorded 409: its code null.
        expect([finished.type, finished.param, finished.code]).toEqual(["invalid_request_error", null, null])

        const ids: Array<string> = []
        for (let i = 0; i < 3; i++) ids.push((yield* createBatch(openai, file.id)).id)
        const page = yield* Effect.promise(() => openai.batches.list({ limit: 2 }))
        expect(page.data.map((b) => b.id)).toEqual([ids[2], ids[1]])
        expect(page.has_more).toBe(true)
        const all: Array<string> = []
        yield* Effect.promise(async () => {
          for await (const b of openai.batches.list({ limit: 2 })) all.push(b.id)
        })
        expect(all.slice(0, 4)).toEqual([ids[2], ids[1], ids[0], batch.id])
        expect(new Set(all).size).toBe(all.length)
        for (const id of ids) yield* waitFor(openai, id, terminal)
      }))
  })

  layer(testAppWithUpstream({ ...fastRetries, maxRequestsPerBatch: 5000, maxConcurrentRequestsPerBatch: 16 }, {}, backend), { excludeTestServices: true })("large batches", (it) => {
    it.effect("a batch spanning several pages of stored rows sends each request upstream exactly once", () =>
      Effect.gen(function*() {
        const openai = yield* client
        const sim = yield* Upstream
        sim.reset()
        const count = 2500 // the runner reads pending rows 1,000 at a time
        const file = yield* upload(openai, Array.from({ length: count }, (_, i) => chatLine(`big-${i}`, `big ${i}`)))
        const done = yield* waitFor(openai, (yield* createBatch(openai, file.id)).id, terminal, 60_000)
        expect(done.request_counts).toEqual({ total: count, completed: count, failed: 0 })
        expect(sim.stats.requests).toBe(count)
        expect([...sim.stats.byPrompt.values()].every((n) => n === 1)).toBe(true)
        const output = yield* readLines(openai, done.output_file_id)
        expect(output.map((l) => l.custom_id)).toEqual(Array.from({ length: count }, (_, i) => `big-${i}`))
      }), 60_000)
  })

  describe("cancel and expiry", () => {
    layer(testAppWithUpstream({ ...fastRetries, maxConcurrentRequestsPerBatch: 4 }, {}, backend), { excludeTestServices: true })("cancel", (it) => {
      it.effect("cancel mid-run ends cancelled within 2 s, keeps finished results, aborts in-flight calls and sends no more", () =>
        Effect.gen(function*() {
          const openai = yield* client
          const sim = yield* Upstream
          const lines = [
            ...Array.from({ length: 6 }, (_, i) => chatLine(`fast-${i}`, `fast ${i}`)),
            ...Array.from({ length: 20 }, (_, i) => chatLine(`slow-${i}`, `slow ${i} [hang]`))
          ]
          const file = yield* upload(openai, lines)
          const batch = yield* createBatch(openai, file.id)
          const running = yield* waitFor(openai, batch.id, (b) => b.request_counts!.completed === 6)
          expect(running.status).toBe("in_progress")
          yield* eventually(() => expect(sim.stats.inFlight).toBe(4)) // four [hang] requests hold every slot

          const started = Date.now()
          const cancelling = yield* Effect.promise(() => openai.batches.cancel(batch.id))
          expect(["cancelling", "cancelled"]).toContain(cancelling.status)
          expect(cancelling.cancelling_at).toEqual(expect.any(Number))
          const done = yield* waitFor(openai, batch.id, terminal, 2000)
          expect(Date.now() - started).toBeLessThan(2000)
          expect(done.status).toBe("cancelled")
          expect(done.cancelled_at).toEqual(expect.any(Number))
          expect(done.request_counts).toEqual({ total: 26, completed: 6, failed: 20 })

          const output = yield* readLines(openai, done.output_file_id)
          expect(output.map((l) => l.custom_id)).toEqual(Array.from({ length: 6 }, (_, i) => `fast-${i}`))
          const errors = yield* readLines(openai, done.error_file_id)
          expect(errors.map((l) => l.custom_id)).toEqual(Array.from({ length: 20 }, (_, i) => `slow-${i}`))
          expect(new Set(errors.map((l) => l.error.code))).toEqual(new Set(["batch_cancelled"]))
          // Four of them were sent (their calls aborted): not completed, rather than "not executed".
          expect(new Set(errors.map((l) => l.error.message))).toEqual(new Set(["This request was not completed before the batch was cancelled."]))
          expect(errors.every((l) => l.response === null)).toBe(true)

          yield* Effect.promise(() => new Promise((r) => setTimeout(r, 100)))
          expect(sim.stats.aborted).toBe(4)
          expect(sim.stats.inFlight).toBe(0)
          const sent = sim.stats.requests
          yield* Effect.promise(() => new Promise((r) => setTimeout(r, 300)))
          expect(sim.stats.requests).toBe(sent)

          const again = yield* Effect.promise(() => openai.batches.cancel(batch.id))
          expect(again.status).toBe("cancelled")
        }))
    })

    layer(testAppWithUpstream({ ...fastRetries, completionWindow: Duration.seconds(2) }, {}, backend), { excludeTestServices: true })("expiry", (it) => {
      it.effect("past expires_at the batch is expired: finished results kept, the rest batch_expired", () =>
        Effect.gen(function*() {
          const openai = yield* client
          const lines = [
            ...Array.from({ length: 3 }, (_, i) => chatLine(`done-${i}`, `done ${i}`)),
            ...Array.from({ length: 5 }, (_, i) => chatLine(`late-${i}`, `late ${i} [hang]`))
          ]
          const file = yield* upload(openai, lines)
          const batch = yield* createBatch(openai, file.id)
          expect(batch.expires_at).toBe(batch.created_at + 2)
          const done = yield* waitFor(openai, batch.id, terminal, 6000)
          expect(done.status).toBe("expired")
          expect(done.expired_at).toEqual(expect.any(Number))
          expect(done.request_counts).toEqual({ total: 8, completed: 3, failed: 5 })
          expect((yield* readLines(openai, done.output_file_id)).map((l) => l.custom_id)).toEqual(["done-0", "done-1", "done-2"])
          const errors = yield* readLines(openai, done.error_file_id)
          expect(errors.map((l) => [l.custom_id, l.error.code])).toEqual(Array.from({ length: 5 }, (_, i) => [`late-${i}`, "batch_expired"]))
          expect(errors[0].error.message).toBe("This request could not be executed before the completion window expired.")
        }))
    })

    layer(testAppWithUpstream({ ...fastRetries, maxConcurrentBatches: 2, maxConcurrentRequestsPerBatch: 3 }, {}, backend), { excludeTestServices: true })("concurrency", (it) => {
      it.effect("the upstream never sees more than MAX_CONCURRENT_BATCHES × MAX_CONCURRENT_REQUESTS_PER_BATCH requests", () =>
        Effect.gen(function*() {
          const openai = yield* client
          const sim = yield* Upstream
          sim.reset()
          // Files first, then the batches back to back, each long enough (4 × 100 ms) that two overlap even on
          // a loaded machine: a batch could finish before the next upload ended.
          const files: Array<string> = []
          for (let b = 0; b < 4; b++) {
            files.push((yield* upload(openai, Array.from({ length: 12 }, (_, i) => chatLine(`b${b}-${i}`, `b${b} ${i} [sleep:100]`)))).id)
          }
          const ids: Array<string> = []
          for (const file of files) ids.push((yield* createBatch(openai, file)).id)
          for (const id of ids) expect((yield* waitFor(openai, id, terminal)).status).toBe("completed")
          expect(sim.stats.maxInFlight).toBeLessThanOrEqual(6)
          expect(sim.stats.maxInFlight).toBeGreaterThanOrEqual(4) // and the window is actually used
          expect(sim.stats.requests).toBe(48)
        }))
    })
  })
})
