/**
 * The API handed web `Request`s in process (`ApiApp` as a web handler: no socket, no port), as an app's own tests
 * or an edge runtime would. A web request carries no `Host` header (it may not set one): its URL says where it went,
 * so a server without keys serves `localhost` there and refuses any other name, as over a socket. Also, through it,
 * a download whose bytes go as it is asked for (a file storage swapped for one that loses them).
 */
import { Etag, HttpApp, type HttpRouter } from "@effect/platform"
import { NodeContext, NodeHttpPlatform } from "@effect/platform-node"
import { expect, layer } from "@effect/vitest"
import { Effect, Layer, Logger, LogLevel, Stream } from "effect"
import { AppConfig } from "../src/Config.js"
import { ApiApp, ApiAppLive } from "../src/http/Http.js"
import { InferenceScripted, scriptedAnswer } from "../src/inference/Inference.js"
import { FileNotFound, FileStore, FileStoreLive } from "../src/files/FileStore.js"
import { makeServices } from "../src/Layers.js"
import { BlobGoneWhileRead } from "../src/storage/BlobStore.js"

/** Whether the files whose bytes go are deleted too (as a delete racing the download), or only their bytes. */
const deleted = { files: false }

/** The live store, but every file's bytes are gone as they are read. */
const BytesGone = Layer.effect(FileStore, Effect.map(FileStore, (live) =>
  FileStore.of({
    ...live,
    content: (id, visibility) =>
      Effect.map(live.content(id, visibility), (content) => ({ ...content, stream: Stream.die(new BlobGoneWhileRead(id)) })),
    get: (id, visibility) => (deleted.files ? Effect.fail(new FileNotFound({ id })) : live.get(id, visibility))
  }))).pipe(Layer.provide(FileStoreLive))

const app = ApiAppLive.pipe(
  Layer.provide(makeServices({ inference: InferenceScripted(() => Effect.succeed(scriptedAnswer(200, {})), ["fake-model"]), fileStore: BytesGone })),
  Layer.provideMerge(Layer.mergeAll(NodeContext.layer, NodeHttpPlatform.layer, Etag.layerWeak)),
  Layer.provide(AppConfig.layerTest()),
  Layer.provide(Logger.minimumLogLevel(LogLevel.Warning))
)

layer(app, { excludeTestServices: true })("the API handed web requests in process", (it) => {
  it.effect("serves one addressed to localhost without keys, and refuses another name (421)", () =>
    Effect.gen(function*() {
      const handler = HttpApp.toWebHandlerRuntime(yield* Effect.runtime<HttpRouter.HttpRouter.DefaultServices>())(yield* ApiApp)
      const local = yield* Effect.promise(() => handler(new Request("http://localhost/v1/models")))
      expect(local.status).toBe(200)
      expect(yield* Effect.promise(() => local.json())).toMatchObject({ object: "list", data: [{ id: "fake-model" }] })
      const elsewhere = yield* Effect.promise(() => handler(new Request("http://evil.example/v1/models")))
      expect(elsewhere.status).toBe(421)
    }))

  it.effect("a download whose bytes are gone: 404 when the file went with them (deleted meanwhile), else a 500 saying so", () =>
    Effect.gen(function*() {
      const handler = HttpApp.toWebHandlerRuntime(yield* Effect.runtime<HttpRouter.HttpRouter.DefaultServices>())(yield* ApiApp)
      const form = new FormData()
      form.append("purpose", "batch")
      form.append("file", new File(["{}\n"], "in.jsonl"))
      const file = yield* Effect.promise(() =>
        handler(new Request("http://localhost/v1/files", { method: "POST", body: form })).then((r) => r.json() as Promise<{ id: string }>))
      const download = Effect.promise(() =>
        handler(new Request(`http://localhost/v1/files/${file.id}/content`)).then(async (r) => [r.status, await r.text()] as const))
      const [missing, said] = yield* download
      expect([missing, said]).toEqual([500, expect.stringContaining("is missing from the server's storage")])
      deleted.files = true
      const [gone, why] = yield* download
      expect([gone, JSON.parse(why).error.message]).toEqual([404, `No such File object: ${file.id}`])
    }))
})
