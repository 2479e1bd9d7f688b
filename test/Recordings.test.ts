/**
 * Record and replay (`inference/Recordings.ts`): keys, the recording files, replay without any network, and the
 * done-when of the feature: a 200-line batch recorded against the simulator, replayed with the simulator gone,
 * gives the same output file byte for byte (but the generated line ids); a changed line, exactly one `replay_miss`.
 */
import { describe, expect, it } from "@effect/vitest"
import { ConfigError, Effect, Exit, Layer, Logger, LogLevel, Option, Redacted } from "effect"
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs"
import * as Path from "node:path"
import { AppConfig, type AppConfigShape } from "../src/Config.js"
import { HttpLive } from "../src/http/Http.js"
import { Inference, InferenceLive, InferenceScripted } from "../src/inference/Inference.js"
import { recordingKey, recordingPath, recordingText } from "../src/inference/recordingFormat.js"
import { InferenceFromConfig, InferenceRecord, InferenceReplay } from "../src/inference/Recordings.js"
import { makeServices } from "../src/Layers.js"
import { BIGNUM_COMPACT, startSimulator } from "../scripts/simulator.js"
import { chatLine, createBatch, sdk, terminal, upload, waitFor } from "./support/Batches.js"
import { baseUrl, configFor, scratchDir, TestDatabase, TestDataDir, TestHttpServer } from "./support/TestApp.js"

const CHAT = "/v1/chat/completions"
const chatBody = (prompt: string, model = "sim-model") => JSON.stringify({ model, messages: [{ role: "user", content: prompt }] })

/** The simulator on a random port while the scope lives. */
const simulator = Effect.acquireRelease(Effect.promise(() => startSimulator()), (sim) => Effect.promise(() => sim.close()))

/** Every file under `dir`, recursively, with its text. */
const filesUnder = (dir: string): Array<{ path: string; text: string }> =>
  readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((entry) => entry.isFile())
    .map((entry) => {
      const path = Path.join(entry.parentPath, entry.name)
      return { path, text: readFileSync(path, "utf8") }
    })

/** Sends `body` as the batch runner does: with the batch's model, which picks the upstream. */
/** One request, sent without a hand-back (`HandedBack` cannot happen). */
const send = (endpoint: string, body: string) =>
  Effect.flatMap(Inference, (inference) => inference.send(endpoint, body, { model: recordingKey(endpoint, body).model })).pipe(
    Effect.catchTag("HandedBack", Effect.die)
  )

describe("recording keys", () => {
  it("the same body in another key order or spacing has the same key; the endpoint and model are part of it", () => {
    const key = recordingKey(CHAT, `{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0}`)
    const same = recordingKey(CHAT, `{ "temperature": 0,\n  "messages": [ { "content": "hi", "role": "user" } ], "model": "m" }`)
    expect(same).toEqual(key)
    expect(key).toEqual({ endpoint: CHAT, model: "m", hash: expect.stringMatching(/^[0-9a-f]{64}$/) })
    expect(recordingKey("/v1/completions", `{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0}`).hash)
      .not.toBe(key.hash)
    expect(recordingKey(CHAT, `{"model":"n","messages":[{"role":"user","content":"hi"}],"temperature":0}`).hash).not.toBe(key.hash)
    expect(recordingKey(CHAT, `{"model":"m","messages":[{"role":"user","content":"hi "}],"temperature":0}`).hash).not.toBe(key.hash)
    expect(recordingKey(CHAT, `{"messages":[]}`).model).toBeNull()
    expect(recordingKey(CHAT, `{"model":7}`).model).toBeNull()
  })

  it("a recording's path: one folder per endpoint, the hash as the name, never outside the directory", () => {
    const key = recordingKey(CHAT, chatBody("hi", "meta-llama/Llama-3.1-8B-Instruct"))
    expect(recordingPath("recs", key)).toBe(`recs/chat_completions/${key.hash}.json`)
    expect(recordingPath("recs", recordingKey("/v1/images/generations", "{}"))).toMatch(/^recs\/images_generations\/[0-9a-f]{64}\.json$/)
    expect(Path.dirname(recordingPath("recs", recordingKey("/v1/../../etc", "{}")))).toBe("recs/_etc")
  })

  it("a recording's text is deterministic, in a fixed key order, its request sorted, its answer as it came", () => {
    const body = `{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":5}`
    const response = { status: 200, text: `{"id":"x","object":"chat.completion","choices":[]}`, json: {}, requestId: "req_1" }
    const text = recordingText(recordingKey(CHAT, body), body, response)
    expect(recordingText(recordingKey(CHAT, body), body, response)).toBe(text)
    expect(text).toBe([
      `{`,
      `  "endpoint": "/v1/chat/completions",`,
      `  "model": "m",`,
      `  "request": {`,
      `    "max_tokens": 5,`,
      `    "messages": [`,
      `      {`,
      `        "content": "hi",`,
      `        "role": "user"`,
      `      }`,
      `    ],`,
      `    "model": "m"`,
      `  },`,
      `  "status": 200,`,
      `  "request_id": "req_1",`,
      `  "body": {`,
      `    "id": "x",`,
      `    "object": "chat.completion",`,
      `    "choices": []`,
      `  }`,
      `}`,
      ``
    ].join("\n"))
    // An answer JSON.stringify would not write back as it came is kept verbatim.
    const bignum = { ...response, text: `{${BIGNUM_COMPACT},"id":"x"}` }
    expect(JSON.parse(recordingText(recordingKey(CHAT, body), body, bignum)).body_text).toBe(bignum.text)
  })
})

