/**
 * Record and replay of upstream answers, as `Inference` layers (`INFERENCE_MODE=record|replay` with
 * `INFERENCE_RECORDINGS=<dir>`, or embedded: `InferenceRecord(dir)`, `InferenceReplay(dir)`).
 *
 * Each answer is one pretty JSON file (`recordingFormat.ts`: its key and text), rather than rows of one SQLite file:
 * a recording is read by people and reviewed in diffs, two branches that record different requests merge
 * without conflict, and replay reads one small file per request. Nothing but the request id is kept of the
 * answer's headers, and nothing of the request's (no API key, no `Authorization`): recordings are safe to commit.
 */
import { ConfigError, Effect, Layer, Option } from "effect"
import { randomBytes } from "node:crypto"
import * as fs from "node:fs/promises"
import * as Path from "node:path"
import { readBounded, unreadable } from "../boundedRead.js"
import { makeDirectories } from "../storage/makeDirectories.js"
import { AppConfig } from "../Config.js"
import { Inference, InferenceLive, type InferenceShape, type ModelList, UpstreamFailure, type UpstreamResponse } from "./Inference.js"
import { isVouchedFor, vouchedFor } from "./answers.js"
import {
  answerFromRecording,
  DEFAULT_MAX_RECORDING_BYTES,
  type RecordingKey,
  recordingKey,
  recordingPath,
  recordingText
} from "./recordingFormat.js"

export interface RecordingsOptions {
  /**
   * Largest recording file read (replay; default `DEFAULT_MAX_RECORDING_BYTES`); a larger one fails its line with
   * `upstream_response_too_large`. The recorder writes an answer whose pretty file would pass it on one line.
   */
  readonly maxFileBytes?: number
}

/** Where `INFERENCE_MODE` and `INFERENCE_RECORDINGS` go in configuration errors. */
const RECORDINGS_VARIABLE = "INFERENCE_RECORDINGS"

const messageOf = (error: unknown) => (error instanceof Error ? error.message : String(error))

/** Writes `text` at `path` through a temporary file and a rename: a reader sees the whole file or none. */
const writeAtomically = async (path: string, text: string): Promise<void> => {
  await makeDirectories(Path.dirname(path))
  const temp = Path.join(Path.dirname(path), `.${Path.basename(path)}.${process.pid}-${randomBytes(4).toString("hex")}.tmp`)
  try {
    await fs.writeFile(temp, text)
    await fs.rename(temp, path)
  } catch (error) {
    await fs.rm(temp, { force: true })
    throw error
  }
}

/** The model named by a recording file, from its first bytes (the recorder writes `endpoint`, then `model`). */
const modelOfFile = async (path: string): Promise<string | null> => {
  const handle = await fs.open(path, "r")
  try {
    const { buffer, bytesRead } = await handle.read(Buffer.alloc(4096), 0, 4096, 0)
    const head = buffer.subarray(0, bytesRead).toString("utf8")
    const match = /^\{\s*"endpoint":\s*"(?:[^"\\]|\\.)*",\s*"model":\s*("(?:[^"\\]|\\.)*")/.exec(head)
    return match === null ? null : JSON.parse(match[1]!)
  } finally {
    await handle.close()
  }
}

/** The models named in the recordings under `dir` (unreadable files are left out). */
const recordedModels = (dir: string): Effect.Effect<ReadonlyArray<string>> =>
  Effect.promise(async () => {
    const folders = await fs.readdir(dir, { withFileTypes: true }).catch(() => [])
    const files: Array<string> = []
    for (const folder of folders.filter((entry) => entry.isDirectory())) {
      const names = await fs.readdir(Path.join(dir, folder.name)).catch(() => [])
      for (const name of names) if (name.endsWith(".json") && !name.startsWith(".")) files.push(Path.join(dir, folder.name, name))
    }
    const models = new Set<string>()
    for (let i = 0; i < files.length; i += 64) {
      const batch = await Promise.all(files.slice(i, i + 64).map((file) => modelOfFile(file).catch(() => null)))
      for (const model of batch) if (model !== null) models.add(model)
    }
    return [...models].sort()
  })

