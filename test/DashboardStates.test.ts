/**
 * What a batch's page says beyond its figures, in headless Chromium against the real app and a simulator that the
 * test stops and starts: a running batch whose upstream is down says so (and no more once it is back; nothing from a
 * server without `GET /v1/upstreams`); a cancelled batch's "failed" are not drawn as failures, since most never ran;
 * what stands in for a batch not read (yet) or not found; a deleted input file.
 */
import { describe, expect, layer } from "@effect/vitest"
import { Duration, Effect, Layer } from "effect"
import type { Page } from "playwright-core"
import { chatLine, createBatch, terminal, upload, waitFor } from "./support/Batches.js"
import { BrowserPage } from "./support/Chromium.js"
import { DESKTOP, expectClean, inPage, poll, POLL_MS, shown } from "./support/Dashboard.js"
import { client, createModelBatch, Simulators, testAppWithUpstreams } from "./support/Upstreams.js"

/** The browser's globals, in the functions `page.evaluate` runs in the page (this project's types are Node's). */
declare const getComputedStyle: any

const app = testAppWithUpstreams(
  { main: { models: ["model-a"], latencyMs: 50 } },
  ({ main }) => [{ name: "main", base_url: main!.url, models: ["model-a"] }],
  {
    maxConcurrentRequestsPerBatch: 8,
    upstreamProbeInterval: Duration.millis(300),
    // An outage outlasts a lease and a request's retries: the batch waits rather than fail lines.
    leaseTtl: Duration.seconds(2),
    heartbeatInterval: Duration.millis(200),
    inferenceRetryBaseDelay: Duration.millis(100),
    inferenceRetryMaxDelay: Duration.millis(400)
  }
)

const statusOf = (page: Page) => page.locator(".heading .status").textContent()
/** The calls to `GET /v1/upstreams` the page makes from now on. */
const countUpstreamCalls = (page: Page) => {
  const calls = { n: 0 }
  page.on("request", (r) => void (new URL(r.url()).pathname === "/v1/upstreams" && calls.n++))
  return calls
}

