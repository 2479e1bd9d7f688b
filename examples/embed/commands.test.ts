/**
 * An app that runs batches without HTTP: a file stored with `FileStore`, a batch created and cancelled with
 * `BatchCommands` (the API's own checks and errors), watched and read with `BatchStore` and `FileStore`.
 */
import { describe, expect, layer } from "@effect/vitest"
import { Chunk, Effect, Layer, Logger, LogLevel, Stream } from "effect"
import {
  AppConfig,
  BatchCommands,
  BatchStore,
  FileStore,
  Ids,
  InferenceScripted,
  localCaller,
  makeServices,
  scriptedAnswer
} from "effect-openai-batch"

/** Echoes each prompt; a prompt "slow" is answered after 30 s (long enough to be cancelled first). */
const fakeUpstream = InferenceScripted(({ body }) => {
  const prompt: string = JSON.parse(body).messages.at(-1).content
  const answer = Effect.succeed(scriptedAnswer(200, {
    object: "chat.completion",
    choices: [{ index: 0, message: { role: "assistant", content: prompt } }],
    usage: { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 }
  }))
  return prompt === "slow" ? Effect.delay(answer, "30 seconds") : answer
}, ["fake-model"])

const services = makeServices({ inference: fakeUpstream }).pipe(
  Layer.provideMerge(AppConfig.layerTest()),
  Layer.provide(Logger.minimumLogLevel(LogLevel.Warning))
)

/** Stores `prompts` as a batch input file of the local caller's project. */
const inputFile = (prompts: ReadonlyArray<string>) =>
  Effect.flatMap(FileStore, (files) => {
    const jsonl = prompts.map((prompt, i) =>
      JSON.stringify({
        custom_id: `line-${i}`,
        method: "POST",
        url: "/v1/chat/completions",
        body: { model: "fake-model", messages: [{ role: "user", content: prompt }] }
      }) + "\n"
    ).join("")
    return files.create(
      { filename: "input.jsonl", purpose: "batch", project: localCaller.project },
      Stream.make(new TextEncoder().encode(jsonl))
    )
  })

/** The batch once `done` says so (polled every 20 ms). */
const waitUntil = (id: Ids.BatchId, done: (status: string) => boolean) =>
  Effect.flatMap(BatchStore, (store) =>
    store.get(id, "all").pipe(
      Effect.map((record) => record.batch),
      Effect.delay("20 millis"),
      Effect.repeat({ until: (batch) => done(batch.status) })
    ))

const text = (id: Ids.FileId) =>
  Effect.flatMap(FileStore, (files) =>
    Effect.flatMap(files.content(id, "all"), ({ stream }) =>
      Effect.map(Stream.runCollect(stream), (chunks) => Buffer.concat(Chunk.toReadonlyArray(chunks)).toString())))

describe("batches without HTTP", () => {
  layer(services, { excludeTestServices: true })("BatchCommands", (it) => {
    it.effect("create runs a batch to its output file; the API's refusals come as its errors", () =>
      Effect.gen(function*() {
        const commands = yield* BatchCommands
        const file = yield* inputFile(["hello", "world"])
        const created = yield* commands.create(
          { input_file_id: file.id, endpoint: "/v1/chat/completions", completion_window: "24h" },
          localCaller
        )
        expect(created.status).toBe("validating")
        const done = yield* waitUntil(created.id, (status) => status === "completed")
        expect(done.request_counts).toEqual({ total: 2, completed: 2, failed: 0 })
        const lines = (yield* text(Ids.FileId.make(done.output_file_id!))).trim().split("\n").map((line) => JSON.parse(line))
        expect(lines.map((l) => [l.custom_id, l.response.body.choices[0].message.content])).toEqual([
          ["line-0", "hello"],
          ["line-1", "world"]
        ])

        // As POST /v1/batches answers: a 400 naming the parameter, with OpenAI's error body.
        const refused = yield* Effect.flip(commands.create(
          { input_file_id: file.id, endpoint: "/v1/bogus", completion_window: "1h" },
          localCaller
        ))
        expect(refused._tag).toBe("InvalidRequest")
        expect(refused.error).toMatchObject({ type: "invalid_request_error", param: "endpoint" })
        // What the body's schema refuses too (over HTTP, before any handler): a NUL in a key the database would refuse.
        const nul = yield* Effect.flip(commands.create(
          { input_file_id: file.id, endpoint: "/v1/chat/completions", completion_window: "24h", idempotency_key: "a\u0000b" },
          localCaller
        ))
        expect([nul._tag, nul.error.param]).toEqual(["InvalidRequest", "idempotency_key"])
      }))

    it.effect("cancel stops a running batch at once; its finished lines are kept", () =>
      Effect.gen(function*() {
        const commands = yield* BatchCommands
        const file = yield* inputFile(["fast", "slow"])
        const created = yield* commands.create(
          { input_file_id: file.id, endpoint: "/v1/chat/completions", completion_window: "24h" },
          localCaller
        )
        yield* Effect.flatMap(BatchStore, (store) =>
          store.get(created.id, "all").pipe(
            Effect.delay("20 millis"),
            Effect.repeat({ until: (r) => r.batch.request_counts.completed === 1 })
          ))
        const cancelling = yield* commands.cancel(created.id, localCaller)
        expect(["cancelling", "cancelled"]).toContain(cancelling.status)
        const cancelled = yield* waitUntil(created.id, (status) => status === "cancelled")
        expect(cancelled.request_counts).toEqual({ total: 2, completed: 1, failed: 1 })
        const again = yield* commands.cancel(created.id, localCaller) // idempotent, as the API
        expect(again.status).toBe("cancelled")
        expect((yield* Effect.flip(commands.cancel(Ids.BatchId.make("batch_nope"), localCaller)))._tag).toBe("NotFound")
      }))
  })
})
