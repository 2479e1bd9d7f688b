/**
 * A test of an app that runs batches, against recorded upstream answers: no upstream, no network, no API key, the
 * same answers on every run. The answers are the files under `./recordings` (one per request, committed with
 * the test). To record them again, against a real upstream or the bundled simulator:
 *
 *   RECORD=1 INFERENCE_BASE_URL=http://127.0.0.1:8000/v1 npx vitest run replay
 *
 * (`INFERENCE_API_KEY` too if the upstream needs one: it is sent, never recorded; the rest of the configuration
 * comes from the environment as for the server). A prompt changed without recording again fails its line with
 * `replay_miss`, naming the recording it looked for.
 */
import { HttpServer } from "@effect/platform"
import { expect, layer } from "@effect/vitest"
import { Effect, Layer, Logger, LogLevel } from "effect"
import {
  AppConfig,
  appConfig,
  HttpLive,
  InferenceLive,
  InferenceRecord,
  InferenceReplay,
  makeNodeServer,
  makeServices
} from "effect-openai-batch"
import { mkdtempSync } from "node:fs"
import { tmpdir } from "node:os"
import * as Path from "node:path"
import { fileURLToPath } from "node:url"
import OpenAI from "openai"

const recordings = fileURLToPath(new URL("./recordings", import.meta.url))
const recording = process.env.RECORD === "1"

/** Replay by default; when recording, the upstream of the environment (`INFERENCE_BASE_URL`…), recorded. */
const inference = recording ? InferenceRecord(recordings).pipe(Layer.provide(InferenceLive)) : InferenceReplay(recordings)
const config = recording
  ? Layer.effect(AppConfig, Effect.map(appConfig, (fromEnv) => ({ ...fromEnv, dataDir: mkdtempSync(Path.join(tmpdir(), "replay-example-")) })))
  : AppConfig.layerTest()

const app = HttpLive.pipe(
  Layer.provide(makeServices({ inference })),
  Layer.provideMerge(makeNodeServer({ host: "127.0.0.1", port: 0, shutdownTimeout: "1 second" })),
  Layer.provide(config),
  Layer.provide(Logger.minimumLogLevel(LogLevel.Warning))
)

const client = Effect.map(HttpServer.HttpServer, (server) =>
  new OpenAI({ baseURL: `${HttpServer.formatAddress(server.address)}/v1`, apiKey: "unused", maxRetries: 0 }))

/** Runs one chat batch of `prompts`; the batch, and its output and error lines parsed. */
const runBatch = (prompts: ReadonlyArray<string>) =>
  Effect.flatMap(client, (openai) =>
    Effect.promise(async () => {
      const lines = prompts.map((prompt, i) =>
        JSON.stringify({
          custom_id: `line-${i}`,
          method: "POST",
          url: "/v1/chat/completions",
          body: { model: "sim-model", messages: [{ role: "user", content: prompt }], max_tokens: 32 }
        })
      )
      const file = await openai.files.create({ file: new File([lines.join("\n")], "input.jsonl"), purpose: "batch" })
      let batch = await openai.batches.create({ input_file_id: file.id, endpoint: "/v1/chat/completions", completion_window: "24h" })
      while (!["completed", "failed", "expired", "cancelled"].includes(batch.status)) {
        await new Promise((resolve) => setTimeout(resolve, 20))
        batch = await openai.batches.retrieve(batch.id)
      }
      const read = async (id: string | null | undefined) =>
        id ? (await (await openai.files.content(id)).text()).trim().split("\n").map((line) => JSON.parse(line)) : []
      return { batch, output: await read(batch.output_file_id), errors: await read(batch.error_file_id) }
    }))

const prompts = ["Name a prime number.", "Say hello in French.", "What is 2 + 2?"]

layer(app, { excludeTestServices: true })("a batch against recorded answers", (it) => {
  it.effect("every line is answered from its recording", () =>
    Effect.gen(function*() {
      const { batch, output } = yield* runBatch(prompts)
      expect(batch.request_counts).toEqual({ total: 3, completed: 3, failed: 0 })
      const answers = output.map((line) => line.response.body.choices[0].message.content)
      // Recorded from the bundled simulator, which echoes: a real model's answers are just as fixed once recorded.
      if (!recording) expect(answers).toEqual(prompts.map((prompt) => `echo: ${prompt}`))
    }))

  it.effect.skipIf(recording)("a prompt that was never recorded fails its line with replay_miss", () =>
    Effect.gen(function*() {
      const { batch, errors } = yield* runBatch([...prompts, "A prompt added later."])
      expect(batch.request_counts).toEqual({ total: 4, completed: 3, failed: 1 })
      expect(errors).toHaveLength(1)
      expect(errors[0]).toMatchObject({ custom_id: "line-3", error: { code: "replay_miss" } })
      expect(errors[0].error.message).toContain("/v1/chat/completions, model sim-model")
    }))
})
