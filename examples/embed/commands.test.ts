/**
 * An app that runs batches without HTTP: a file uploaded with `FileCommands`, a batch created and cancelled with
 * `BatchCommands` (the API's own checks and errors), watched and read with `BatchStore` and `FileStore`.
 */
import { describe, expect, layer } from "@effect/vitest"
import { Chunk, Effect, Layer, Logger, LogLevel, Option, Stream } from "effect"
import {
  AppConfig,
  BatchCommands,
  BatchStore,
  FileCommands,
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
  Layer.provideMerge(AppConfig.layerTest({ maxUploadBytes: 4096, maxFileBytesPerProject: Option.some(16_384) })),
  Layer.provide(Logger.minimumLogLevel(LogLevel.Warning))
)

/** Uploads `prompts` as a batch input file of the local caller's project. */
const inputFile = (prompts: ReadonlyArray<string>) =>
  Effect.flatMap(FileCommands, (files) => {
    const jsonl = prompts.map((prompt, i) =>
      JSON.stringify({
        custom_id: `line-${i}`,
        method: "POST",
        url: "/v1/chat/completions",
        body: { model: "fake-model", messages: [{ role: "user", content: prompt }] }
      }) + "\n"
    ).join("")
    return files.upload({ filename: "input.jsonl", purpose: "batch" }, Stream.make(new TextEncoder().encode(jsonl)), localCaller)
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
  layer(services, { excludeTestServices: true })("FileCommands", (it) => {
    it.effect("upload refuses what POST /v1/files refuses, with its errors, and stores nothing then", () =>
      Effect.gen(function*() {
        const files = yield* FileCommands
        const bytes = (n: number) => Stream.make(new Uint8Array(n).fill(10))
        const refusal = (request: Parameters<typeof files.upload>[0], n = 10) =>
          Effect.map(Effect.flip(files.upload(request, bytes(n), localCaller)), (e) => [e._tag, e.error.param, e.error.code])
        expect(yield* refusal({ filename: "input.txt", purpose: "batch" })).toEqual(["InvalidRequest", null, null])
        expect(yield* refusal({ filename: "input.jsonl", purpose: "nonsense" })).toEqual(["InvalidRequest", "purpose", "invalid_value"])
        expect(yield* refusal({ filename: "", purpose: "batch" })).toEqual(["InvalidRequest", "file", "invalid_value"])
        expect(yield* refusal({ filename: "a.jsonl", purpose: "batch", expires_after: { anchor: "created_at", seconds: 60 } }))
          .toEqual(["InvalidRequest", "expires_after.seconds", "invalid_value"])
        expect(yield* refusal({ filename: "big.jsonl", purpose: "batch" }, 5000)).toEqual(["PayloadTooLarge", "file", "file_too_large"])
        // The project's quota (16 KiB here), as uploads over HTTP count against it.
        const before = yield* Effect.flatMap(FileStore, (store) => store.projectBytes(localCaller.project))
        for (let i = 0; i < 4; i++) yield* files.upload({ filename: `part-${i}.txt`, purpose: "user_data" }, bytes(4000), localCaller)
        expect(yield* refusal({ filename: "more.txt", purpose: "user_data" }, 4000)).toEqual(["PayloadTooLarge", "file", "storage_quota_exceeded"])
        expect(yield* Effect.flatMap(FileStore, (store) => store.projectBytes(localCaller.project))).toBe(before + 16_000)
      }))
  })

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
