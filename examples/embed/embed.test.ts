/**
 * An app that embeds the batch service in its own test: the whole HTTP API on a test server, with the upstream
 * replaced through the public entry by a scripted one (no network, no GPU), driven by the official `openai` client.
 */
import { HttpServer } from "@effect/platform"
import { describe, expect, it, layer } from "@effect/vitest"
import { Effect, Layer, Logger, LogLevel, Option, Redacted } from "effect"
import { AppConfig, HttpLive, InferenceScripted, makeNodeServer, makeServices, scriptedAnswer } from "effect-openai-batch"
import OpenAI from "openai"

/** Answers every chat request with the reversed prompt; the model list makes other models fail validation. */
const fakeUpstream = InferenceScripted(({ body }) => {
  const prompt: string = JSON.parse(body).messages.at(-1).content
  return Effect.succeed(scriptedAnswer(200, {
    object: "chat.completion",
    choices: [{ index: 0, message: { role: "assistant", content: [...prompt].reverse().join("") } }],
    usage: { prompt_tokens: 3, completion_tokens: 5, total_tokens: 8 }
  }))
}, ["fake-model"])

// A server of the service's own on a free loopback port: its address is one the server answers for (without keys,
// loopback names only), and it closes the client's keep-alive connections at teardown instead of waiting for them.
const app = HttpLive.pipe(
  Layer.provide(makeServices({ inference: fakeUpstream })),
  Layer.provideMerge(makeNodeServer({ host: "127.0.0.1", port: 0, shutdownTimeout: "1 second" })),
  Layer.provide(AppConfig.layerTest()),
  Layer.provide(Logger.minimumLogLevel(LogLevel.Warning))
)

const client = Effect.map(HttpServer.HttpServer, (server) =>
  new OpenAI({ baseURL: `${HttpServer.formatAddress(server.address)}/v1`, apiKey: "unused", maxRetries: 0 }))

layer(app, { excludeTestServices: true })("an embedded batch service", (it) => {
  it.effect("runs a batch against the scripted upstream", () =>
    Effect.gen(function*() {
      const openai = yield* client
      const lines = ["hello", "world"].map((prompt, i) =>
        JSON.stringify({
          custom_id: `line-${i}`,
          method: "POST",
          url: "/v1/chat/completions",
          body: { model: "fake-model", messages: [{ role: "user", content: prompt }] }
        })
      )
      const done = yield* Effect.promise(async () => {
        const file = await openai.files.create({ file: new File([lines.join("\n")], "input.jsonl"), purpose: "batch" })
        let batch = await openai.batches.create({
          input_file_id: file.id,
          endpoint: "/v1/chat/completions",
          completion_window: "24h"
        })
        while (!["completed", "failed", "expired", "cancelled"].includes(batch.status)) {
          await new Promise((resolve) => setTimeout(resolve, 20))
          batch = await openai.batches.retrieve(batch.id)
        }
        return batch
      })
      expect(done.status).toBe("completed")
      expect(done.request_counts).toEqual({ total: 2, completed: 2, failed: 0 })
      expect(done.usage?.total_tokens).toBe(16)
      const output = yield* Effect.promise(async () => (await openai.files.content(done.output_file_id!)).text())
      const answers = output.trim().split("\n").map((line) => JSON.parse(line).response.body.choices[0].message.content)
      expect(answers).toEqual(["olleh", "dlrow"])
    }))
})

describe("an embedded batch service that cannot start", () => {
  it.effect("fails with an error of its type, which the app can catch by its tag", () =>
    Effect.gen(function*() {
      // A PostgreSQL nobody listens for: the database cannot be reached.
      const services = makeServices({ inference: fakeUpstream }).pipe(
        Layer.provide(AppConfig.layerWith({ databaseUrl: Option.some(Redacted.make("postgres://127.0.0.1:1/none")) })),
        Layer.provide(Logger.minimumLogLevel(LogLevel.None))
      )
      const started = yield* Layer.build(services).pipe(
        Effect.as("started"),
        Effect.catchTag("SqlError", (error) => Effect.succeed(`SqlError: ${error.message}`)),
        Effect.scoped
      )
      expect(started).toMatch(/^SqlError: /)
    }))
})
