/**
 * The parts `makeServices` and `makeApp` take, as an embedding app's compiler sees them: a misspelled part is a type
 * error (it would otherwise be ignored, the live part used instead), and what a start fails with is typed; the
 * lines of an app on parts of its own say so (its upstreams, its storage).
 */
import { describe, expect, it } from "@effect/vitest"
import { Context, Effect, Layer, Logger, Redacted } from "effect"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import * as Path from "node:path"
import { jsonLineLogger } from "../src/observability/Logging.js"
import {
  AppConfig,
  BlobStoreSql,
  Inference,
  InferenceScripted,
  type InferenceShape,
  layerPg,
  type LiveServicesError,
  makeApp,
  makeServices,
  NodeIdLockLive,
  scriptedAnswer
} from "../src/index.js"
import { vouchedFor } from "../src/inference/answers.js"
import type OpenAI from "openai"
import { chatLine, createBatch, sdk, terminal, upload, waitFor } from "./support/Batches.js"
import { createScratchSchema, dropScratchSchema } from "./support/Postgres.js"

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

  it.live("on a storage part of the app's, the lines name it as the app's: its kind, not the configuration's database", () =>
    Effect.gen(function*() {
      const dataDir = mkdtempSync(Path.join(tmpdir(), "parts-"))
      const { schema, url } = yield* createScratchSchema("storage_part")
      const storage = BlobStoreSql.pipe(Layer.provideMerge(layerPg(Redacted.make(url), {}, NodeIdLockLive)))
      /** The app on that storage, with `inference`, for as long as `use` runs: what it logged. */
      const run = <A>(inference: typeof scripted, use: (openai: OpenAI) => Effect.Effect<A>) =>
        Effect.gen(function*() {
          const written: Array<any> = []
          const logger = Logger.replace(Logger.defaultLogger, Logger.map(jsonLineLogger, (line) => void written.push(JSON.parse(line))))
          yield* Layer.build(makeApp({ inference, storage }).pipe(
            // No DATABASE_URL: SQLite, as far as the configuration says. The same node each time.
            Layer.provide(AppConfig.layerWith({ host: "127.0.0.1", port: 0, dataDir, nodeId: "parts-node" })),
            Layer.provide(logger)
          ))
          yield* use(sdk(written.find((line) => line.event === "server.listening").address))
          return written
        }).pipe(Effect.scoped)
      const unanswered = InferenceScripted(() => Effect.never, ["m"])
      let id = ""
      const first = yield* run(unanswered, (openai) =>
        Effect.gen(function*() {
          const file = yield* upload(openai, [chatLine("a", "hello", "m")])
          id = (yield* createBatch(openai, file.id)).id
          yield* waitFor(openai, id, (b) => b.status === "in_progress")
        }))
      const second = yield* run(scripted, (openai) => Effect.asVoid(waitFor(openai, id, terminal)))
        .pipe(Effect.ensuring(Effect.zip(
          Effect.sync(() => rmSync(dataDir, { recursive: true, force: true })),
          Effect.orDie(dropScratchSchema(schema))
        )))
      const listening = first.find((line) => line.event === "server.listening")
      expect([listening.backend, listening.database]).toEqual(["postgresql", "PostgreSQL of the app's own storage"])
      expect(listening.message).toContain("(PostgreSQL of the app's own storage; ")
      // Taken up at the next start as on PostgreSQL, where other nodes may run batches: not SQLite's one process.
      expect(second.filter((line) => line.event === "batch.picked_up")).toEqual([expect.objectContaining({
        batch_id: id,
        message: "Batch taken up as this node started: unfinished, some of it held by no node (another node may run the rest)"
      })])
    }), 30_000)

  it.live("an app's own Inference has its answers checked as the upstreams' are: one line of JSON, a request id", () =>
    Effect.gen(function*() {
      const texts: Record<string, string> = {
        pretty: JSON.stringify({ id: "x", big: 1 }, null, 2),
        html: "<html>sign in</html>",
        refusal: "no such model"
      }
      const sendOwn: InferenceShape["send"] = (_endpoint, body) => {
        const kind = JSON.parse(body).kind as string
        return Effect.succeed({ status: kind === "refusal" ? 404 : 200, text: texts[kind]!, json: undefined, requestId: "" })
      }
      const shape = (send: InferenceShape["send"]): InferenceShape => ({
        send,
        models: Effect.succeed({ data: [], complete: true }),
        reachable: () => Effect.void,
        unreachable: () => Effect.never
      })
      /** The `Inference` of `makeServices` given `own` (the build lasts for the test's scope). */
      const built = (own: InferenceShape) =>
        Effect.gen(function*() {
          const dataDir = yield* Effect.acquireRelease(
            Effect.sync(() => mkdtempSync(Path.join(tmpdir(), "parts-"))),
            (dir) => Effect.sync(() => rmSync(dir, { recursive: true, force: true }))
          )
          const services = makeServices({ inference: Layer.succeed(Inference, own) })
          return Context.get(yield* Layer.build(services.pipe(Layer.provide(AppConfig.layerWith({ port: 0, dataDir })))), Inference)
        })
      const inference = yield* built(shape(sendOwn))
      const send = (kind: string) => inference.send("/v1/chat/completions", JSON.stringify({ kind }))
      const pretty = yield* send("pretty")
      expect([pretty.text, pretty.json]).toEqual([`{"id":"x","big":1}`, { id: "x", big: 1 }])
      expect(pretty.requestId).toMatch(/^req_[0-9a-f]{32}$/)
      expect(yield* Effect.flip(send("html"))).toMatchObject({ _tag: "UpstreamFailure", code: "invalid_upstream_response" })
      const refusal = yield* send("refusal")
      expect([refusal.status, refusal.json]).toEqual([404, { error: { message: "no such model", type: "upstream_error", param: null, code: null } }])

      // A send vouched for (the service's own, as `InferenceOverHttpClient`'s) is not checked again; a copy of such
      // an Inference with a send of its own is.
      const prettyText = (i: InferenceShape) => Effect.map(i.send("/v1/chat/completions", JSON.stringify({ kind: "pretty" })), (r) => r.text)
      const vouched = shape(vouchedFor(sendOwn))
      expect(yield* prettyText(yield* built(vouched))).toBe(texts.pretty)
      expect(yield* prettyText(yield* built({ ...vouched, send: (e, b, o) => vouched.send(e, b, o) }))).toBe(`{"id":"x","big":1}`)
    }).pipe(Effect.scoped), 30_000)
})