describe("record then replay", () => {
  it.live("replay gives the recorded status, text and request id, byte for byte; the files hold no key", () =>
    Effect.gen(function*() {
      const dir = yield* scratchDir
      const sim = yield* simulator
      const live = InferenceLive.pipe(Layer.provide(AppConfig.layerWith({
        inferenceBaseUrl: sim.url,
        inferenceApiKey: Option.some(Redacted.make("sk-never-in-a-recording")),
        inferenceMaxAttempts: 1
      })))
      const prompts = ["plain", "pretty [pretty]", "big numbers [bignum]", "refused [fail:400]", "server [fail:500]"]
      const recorded = yield* Effect.forEach(prompts, (p) => send(CHAT, chatBody(p))).pipe(
        Effect.provide(InferenceRecord(dir).pipe(Layer.provide(live)))
      )
      expect(recorded.map((r) => r.status)).toEqual([200, 200, 200, 400, 500])
      expect(recorded[2]!.text).toMatch(/"big": \[123456789012345678901234567890, 1\.50,/) // as the upstream wrote it
      // Not an answer: not recorded.
      const html = yield* Effect.flip(send(CHAT, chatBody("portal [html]"))).pipe(
        Effect.provide(InferenceRecord(dir).pipe(Layer.provide(live)))
      )
      expect(html.code).toBe("invalid_upstream_response")

      const files = filesUnder(dir)
      expect(files.map((f) => Path.relative(dir, f.path)).every((p) => /^chat_completions\/[0-9a-f]{64}\.json$/.test(p))).toBe(true)
      expect(files).toHaveLength(prompts.length)
      for (const { text } of files) {
        expect(text).not.toMatch(/sk-never|authorization|bearer/i)
        expect(text.endsWith("}\n")).toBe(true)
      }

      yield* Effect.promise(() => sim.close())
      const replay = InferenceReplay(dir)
      // The same requests, written with other spacing and key order.
      const respaced = prompts.map((p) => JSON.stringify({ messages: [{ content: p, role: "user" }], model: "sim-model" }, null, 1))
      const replayed = yield* Effect.forEach(respaced, (body) => send(CHAT, body)).pipe(Effect.provide(replay))
      expect(replayed).toEqual(recorded)
      const miss = yield* Effect.flip(send(CHAT, chatBody("portal [html]"))).pipe(Effect.provide(replay))
      expect(miss.code).toBe("replay_miss")
      const models = yield* Effect.flatMap(Inference, (i) => i.models).pipe(Effect.provide(replay))
      expect(models).toEqual({ data: [{ id: "sim-model", ownedBy: "recordings" }], complete: false })
    }).pipe(Effect.scoped))

  it.live("a recording that cannot be written keeps the answer and logs a warning", () =>
    Effect.gen(function*() {
      const dir = yield* scratchDir
      const sim = yield* simulator
      writeFileSync(Path.join(dir, "chat_completions"), "a file where the endpoint's folder would be")
      const logs: Array<string> = []
      const logger = Logger.make(({ logLevel, message }) => logs.push(`${logLevel.label} ${String(message)}`))
      const layer = InferenceRecord(dir).pipe(
        Layer.provide(InferenceLive),
        Layer.provide(AppConfig.layerWith({ inferenceBaseUrl: sim.url }))
      )
      const answers = yield* Effect.forEach(["one", "two"], (p) => send(CHAT, chatBody(p))).pipe(
        Effect.provide(layer),
        Effect.provide(Logger.replace(Logger.defaultLogger, logger))
      )
      expect(answers.map((a) => a.status)).toEqual([200, 200])
      const warnings = logs.filter((l) => l.startsWith("WARN"))
      expect(warnings).toHaveLength(2) // the first failure, then the count when the layer closes
      expect(warnings[0]).toContain("Could not record an answer")
      expect(warnings[1]).toContain("2 answers could not be recorded")
    }).pipe(Effect.scoped))
})

describe("replay without a network", () => {
  it.effect("a missing recording fails with replay_miss naming its key and file; nothing else is in context", () =>
    Effect.gen(function*() {
      const dir = yield* scratchDir
      const body = chatBody("never recorded", "org/model")
      const key = recordingKey(CHAT, body)
      // InferenceReplay needs nothing: no Inference, no HttpClient, no configuration to reach an upstream with.
      const replay: Layer.Layer<Inference, ConfigError.ConfigError, never> = InferenceReplay(dir)
      const failure = yield* Effect.flip(send(CHAT, body)).pipe(Effect.provide(replay))
      expect(failure.code).toBe("replay_miss")
      expect(failure.message).toContain(CHAT)
      expect(failure.message).toContain("org/model")
      expect(failure.message).toContain(key.hash)
      // The file within the recordings directory, not the server's own path (the line goes to a project's error file).
      expect(failure.message).toContain(`(looked for ${recordingPath("", key)} in INFERENCE_RECORDINGS)`)
      expect(failure.message).not.toContain(dir)
      const inference = yield* Effect.provide(Inference, replay)
      expect(yield* inference.models).toEqual({ data: [], complete: false })
    }).pipe(Effect.scoped))

  it.effect("a broken recording fails its line; a missing or unwritable directory fails the start", () =>
    Effect.gen(function*() {
      const dir = yield* scratchDir
      const body = chatBody("hi")
      const path = recordingPath(dir, recordingKey(CHAT, body))
      mkdirSync(Path.dirname(path))
      writeFileSync(path, "<<<<<<< HEAD\n")
      const broken = yield* Effect.flip(send(CHAT, body)).pipe(Effect.provide(InferenceReplay(dir)))
      expect(broken.code).toBe("invalid_upstream_response")
      expect(broken.message).toContain(recordingPath("recordings", recordingKey(CHAT, body)))
      expect(broken.message).not.toContain(dir)
      // One that cannot be read (a directory in its place): the system's error code, not its message with the path.
      const other = chatBody("unreadable")
      mkdirSync(recordingPath(dir, recordingKey(CHAT, other)))
      const unreadable = yield* Effect.flip(send(CHAT, other)).pipe(Effect.provide(InferenceReplay(dir)))
      expect(unreadable.message).toBe(`The recording ${recordingPath("recordings", recordingKey(CHAT, other))} is unusable: is not a regular file (a pipe, a device or a directory).`)
      const tooLarge = yield* Effect.flip(send(CHAT, body)).pipe(Effect.provide(InferenceReplay(dir, { maxFileBytes: 4 })))
      expect(tooLarge.code).toBe("upstream_response_too_large")
      const exit = yield* Effect.exit(Effect.provide(Inference, InferenceReplay(Path.join(dir, "typo"))))
      expect(Exit.isFailure(exit) && String(exit.cause)).toContain("INFERENCE_RECORDINGS")
      // Recording under a path that cannot be a directory (a file is in the way): refused at start, not per line.
      const unwritable = InferenceRecord(Path.join(path, "sub")).pipe(Layer.provide(InferenceScripted(() => Effect.die("unused"))))
      const refused = yield* Effect.exit(Effect.provide(Inference, unwritable))
      expect(Exit.isFailure(refused) && String(refused.cause)).toMatch(/INFERENCE_RECORDINGS.*Cannot write recordings under/)
    }).pipe(Effect.scoped))

  it.effect("INFERENCE_MODE picks the layer; record or replay without INFERENCE_RECORDINGS is a configuration error", () =>
    Effect.gen(function*() {
      const dir = yield* scratchDir
      const replay = InferenceFromConfig.pipe(
        Layer.provide(AppConfig.layerWith({ inferenceMode: "replay", inferenceRecordings: Option.some(dir) }))
      )
      expect((yield* Effect.flip(send(CHAT, chatBody("x"))).pipe(Effect.provide(replay))).code).toBe("replay_miss")
      const missing = InferenceFromConfig.pipe(
        Layer.provide(AppConfig.layerWith({ inferenceMode: "record", inferenceRecordings: Option.none() }))
      )
      const error = yield* Effect.flip(Effect.provide(Inference, missing))
      expect(ConfigError.isConfigError(error) && String(error)).toContain("INFERENCE_RECORDINGS")
    }).pipe(Effect.scoped))
})

/** The whole app (SQLite in a scratch directory) on `inference`, on a random port. */
const appOn = (inference: Layer.Layer<Inference, unknown, AppConfig>, overrides: Partial<AppConfigShape> = {}) =>
  HttpLive.pipe(
    Layer.provide(makeServices({ inference })),
    Layer.provideMerge(TestHttpServer),
    Layer.provideMerge(configFor({ maxConcurrentRequestsPerBatch: 16, ...overrides })),
    Layer.provideMerge(Layer.merge(TestDataDir.Default, TestDatabase.layer("sqlite"))),
    Layer.provide(Logger.minimumLogLevel(LogLevel.Warning))
  )

/** Runs `lines` as a chat batch through the official client; the batch and its output and error files' text. */
const runBatch = (lines: ReadonlyArray<string>) =>
  Effect.gen(function*() {
    const openai = sdk(yield* baseUrl)
    const file = yield* upload(openai, lines)
    const created = yield* createBatch(openai, file.id)
    const batch = yield* waitFor(openai, created.id, terminal, 30_000)
    const text = (id: string | null | undefined) =>
      Effect.promise(async () => (id ? (await openai.files.content(id)).text() : ""))
    return { batch, output: yield* text(batch.output_file_id), errors: yield* text(batch.error_file_id) }
  })

/** `lines` with line `i`'s prompt changed. */
const changedLine = (lines: ReadonlyArray<string>, i: number) =>
  lines.map((line, n) => (n === i ? chatLine(`line-${i}`, `prompt ${i}, changed`) : line))

/** A result file with each line's generated id (`batch_req_…`, the line's first member) replaced. */
const withoutIds = (text: string) => text.replace(/^\{"id":"batch_req_[^"]*"/gm, `{"id":"<id>"`)

describe("done when", () => {
  it.live("a 200-line batch recorded, replayed with the simulator gone: the same output; a changed line: one replay_miss", () =>
    Effect.gen(function*() {
      const dir = yield* scratchDir
      // Mostly plain answers; a few the upstream writes in ways JSON.stringify would not, or refuses.
      const directive = (i: number) => ({ 7: " [bignum]", 20: " [fail:400]", 33: " [pretty]" })[i % 50] ?? ""
      const lines = Array.from({ length: 200 }, (_, i) => chatLine(`line-${i}`, `prompt ${i}${directive(i)}`))

      const sim = yield* simulator
      const recorded = yield* runBatch(lines).pipe(
        Effect.provide(appOn(InferenceRecord(dir).pipe(Layer.provide(InferenceLive)), { inferenceBaseUrl: sim.url }))
      )
      yield* Effect.promise(() => sim.close())
      expect(recorded.batch.request_counts).toEqual({ total: 200, completed: 196, failed: 4 })
      expect(readdirSync(Path.join(dir, "chat_completions"))).toHaveLength(200)

      // A simulator that nothing should reach: replay answers from the files only.
      const sentinel = yield* simulator
      const changed = changedLine(lines, 123)
      const [replayed, partly] = yield* Effect.all([runBatch(lines), runBatch(changed)]).pipe(
        Effect.provide(appOn(InferenceReplay(dir), { inferenceBaseUrl: sentinel.url }))
      )
      expect(replayed.batch.request_counts).toEqual({ total: 200, completed: 196, failed: 4 })
      expect(replayed.output.split("\n")).toHaveLength(197)
      expect(withoutIds(replayed.output)).toBe(withoutIds(recorded.output))
      expect(withoutIds(replayed.errors)).toBe(withoutIds(recorded.errors))
      expect(replayed.output).not.toBe(recorded.output) // the ids are new

      expect(partly.batch.request_counts).toEqual({ total: 200, completed: 195, failed: 5 })
      const misses = partly.errors.trim().split("\n").map((line) => JSON.parse(line)).filter((line) => line.error !== null)
      expect(misses).toHaveLength(1)
      expect(misses[0]).toMatchObject({ custom_id: "line-123", response: null, error: { code: "replay_miss" } })
      const changedBody = JSON.stringify(JSON.parse(changed[123]!).body)
      expect(misses[0].error.message).toContain(recordingKey(CHAT, changedBody).hash)
      const others = (text: string) => withoutIds(text).split("\n").filter((line) => !line.includes(`"custom_id":"line-123"`))
      expect(others(partly.output)).toEqual(others(recorded.output))
      expect(others(partly.errors)).toEqual(others(recorded.errors))
      expect(sentinel.stats.requests).toBe(0)
    }).pipe(Effect.scoped), { timeout: 120_000 })
})