/** Fails with a `ConfigError` naming `INFERENCE_RECORDINGS` unless files can be written under `dir` (made if missing). */
const checkWritable = (dir: string) =>
  Effect.tryPromise({
    try: async () => {
      await makeDirectories(dir)
      const probe = Path.join(dir, `.write-check-${process.pid}-${randomBytes(4).toString("hex")}`)
      await fs.writeFile(probe, "")
      await fs.rm(probe, { force: true })
    },
    catch: (error) => ConfigError.InvalidData([RECORDINGS_VARIABLE], `Cannot write recordings under ${dir}: ${messageOf(error)}`)
  })

/** Fails with a `ConfigError` unless `dir` is a directory: a mistyped path is found at start, not line by line. */
const checkDirectory = (dir: string) =>
  Effect.tryPromise({
    try: () => fs.stat(dir),
    catch: (error) => ConfigError.InvalidData([RECORDINGS_VARIABLE], `Cannot read recordings from ${dir}: ${messageOf(error)}`)
  }).pipe(Effect.filterOrFail(
    (stat) => stat.isDirectory(),
    () => ConfigError.InvalidData([RECORDINGS_VARIABLE], `Cannot read recordings from ${dir}: not a directory`)
  ))

/**
 * Records every answer of the `Inference` in context (the live one) under `dir`, then returns it unchanged. An
 * answer is any HTTP status the inner Inference finally gives (after its retries); failures (timeouts, lost
 * connections) are not recorded. Fails to build, with a `ConfigError`, when `dir` cannot be written.
 *
 * A write failing later (disk full) does not fail the line: the answer was paid for and is the batch's result.
 * It is logged (a warning at the first failure, with the path and the reason; the count when the layer closes),
 * and replay names each missing key with `replay_miss`.
 */
export const InferenceRecord = (
  dir: string,
  options: RecordingsOptions = {}
): Layer.Layer<Inference, ConfigError.ConfigError, Inference> =>
  Layer.scoped(
    Inference,
    Effect.gen(function*() {
      const inner = yield* Inference
      yield* checkWritable(dir)
      const maxBytes = options.maxFileBytes ?? DEFAULT_MAX_RECORDING_BYTES
      let failures = 0
      yield* Effect.addFinalizer(() =>
        failures === 0
          ? Effect.void
          : Effect.logWarning(`${failures === 1 ? "1 answer" : `${failures} answers`} could not be recorded under ${dir}`)
      )
      const record = (endpoint: string, body: string, response: UpstreamResponse) =>
        Effect.suspend(() => {
          const key = recordingKey(endpoint, body)
          const path = recordingPath(dir, key)
          const text = recordingText(key, body, response, maxBytes)
          return Effect.flatMap(Effect.promise(() => writeAtomically(path, text).then(() => undefined, messageOf)), (error) => {
            if (error === undefined) return Effect.void
            failures++
            return failures > 1 ? Effect.void : Effect.logWarning(
              `Could not record an answer at ${path} (${error}); the answer is kept in the batch, the recording is missing`
            )
          })
        }).pipe(Effect.uninterruptible) // an answer that arrived is recorded, even as its batch is cancelled
      const send: InferenceShape["send"] = (endpoint, body, sendOptions) =>
        Effect.tap(inner.send(endpoint, body, sendOptions), (response) => record(endpoint, body, response))
      // Its answers are its inner one's, as they came: checked if those are.
      return Inference.of({ ...inner, send: isVouchedFor(inner.send) ? vouchedFor(send) : send })
    })
  )

/**
 * `replay_miss`: no recording of this request; the message names its key and the file looked for, within the
 * recordings directory (it goes into a project's error file: the server's own paths are not theirs to see).
 */
const replayMiss = (key: RecordingKey) =>
  new UpstreamFailure({
    code: "replay_miss",
    message: `No recording for ${key.endpoint}, model ${key.model ?? "(none)"}, hash ${key.hash} (looked for ${recordingPath("", key)} in INFERENCE_RECORDINGS).`
  })

