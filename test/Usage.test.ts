/**
 * The Batch object's `usage` as OpenAI reports it, whatever each endpoint's answers call their tokens: chat and
 * completions (`prompt_tokens`, `completion_tokens`, `*_details`), responses (`input_tokens`, `output_tokens`,
 * `*_details`), embeddings (`prompt_tokens` only); failed lines count nothing. On both backends (the sums are kept
 * by the database). The same sums after a crash and resume: test/BatchResume.test.ts.
 */
import { describe, expect, layer } from "@effect/vitest"
import { Effect } from "effect"
import type OpenAI from "openai"
import { createBatch, readLines, sdk, terminal, upload, waitFor } from "./support/Batches.js"
import { backends, baseUrl, testAppWithUpstream } from "./support/TestApp.js"

const client = Effect.map(baseUrl, sdk)

type Endpoint = "/v1/chat/completions" | "/v1/completions" | "/v1/responses" | "/v1/embeddings"

const bodyFor = (endpoint: Endpoint, prompt: string) => {
  switch (endpoint) {
    case "/v1/chat/completions":
      return { model: "sim-model", messages: [{ role: "user", content: prompt }] }
    case "/v1/completions":
      return { model: "sim-model", prompt }
    default:
      return { model: "sim-model", input: prompt }
  }
}

/** Runs `prompts` as one batch on `endpoint`; the finished batch and its output lines. */
const runBatch = (openai: OpenAI, endpoint: Endpoint, prompts: ReadonlyArray<string>) =>
  Effect.gen(function*() {
    const lines = prompts.map((prompt, i) =>
      JSON.stringify({ custom_id: `u-${i}`, method: "POST", url: endpoint, body: bodyFor(endpoint, prompt) })
    )
    const file = yield* upload(openai, lines)
    const done = yield* waitFor(openai, (yield* createBatch(openai, file.id, { endpoint })).id, terminal)
    expect(done.status).toBe("completed")
    return { done, output: yield* readLines(openai, done.output_file_id) }
  })

const total = (values: ReadonlyArray<number>) => values.reduce((a, b) => a + b, 0)

for (const backend of backends) describe(`usage (${backend})`, () => {
  layer(testAppWithUpstream({}, {}, backend), { excludeTestServices: true })("summed from the answers", (it) => {
    it.effect("chat and completions: prompt/completion tokens with their cached and reasoning details; failures count nothing", () =>
      Effect.gen(function*() {
        const openai = yield* client
        const prompts = ["a [cached:3] [reasoning:5]", "bb [cached:7]", "ccc [reasoning:11]", "lost [fail:400]", "plain"]
        const { done, output } = yield* runBatch(openai, "/v1/chat/completions", prompts)
        expect(done.request_counts).toEqual({ total: 5, completed: 4, failed: 1 })
        const usage = output.map((l) => l.response.body.usage)
        expect(done.usage).toEqual({
          input_tokens: total(usage.map((u) => u.prompt_tokens)),
          input_tokens_details: { cached_tokens: 10 },
          output_tokens: total(usage.map((u) => u.completion_tokens)),
          output_tokens_details: { reasoning_tokens: 16 },
          total_tokens: total(usage.map((u) => u.total_tokens))
        })
        const completions = yield* runBatch(openai, "/v1/completions", ["one", "two two"])
        const cu = completions.output.map((l) => l.response.body.usage)
        expect(completions.done.usage).toEqual({
          input_tokens: total(cu.map((u) => u.prompt_tokens)),
          input_tokens_details: { cached_tokens: 0 },
          output_tokens: total(cu.map((u) => u.completion_tokens)),
          output_tokens_details: { reasoning_tokens: 0 },
          total_tokens: total(cu.map((u) => u.total_tokens))
        })
      }))

    it.effect("responses: input/output tokens with their details, as named by the responses API", () =>
      Effect.gen(function*() {
        const openai = yield* client
        const { done, output } = yield* runBatch(openai, "/v1/responses", ["x [cached:2] [reasoning:9]", "y [cached:4] [reasoning:1]"])
        const usage = output.map((l) => l.response.body.usage)
        expect(usage[0]).toHaveProperty("input_tokens_details.cached_tokens", 2) // the responses API's own names
        expect(done.usage).toEqual({
          input_tokens: total(usage.map((u) => u.input_tokens)),
          input_tokens_details: { cached_tokens: 6 },
          output_tokens: total(usage.map((u) => u.output_tokens)),
          output_tokens_details: { reasoning_tokens: 10 },
          total_tokens: total(usage.map((u) => u.total_tokens))
        })
      }))

    it.effect("embeddings: prompt tokens only, as input and total", () =>
      Effect.gen(function*() {
        const openai = yield* client
        const { done, output } = yield* runBatch(openai, "/v1/embeddings", ["first text", "second, longer text"])
        const inputs = total(output.map((l) => l.response.body.usage.prompt_tokens))
        expect(inputs).toBeGreaterThan(0)
        expect(done.usage).toEqual({
          input_tokens: inputs,
          input_tokens_details: { cached_tokens: 0 },
          output_tokens: 0,
          output_tokens_details: { reasoning_tokens: 0 },
          total_tokens: inputs
        })
      }))

    it.effect("an upstream's absurd counts (10^20 tokens a line) count nothing, and never keep a batch's outcomes from being stored", () =>
      Effect.gen(function*() {
        const openai = yield* client
        // 1,100 such lines summed overflowed PostgreSQL's BIGINT in the batch's totals (each read as 2^53 - 1).
        const prompts = Array.from({ length: 1_100 }, (_, i) => `line ${i} [cached:100000000000000000000] [reasoning:100000000000000000000]`)
        const { done, output } = yield* runBatch(openai, "/v1/chat/completions", prompts)
        expect(output[0].response.body.usage.prompt_tokens_details.cached_tokens).toBe(1e20)
        expect(done.request_counts).toEqual({ total: 1_100, completed: 1_100, failed: 0 })
        expect(done.usage?.input_tokens_details).toEqual({ cached_tokens: 0 })
        expect(done.usage?.output_tokens_details).toEqual({ reasoning_tokens: 0 })
        expect(done.usage?.input_tokens).toBe(total(output.map((l) => l.response.body.usage.prompt_tokens)))
      }))
  })
})
