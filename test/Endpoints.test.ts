/**
 * Every endpoint a batch may target, through the official `openai` client: OpenAI's moderations and image
 * generations, and paths allowlisted by `EXTRA_BATCH_ENDPOINTS` (vLLM's rerank), whose bodies are passed through
 * byte for byte; each endpoint's required body fields checked with line numbers.
 */
import { describe, expect, layer } from "@effect/vitest"
import { Effect } from "effect"
import type OpenAI from "openai"
import { createBatch, failure, readLines, sdk, terminal, upload, waitFor } from "./support/Batches.js"
import { baseUrl, testAppWithUpstream, Upstream } from "./support/TestApp.js"

const client = Effect.map(baseUrl, sdk)

/** An input line for `url` with `body` (an object, or JSON text written by hand to be passed through as it is). */
const line = (customId: string, url: string, body: object | string) =>
  `{"custom_id":${JSON.stringify(customId)},"method":"POST","url":${JSON.stringify(url)},"body":${typeof body === "string" ? body : JSON.stringify(body)}}`

const run = (openai: OpenAI, lines: ReadonlyArray<string>, endpoint: string) =>
  Effect.gen(function*() {
    const file = yield* upload(openai, lines)
    const created = yield* createBatch(openai, file.id, { endpoint: endpoint as OpenAI.BatchCreateParams["endpoint"] })
    expect(created.endpoint).toBe(endpoint)
    return yield* waitFor(openai, created.id, terminal)
  })

