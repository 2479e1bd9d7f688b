/**
 * The batches list's filter, in headless Chromium: words found in a batch's id, model or metadata and a status keep
 * the batches that match, however far down the list they are (no "More" pressed page after page); the filter is kept
 * across a visit to a batch; a long list is searched a thousand batches at a time ("Search older").
 */
import { describe, expect, layer } from "@effect/vitest"
import { Effect, Layer } from "effect"
import type { Page } from "playwright-core"
import { chatLine, createBatch, sdk, terminal, upload, waitFor } from "./support/Batches.js"
import { BrowserPage } from "./support/Chromium.js"
import { DESKTOP, expectClean, inPage, poll } from "./support/Dashboard.js"
import { baseUrl, testAppWithUpstream } from "./support/TestApp.js"

const rows = (page: Page) => page.locator("table.batches tbody tr")
const ids = (page: Page) => page.locator("table.batches tbody td.id a").allTextContents()
const found = (page: Page) => page.locator("main p.found")

/** A batch as the list gives it, made up: `n` newest first, metadata `{ n }`. */
const madeUp = (n: number) => ({
  id: `batch_${String(n).padStart(6, "0")}`,
  object: "batch",
  endpoint: "/v1/chat/completions",
  model: "sim-model",
  errors: null,
  input_file_id: "file-x",
  completion_window: "24h",
  status: "completed",
  output_file_id: null,
  error_file_id: null,
  created_at: 1_790_000_000 - n,
  in_progress_at: null,
  expires_at: null,
  finalizing_at: null,
  completed_at: 1_790_000_000 - n,
  failed_at: null,
  expired_at: null,
  cancelling_at: null,
  cancelled_at: null,
  request_counts: { total: 1, completed: 1, failed: 0 },
  metadata: { n: String(n) } as Record<string, string>
})

describe("the batches list's filter", () => {
  layer(Layer.merge(testAppWithUpstream(), BrowserPage.layer(DESKTOP)), { excludeTestServices: true, timeout: 60_000 })("in headless Chromium", (it) => {
    it.effect("keeps the batches whose id, model or metadata hold the words and whose status is chosen, from the whole list", () =>
      Effect.gen(function*() {
        const openai = sdk(yield* baseUrl)
        const file = yield* upload(openai, [chatLine("a", "hello")])
        // The oldest first: 25 batches, the needle below the first page of 20.
        const needle = yield* createBatch(openai, file.id, { metadata: { sweep: "needle-7" } })
        const others = []
        for (let i = 0; i < 24; i++) others.push(yield* createBatch(openai, file.id, { metadata: { sweep: `hay-${i}` } }))
        for (const b of [needle, ...others]) yield* waitFor(openai, b.id, terminal)
        const cancelled = yield* createBatch(openai, file.id, { metadata: { sweep: "hay-cancelled" } })
        yield* Effect.promise(() => openai.batches.cancel(cancelled.id))
        yield* waitFor(openai, cancelled.id, terminal)

        yield* inPage(async (base, browser) => {
          const { page } = browser
          await page.goto(`${base}/ui`)
          await poll(() => rows(page).count()).toBe(20)
          // Words in any case and order, each found somewhere: the metadata pair, the model.
          await page.locator("#batches-filter").fill("SIM-model  Needle")
          await poll(() => ids(page)).toEqual([needle.id])
          expect(await found(page).isVisible()).toBe(false)
          expect(await page.locator("button.more").isVisible()).toBe(false)
          // Nothing matches: said, and not as "no batches yet".
          await page.locator("#batches-filter").fill("needle-8")
          await poll(() => found(page).textContent()).toBe("No batch matches this filter.")
          expect(await rows(page).count()).toBe(0)
          expect(await page.locator("main p.empty").isVisible()).toBe(false)
          // By status, and by words with it.
          await page.locator("#batches-filter").fill("")
          await page.locator("#batches-status").selectOption("cancelled")
          await poll(() => ids(page)).toEqual([cancelled.id])
          await page.locator("#batches-filter").fill("needle")
          await poll(() => found(page).textContent()).toBe("No batch matches this filter.")
          await page.locator("#batches-status").selectOption("completed")
          await poll(() => ids(page)).toEqual([needle.id])
          // Kept across a visit to the batch, and Back.
          await page.locator("table.batches tbody td.id a").click()
          await poll(() => page.locator(".heading .status").textContent()).toBe("completed")
          await page.goBack()
          await poll(() => ids(page)).toEqual([needle.id])
          expect(await page.locator("#batches-filter").inputValue()).toBe("needle")
          expect(await page.locator("#batches-status").inputValue()).toBe("completed")
          // Any status again, no words: the list as it was.
          await page.locator("#batches-filter").fill("")
          await page.locator("#batches-status").selectOption("")
          await poll(() => rows(page).count()).toBe(20)
          expect(await page.locator("button.more").textContent()).toBe("More")
          await expectClean(browser)
        })
      }), { timeout: 60_000 })

    it.effect("searches a long list a thousand batches at a time, saying how far it looked", () =>
      inPage(async (base, browser) => {
        const { page } = browser
        // 2,500 batches served by the page's own route, the match at the 1,700th: beyond a first search.
        const all = Array.from({ length: 2500 }, (_, i) => madeUp(i + 1))
        all[1699]!.metadata = { n: "1700", tag: "wanted" }
        const pages: Array<number> = []
        await page.route(/\/v1\/batches(\?.*)?$/, (route) => {
          const url = new URL(route.request().url())
          const after = url.searchParams.get("after")
          const limit = Number(url.searchParams.get("limit") ?? 20)
          const from = after === null ? 0 : all.findIndex((b) => b.id === after) + 1
          const data = all.slice(from, from + limit)
          pages.push(limit)
          return route.fulfill({
            json: { object: "list", data, first_id: data[0]?.id ?? null, last_id: data.at(-1)?.id ?? null, has_more: from + limit < all.length }
          })
        })
        await page.goto(`${base}/ui`)
        await poll(() => rows(page).count()).toBe(20)
        pages.length = 0
        await page.locator("#batches-filter").fill("wanted")
        await poll(() => found(page).textContent()).toBe("No batch among the newest 1,000 match this filter.")
        // Pages of 100, ten of them: no more than the step asks.
        expect(pages.slice(0, 10)).toEqual(Array(10).fill(100))
        const more = page.locator("button.more")
        expect(await more.textContent()).toBe("Search older")
        await more.click()
        await poll(() => ids(page)).toEqual(["batch_001700"])
        expect(await found(page).textContent()).toBe("1 batch among the newest 2,000 matches this filter.")
        await page.unroute(/\/v1\/batches(\?.*)?$/)
        await page.locator("#batches-filter").fill("")
        await expectClean(browser)
      }), { timeout: 60_000 })
  })
})
