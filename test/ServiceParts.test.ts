/**
 * The parts `makeServices` and `makeApp` take, as an embedding app's compiler sees them: a misspelled part is a type
 * error (it would otherwise be ignored, the live part used instead), and what a start fails with is typed.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Layer, Logger } from "effect"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import * as Path from "node:path"
import { jsonLineLogger } from "../src/observability/Logging.js"
import { AppConfig, InferenceScripted, type LiveServicesError, makeApp, makeServices, scriptedAnswer } from "../src/index.js"

const scripted = InferenceScripted(() => Effect.succeed(scriptedAnswer(200, {})), ["m"])

describe("the parts of makeServices and makeApp", () => {
  it("a part they do not know is refused by the compiler; the error type names the live parts' errors", () => {
    // @ts-expect-error: `infrence` is no part (beside a part it is, the compiler said nothing before)
    const misspelled = makeServices({ inference: scripted, infrence: scripted })
    // @ts-expect-error: nor for the whole app
    const app = makeApp({ inference: scripted, infrence: scripted })
    const services: Layer.Layer<any, LiveServicesError, any> = makeServices({ inference: scripted })
    expect([misspelled, app, services].every((layer) => typeof layer === "object")).toBe(true)
  })

  it.live("the listening line names the upstreams of the Inference in use: none for an app's own", () =>
    Effect.gen(function*() {
      const written: Array<any> = []
      const logger = Logger.replace(Logger.defaultLogger, Logger.map(jsonLineLogger, (line) => void written.push(JSON.parse(line))))
      const dataDir = mkdtempSync(Path.join(tmpdir(), "parts-"))
      yield* Effect.scoped(Layer.build(makeApp({ inference: scripted }).pipe(
        Layer.provide(AppConfig.layerWith({ port: 0, dataDir })),
        Layer.provide(logger)
      ))).pipe(Effect.ensuring(Effect.sync(() => rmSync(dataDir, { recursive: true, force: true }))))
      const listening = written.find((line) => line.event === "server.listening")
      expect(listening.upstreams).toEqual([]) // it named the configured default at 127.0.0.1:8000, never called
      expect(listening.message).toContain("no upstream: the app's own Inference answers")
    }), 30_000)
})
