/**
 * The dashboard of an app that mounts the API under a prefix of its own router (`ApiApp` at `/openai`), driven in
 * headless Chromium: the page at `/openai/ui` loads its files from there and calls the API at `/openai/v1` (the
 * key asked for by a 401 of the mounted API, a file uploaded, a batch started and its output saved).
 */
import { HttpRouter, HttpServer } from "@effect/platform"
import { describe, expect, layer } from "@effect/vitest"
import { Effect, Layer, Logger, LogLevel, Redacted } from "effect"
import { readFileSync } from "node:fs"
import { ApiApp, ApiAppLive, AppConfig, InferenceScripted, makeNodeServer, makeServices, scriptedAnswer } from "../src/index.js"
import { chatLine } from "./support/Batches.js"
import { BrowserPage, violations } from "./support/Chromium.js"

const KEY = "sk-mounted-7d1f0b2e"

const answers = InferenceScripted(() =>
  Effect.succeed(scriptedAnswer(200, {
    object: "chat.completion",
    choices: [{ index: 0, message: { role: "assistant", content: "hi" } }],
    usage: { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 }
  })), ["sim-model"])

const mounted = Layer.unwrapEffect(Effect.map(ApiApp, (api) => HttpServer.serve(HttpRouter.empty.pipe(HttpRouter.mountApp("/openai", api)))))
  .pipe(
    Layer.provide(ApiAppLive),
    Layer.provide(makeServices({ inference: answers })),
    Layer.provideMerge(makeNodeServer({ host: "127.0.0.1", port: 0, shutdownTimeout: "1 second" })),
    Layer.provide(AppConfig.layerTest({ apiKeys: [Redacted.make(KEY)] })),
    Layer.provide(Logger.minimumLogLevel(LogLevel.Warning))
  )

const poll = <T>(read: () => T | Promise<T>) => expect.poll(read, { timeout: 15_000, interval: 50 })

describe("the dashboard under a mounted prefix", () => {
  layer(Layer.merge(mounted, BrowserPage.layer({ width: 1200, height: 760 })), { excludeTestServices: true, timeout: 60_000 })(
    "the API at /openai",
    (it) => {
      it.effect("loads from /openai/ui and calls /openai/v1: key, upload, batch, output", () =>
        Effect.gen(function*() {
          const server = yield* HttpServer.HttpServer
          const { page, problems } = yield* BrowserPage
          const base = `${HttpServer.formatAddress(server.address)}/openai`
          yield* Effect.promise(async () => {
            // `/ui` sends the browser to the page at `/ui/`, where its relative paths resolve.
            await page.goto(`${base}/ui`)
            expect(page.url()).toBe(`${base}/ui/`)
            // The mounted API's 401 asks for the key.
            await poll(() => page.locator("#key-dialog").isVisible()).toBe(true)
            await page.locator("#key-input").fill(KEY)
            await page.getByRole("button", { name: "Use this key" }).click()
            await poll(() => page.locator("main .empty").isVisible()).toBe(true)

            await page.goto(`${base}/ui#/files`)
            const lines = [chatLine("a", "hello"), chatLine("b", "again")].join("\n") + "\n"
            await page.locator("#upload-file").setInputFiles({ name: "in.jsonl", mimeType: "application/jsonl", buffer: Buffer.from(lines) })
            await page.getByRole("button", { name: "Upload" }).click()
            await poll(() => page.locator("#start-batch").textContent()).toContain("in.jsonl")
            await page.getByRole("button", { name: "Start batch" }).first().click()
            await page.waitForURL(/#\/batches\/batch_/)
            await expect.poll(async () => {
              await page.clock.fastForward(2000)
              return page.locator(".heading .status").textContent()
            }, { timeout: 15_000, interval: 100 }).toBe("completed")
            const [download] = await Promise.all([page.waitForEvent("download"), page.locator("button[data-file=output]").click()])
            const saved = readFileSync((await download.path())!, "utf8").trim().split("\n").map((l) => JSON.parse(l).custom_id)
            expect(saved.sort()).toEqual(["a", "b"])
            expect(problems).toEqual([])
            expect(await violations(page)).toEqual([])
          })
        }))
    }
  )
})