/**
 * Answers from the recordings under `dir` only, never the network: the recorded status, body text (byte for
 * byte) and request id. A request with no recording fails with `replay_miss`, its key in the message; an
 * unreadable or malformed recording with `invalid_upstream_response`, one over `maxFileBytes` with
 * `upstream_response_too_large`. Upstreams are always up. `models` lists the models recorded, as an incomplete
 * list: validation rejects no model by it, each line finds its recording or misses. Fails to build, with a
 * `ConfigError`, when `dir` is not a directory.
 */
export const InferenceReplay = (
  dir: string,
  options: RecordingsOptions = {}
): Layer.Layer<Inference, ConfigError.ConfigError> =>
  Layer.effect(
    Inference,
    Effect.gen(function*() {
      yield* checkDirectory(dir)
      const maxBytes = options.maxFileBytes ?? DEFAULT_MAX_RECORDING_BYTES
      // Scanning every file's head costs a moment per thousand recordings: once a minute at most.
      const models = yield* Effect.cachedWithTTL(
        Effect.map(recordedModels(dir), (ids): ModelList => ({
          data: ids.map((id) => ({ id, ownedBy: "recordings" })),
          complete: false
        })),
        "1 minute"
      )
      const invalid = (path: string, problem: string) =>
        new UpstreamFailure({ code: "invalid_upstream_response", message: `The recording ${path} is unusable: ${problem}.` })
      return Inference.of({
        send: (endpoint, body) =>
          Effect.suspend(() => {
            const key = recordingKey(endpoint, body)
            const path = recordingPath(dir, key)
            const shown = recordingPath("recordings", key) // within the directory: see `replayMiss`
            return Effect.flatMap(Effect.promise(() => readBounded(path, maxBytes)), (read) => {
              switch (read._tag) {
                case "Missing":
                  return Effect.fail(replayMiss(key))
                case "TooLarge":
                  return Effect.fail(new UpstreamFailure({
                    code: "upstream_response_too_large",
                    message: `The recording ${shown} is larger than the ${maxBytes} bytes read for one answer.`
                  }))
                case "NotAFile":
                case "Failed":
                  return Effect.fail(invalid(shown, unreadable(read, maxBytes, "a recording")))
                case "Read": {
                  const answer = answerFromRecording(read.text)
                  return "problem" in answer ? Effect.fail(invalid(shown, answer.problem)) : Effect.succeed(answer)
                }
              }
            })
          }),
        models,
        reachable: () => Effect.void,
        unreachable: () => Effect.never,
        upstreamName: () => "recordings"
      })
    })
  )

/**
 * The `Inference` the configuration asks for: `INFERENCE_MODE=live` the upstreams (`InferenceLive`), `record` the
 * upstreams recorded under `INFERENCE_RECORDINGS`, `replay` the recordings only (the upstreams are not built:
 * not even their model lists are fetched). A recording file may be 4 × `INFERENCE_MAX_RESPONSE_BYTES`.
 */
export const InferenceFromConfig: Layer.Layer<Inference, ConfigError.ConfigError, AppConfig> = Layer.unwrapEffect(
  Effect.map(AppConfig, (config) => {
    const mode = config.inferenceMode
    if (mode === "live") return InferenceLive
    const dir = config.inferenceRecordings
    // `validateConfig` already refuses this; a configuration built by hand may not have been through it.
    if (Option.isNone(dir)) {
      return Layer.fail(ConfigError.MissingData(
        [RECORDINGS_VARIABLE],
        `INFERENCE_MODE=${mode} needs ${RECORDINGS_VARIABLE}, the directory of the recordings`
      ))
    }
    const options = { maxFileBytes: 4 * config.inferenceMaxResponseBytes }
    return mode === "record"
      ? InferenceRecord(dir.value, options).pipe(Layer.provide(InferenceLive))
      : InferenceReplay(dir.value, options)
  })
)