describe("batch endpoints", () => {
  layer(testAppWithUpstream({ extraBatchEndpoints: ["/v1/rerank", "/v1/score"] }, { keepBodies: true }), {
    excludeTestServices: true
  })("through the openai client", (it) => {
    it.effect("a moderations batch completes, with or without a model (the batch's model then stays null)", () =>
      Effect.gen(function*() {
        const openai = yield* client
        const done = yield* run(openai, [
          line("m-1", "/v1/moderations", { input: "hello" }),
          line("m-2", "/v1/moderations", { input: ["one", "two"] })
        ], "/v1/moderations")
        expect(done).toMatchObject({ status: "completed", model: null, request_counts: { total: 2, completed: 2, failed: 0 } })
        const output = yield* readLines(openai, done.output_file_id)
        expect(output.map((l) => [l.custom_id, l.response.status_code, l.response.body.results.length])).toEqual([
          ["m-1", 200, 1],
          ["m-2", 200, 2]
        ])
        expect(output[0].response.body.results[0]).toMatchObject({ flagged: false, categories: { violence: false } })

        const named = yield* run(openai, [line("m-3", "/v1/moderations", { model: "sim-model", input: "hi" })], "/v1/moderations")
        expect(named).toMatchObject({ status: "completed", model: "sim-model" })
      }))

    it.effect("an image generations batch completes, its usage summed from the images' answers", () =>
      Effect.gen(function*() {
        const openai = yield* client
        const done = yield* run(openai, [
          line("i-1", "/v1/images/generations", { model: "sim-model", prompt: "a red square" }),
          line("i-2", "/v1/images/generations", { model: "sim-model", prompt: "two blue circles", n: 2 })
        ], "/v1/images/generations")
        expect(done).toMatchObject({ status: "completed", model: "sim-model", request_counts: { completed: 2, failed: 0 } })
        const output = yield* readLines(openai, done.output_file_id)
        expect(output.map((l) => l.response.body.data.length)).toEqual([1, 2])
        expect(output[0].response.body.data[0].b64_json).toMatch(/^iVBOR/)
        const usages = output.map((l) => l.response.body.usage)
        expect(done.usage).toEqual({
          input_tokens: usages[0].input_tokens + usages[1].input_tokens,
          input_tokens_details: { cached_tokens: 0 },
          output_tokens: 272 + 544,
          output_tokens_details: { reasoning_tokens: 0 },
          total_tokens: usages[0].total_tokens + usages[1].total_tokens
        })
      }))

    it.effect("an allowlisted /v1/rerank batch passes each body to the upstream unchanged", () =>
      Effect.gen(function*() {
        const openai = yield* client
        const sim = yield* Upstream
        // Odd spacing, key order, a number beyond 2^53 and escapes: what parsing and printing again would change.
        const bodies = [
          `{ "query" : "capital of France?", "model":"sim-model", "documents": ["Paris", "Lyon"], "top_n": 2 }`,
          `{"model":"sim-model","query":"caf\\u00e9 \\"x\\"","documents":["a"],"seed":123456789012345678901234567890,"x":1.50}`
        ]
        const done = yield* run(openai, bodies.map((b, i) => line(`r-${i}`, "/v1/rerank", b)), "/v1/rerank")
        expect(done).toMatchObject({ status: "completed", model: "sim-model", request_counts: { completed: 2, failed: 0 } })
        const received = sim.stats.bodies.filter((b) => b.path === "/v1/rerank").map((b) => b.body)
        expect(received.sort()).toEqual([...bodies].sort())
        const output = yield* readLines(openai, done.output_file_id)
        expect(output[0].response.body.results.map((r: any) => r.document.text)).toEqual(["Paris", "Lyon"])
      }))

    it.effect("a path not allowlisted is refused at create, naming every endpoint accepted", () =>
      Effect.gen(function*() {
        const openai = yield* client
        const file = yield* upload(openai, [line("c-1", "/v1/classify", { model: "sim-model", input: "x" })])
        const error = yield* failure(() => openai.batches.create({ input_file_id: file.id, endpoint: "/v1/classify" as any, completion_window: "24h" }))
        expect(error.status).toBe(400)
        expect(error.error).toMatchObject({ type: "invalid_request_error", param: "endpoint", code: "invalid_value" })
        expect(error.error.message).toBe(
          "Invalid value: '/v1/classify'. Supported values are: '/v1/chat/completions', '/v1/completions', " +
            "'/v1/embeddings', '/v1/responses', '/v1/moderations', '/v1/images/generations', '/v1/rerank', '/v1/score' " +
            "(the server's EXTRA_BATCH_ENDPOINTS adds others)."
        )
      }))

    it.effect("each endpoint's required body fields are checked, with line numbers", () =>
      Effect.gen(function*() {
        const openai = yield* client
        const problems = (b: OpenAI.Batch) => b.errors!.data!.map((e) => [e.line, e.code, e.param])
        const moderations = yield* run(openai, [
          line("m-1", "/v1/moderations", { input: "fine" }),
          line("m-2", "/v1/moderations", { model: "sim-model" }),
          line("m-3", "/v1/moderations", { input: "x", model: 42 }),
          line("m-4", "/v1/moderations", { input: "x", model: null })
        ], "/v1/moderations")
        expect(moderations.status).toBe("failed")
        // Line 2 names a model where line 1 names none: a mismatch too, listed with its own problem.
        expect(problems(moderations)).toEqual([
          [2, "invalid_request", "body.input"],
          [2, "model_mismatch", "body.model"],
          [3, "invalid_request", "body.model"],
          [4, "invalid_request", "body.model"]
        ])

        const images = yield* run(openai, [
          line("i-1", "/v1/images/generations", { model: "sim-model" }),
          line("i-2", "/v1/images/generations", { prompt: "no model" }),
          line("i-3", "/v1/images/generations", { model: "sim-model", prompt: ["not", "a", "string"] })
        ], "/v1/images/generations")
        expect(problems(images)).toEqual([
          [1, "invalid_request", "body.prompt"],
          [2, "invalid_request", "body.model"],
          [3, "invalid_request", "body.prompt"]
        ])

        const rerank = yield* run(openai, [
          line("r-1", "/v1/rerank", { query: "q", documents: ["a"] }),
          line("r-2", "/v1/score", { model: "sim-model", text_1: "a", text_2: "b" })
        ], "/v1/rerank")
        expect(problems(rerank)).toEqual([[1, "invalid_request", "body.model"], [2, "invalid_url", "url"]])
      }))
  })
})