describe("a batch's page", () => {
  layer(Layer.merge(app, BrowserPage.layer(DESKTOP)), { excludeTestServices: true, timeout: 60_000 })("in headless Chromium", (it) => {
    it.effect("says its upstream is down while it is, then the batch completes; nothing from a server without the route", () =>
      Effect.gen(function*() {
        const { main } = yield* Simulators
        const openai = yield* client
        const batch = yield* createModelBatch(1000, "model-a", "m")
        yield* waitFor(openai, batch.id, (b) => (b.request_counts?.completed ?? 0) >= 20)
        yield* inPage(async (base, browser) => {
          const { page } = browser
          const waiting = page.locator(".waiting")
          const calls = countUpstreamCalls(page)
          // A server without the extension: asked once, and nothing is said.
          await page.route(`${base}/v1/upstreams`, (route) =>
            route.fulfill({ status: 404, json: { error: { message: "Not found", type: "invalid_request_error", param: null, code: null } } }))
          await page.goto(`${base}/ui#/batches/${batch.id}`)
          await poll(() => statusOf(page)).toBe("in progress")
          for (let i = 0; i < 3; i++) await page.clock.fastForward(POLL_MS)
          expect(calls.n).toBe(1)
          expect(await page.locator("#notice").isVisible()).toBe(false)
          await page.unroute(`${base}/v1/upstreams`)

          await page.reload()
          await poll(() => statusOf(page)).toBe("in progress")
          expect(await waiting.isVisible()).toBe(false)
          await main!.stop()
          await shown(page, () => waiting.textContent()).toMatch(
            /^Upstream main has been down since \d\d:\d\d UTC\S* \((no connection|its calls fail)\): this batch waits for it and loses nothing; it goes on when it is back\.$/
          )
          expect(await statusOf(page)).toBe("in progress")
          await main!.start()
          await shown(page, () => waiting.isVisible()).toBe(false)
          // Said no more while the batch still runs (~800 lines left at 50 ms, 8 at a time: seconds)...
          expect(await statusOf(page)).toBe("in progress")
          // ...whose lines left are no part of what the page says: answered quicker.
          main!.latencyMs = 5
          await shown(page, () => statusOf(page)).toBe("completed")
          main!.latencyMs = 50
          expect(await page.locator(".counts").textContent()).toBe("1,000 of 1,000 done (100%): 1,000 succeeded, 0 failed")
          // Asked at the batch's refreshes while it ran, and no more once it ended.
          const asked = calls.n
          for (let i = 0; i < 3; i++) await page.clock.fastForward(POLL_MS)
          expect(calls.n).toBe(asked)
          await expectClean(browser)
        })
      }), { timeout: 60_000 })

    it.effect("a cancelled batch's requests that never ran are not shown as failures", () =>
      Effect.gen(function*() {
        const openai = yield* client
        // 12 answer at once, 18 sleep far longer than the test: cancelled, most never ran.
        const lines = Array.from({ length: 30 }, (_, i) => chatLine(`c-${i}`, i < 12 ? `quick ${i}` : `slow ${i} [sleep:60000]`, "model-a"))
        const input = yield* upload(openai, lines)
        const batch = yield* createBatch(openai, input.id)
        yield* waitFor(openai, batch.id, (b) => (b.request_counts?.completed ?? 0) >= 12)
        yield* Effect.promise(() => openai.batches.cancel(batch.id))
        const done = yield* waitFor(openai, batch.id, terminal, 20_000)
        expect(done.status).toBe("cancelled")
        yield* inPage(async (base, browser) => {
          const { page } = browser
          await page.goto(`${base}/ui#/batches/${batch.id}`)
          await poll(() => statusOf(page)).toBe("cancelled")
          const { completed, failed } = done.request_counts!
          expect(await page.locator(".counts").textContent()).toBe(
            `30 of 30 done (100%): ${completed} succeeded, ${failed} failed or not run (cancelled)`
          )
          const colour = (selector: string) => page.locator(selector).first().evaluate((el) => getComputedStyle(el).backgroundColor)
          const red = await page.locator("#notice").evaluate((el) => getComputedStyle(el).borderLeftColor)
          expect(await colour(".big .bar .bad")).not.toBe(red)
          expect(await page.locator(".big [role=progressbar]").getAttribute("aria-valuetext")).toContain("failed or not run (cancelled)")
          // The list too: the bar's part and the count are not drawn as failures.
          await page.locator("nav a", { hasText: "Batches" }).click()
          const row = page.locator("table.batches tbody tr", { hasText: batch.id })
          await poll(() => row.count()).toBe(1)
          expect(await colour(`table.batches tbody tr:has-text("${batch.id}") .bar .bad`)).not.toBe(red)
          expect(await row.locator(".has-failed").count()).toBe(0)
          await expectClean(browser)
        })
      }), { timeout: 60_000 })

    it.effect("says what stands in for a batch: loading, not found, a first read that failed; a deleted input file once", () =>
      Effect.gen(function*() {
        const openai = yield* client
        const input = yield* upload(openai, [chatLine("d-0", "hi", "model-a")])
        const batch = yield* createBatch(openai, input.id)
        yield* waitFor(openai, batch.id, terminal)
        yield* Effect.promise(() => openai.files.delete(input.id))
        yield* inPage(async (base, browser) => {
          const { page } = browser
          const state = page.locator(".state")
          const details = page.getByRole("heading", { name: "Details" })
          await page.goto(`${base}/ui#/batches/batch_nope`)
          await poll(() => state.textContent()).toBe("No batch batch_nope (it may have been deleted, or belong to another project).")
          expect(await details.isVisible()).toBe(false)
          expect(await page.locator("#notice").isVisible()).toBe(false)

          // The first read held, then failing: "Loading…", then why and that it is tried again; then the batch.
          let release!: () => void
          const held = new Promise<void>((resolve) => (release = resolve))
          await page.route(`${base}/v1/batches/${batch.id}`, async (route) => {
            await held
            await route.fulfill({ status: 503, json: { error: { message: "Overloaded, try later.", type: "server_error", param: null, code: null } } })
          }, { times: 1 })
          await page.goto(`${base}/ui#/batches/${batch.id}`)
          await poll(() => state.textContent()).toBe("Loading…")
          expect(await details.isVisible()).toBe(false)
          release()
          await poll(() => state.textContent()).toBe(
            "The batch could not be read: Overloaded, try later. The page tries again by itself; reload it to try at once."
          )
          await shown(page, () => statusOf(page)).toBe("completed")
          expect(await state.isVisible()).toBe(false)
          expect(await details.isVisible()).toBe(true)

          // Its input file deleted: its id once, said deleted, and nothing to download.
          const inputRow = page.locator("table.files tr", { hasText: "Input" })
          expect(await inputRow.locator(".name").textContent()).toBe(`${input.id}deleted`)
          expect(await inputRow.getByRole("button").count()).toBe(0)
          await expectClean(browser)
        })
      }), { timeout: 60_000 })
  })
})
