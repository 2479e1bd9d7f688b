/**
 * The batches list's filter, in headless Chromium: words found in a batch's id, model or metadata and a status keep
 * the batches that match, however far down the list they are (no "More" pressed page after page); the filter is kept
 * across a visit to a batch, and in the address (a link opens the search); a long list is searched a thousand
 * batches at a time ("Search older").
 */
import { describe, expect, layer } from "@effect/vitest"
import { Effect, Layer } from "effect"
import type { Page } from "playwright-core"
import { chatLine, createBatch, sdk, terminal, upload, waitFor } from "./support/Batches.js"
import { BrowserPage } from "./support/Chromium.js"
import { BATCH_LIST, DESKTOP, expectClean, IDLE_LIST_MS, inPage, madeUpBatch, poll, POLL_MS, serveBatches } from "./support/Dashboard.js"
import { baseUrl, testAppWithUpstream } from "./support/TestApp.js"

const rows = (page: Page) => page.locator("table.batches tbody tr")
const ids = (page: Page) => page.locator("table.batches tbody td.id a").allTextContents()
const found = (page: Page) => page.locator("main p.found")

describe("the batches list's filter", () => {
  layer(Layer.merge(testAppWithUpstream(), BrowserPage.layer(DESKTOP)), { excludeTestServices: true, timeout: 60_000 })("in headless Chromium", (it) => {
    it.effect("keeps the batches whose id, model or metadata hold the words and whose status is chosen, from the whole list", () =>
      Effect.gen(function*() {
        const openai = sdk(yield* baseUrl)
        const file = yield* upload(openai, [chatLine("a", "hello")])
        // The oldest first: 26 batches, the needle below the first page of 20, and one whose value only starts as its.
        const needle = yield* createBatch(openai, file.id, { metadata: { sweep: "needle-7", seed: "1" } })
        const longer = yield* createBatch(openai, file.id, { metadata: { sweep: "needle-70" } })
        const others = []
        for (let i = 0; i < 24; i++) others.push(yield* createBatch(openai, file.id, { metadata: { sweep: `hay-${i}` } }))
        for (const b of [needle, longer, ...others]) yield* waitFor(openai, b.id, terminal)
        // A model no upstream serves: named only in its validation's error.
        const unserved = yield* createBatch(openai, (yield* upload(openai, [chatLine("u", "hello", "no-such-model")])).id)
        yield* waitFor(openai, unserved.id, terminal)
        const withFailures = yield* createBatch(openai, (yield* upload(openai, [chatLine("ok", "fine"), chatLine("bad", "[fail:400] no")])).id)
        yield* waitFor(openai, withFailures.id, terminal)
        const cancelled = yield* createBatch(openai, file.id, { metadata: { sweep: "hay-cancelled" } })
        yield* Effect.promise(() => openai.batches.cancel(cancelled.id))
        yield* waitFor(openai, cancelled.id, terminal)

        yield* inPage(async (base, browser) => {
          const { page } = browser
          await page.goto(`${base}/ui`)
          await poll(() => rows(page).count()).toBe(20)
          // Words in any case and order, each found somewhere: the metadata, the model; the whole list read, counted.
          await page.locator("#batches-filter").fill("SIM-model  Needle")
          await poll(() => ids(page)).toEqual([longer.id, needle.id])
          expect(await found(page).textContent()).toBe("2 batches match this filter.")
          expect(await page.locator("button.more").isVisible()).toBe(false)
          // A pair is whole (not needle-70), spaces around its '=' or not; a row's metadata line, copied, finds it.
          await page.locator("#batches-filter").fill("sweep = needle-7")
          await poll(() => ids(page)).toEqual([needle.id])
          expect(await found(page).textContent()).toBe("1 batch matches this filter.")
          await page.locator("#batches-filter").fill("sweep=needle-7, seed=1")
          await poll(() => ids(page)).toEqual([needle.id])
          await page.locator("#batches-filter").fill("model=sim-model sweep=needle-70")
          await poll(() => ids(page)).toEqual([longer.id])
          await page.locator("#batches-filter").fill("no-such-model")
          await poll(() => ids(page)).toEqual([unserved.id])
          // More than a page matches: said so, with what shows the rest (it was said with nothing).
          await page.locator("#batches-filter").fill("hay")
          await poll(() => found(page).textContent()).toBe("20 or more batches match this filter: More shows more.")
          expect(await rows(page).count()).toBe(20)
          // Nothing matches: said, and not as "no batches yet".
          await page.locator("#batches-filter").fill("needle-8")
          await poll(() => found(page).textContent()).toBe("No batch matches this filter.")
          expect(await rows(page).count()).toBe(0)
          expect(await page.locator("main p.empty").isVisible()).toBe(false)
          // By status, and by words with it.
          await page.locator("#batches-filter").fill("")
          await page.locator("#batches-status").selectOption("cancelled")
          await poll(() => ids(page)).toEqual([cancelled.id])
          await page.locator("#batches-filter").fill("sweep=needle-7")
          await poll(() => found(page).textContent()).toBe("No batch matches this filter.")
          await page.locator("#batches-status").selectOption("completed")
          await poll(() => ids(page)).toEqual([needle.id])
          // Kept across a visit to the batch, and Back.
          await page.locator("table.batches tbody td.id a").click()
          await poll(() => page.locator(".heading .status").textContent()).toBe("completed")
          await page.goBack()
          await poll(() => ids(page)).toEqual([needle.id])
          expect(await page.locator("#batches-filter").inputValue()).toBe("sweep=needle-7")
          expect(await page.locator("#batches-status").inputValue()).toBe("completed")
          // The address holds the filter: a link to it opens the search, in a page of its own (an unknown status: any).
          expect(new URL(page.url()).hash).toBe("#/?q=sweep%3Dneedle-7&status=completed")
          // And the links back to the list (the header's would have made a second entry of that address).
          expect(await page.locator("nav a[data-nav=batches]").getAttribute("href")).toBe("#/?q=sweep%3Dneedle-7&status=completed")
          await page.goto(`${base}/ui#/?q=needle-70&status=nonsense`)
          await page.reload()
          await poll(() => ids(page)).toEqual([longer.id])
          expect(await page.locator("#batches-filter").inputValue()).toBe("needle-70")
          expect(await page.locator("#batches-status").inputValue()).toBe("")
          // Batches whose requests failed (a cancel's unrun requests are not failures): completed ones too.
          await page.locator("#batches-filter").fill("")
          await page.locator("#batches-status").selectOption("failures")
          await poll(() => ids(page)).toEqual([withFailures.id])
          // Any status again, no words: the list as it was.
          await page.locator("#batches-filter").fill("")
          await page.locator("#batches-status").selectOption("")
          await poll(() => rows(page).count()).toBe(20)
          expect(await page.locator("button.more").textContent()).toBe("More")
          expect(new URL(page.url()).hash).toBe("#/")
          await expectClean(browser)
        })
      }), { timeout: 60_000 })

    it.effect("searches a long list a thousand batches at a time, saying how far it looked", () =>
      inPage(async (base, browser) => {
        const { page } = browser
        // 2,500 batches served by the page's own route, the match at the 1,700th: beyond a first search.
        const all = Array.from({ length: 2500 }, (_, i) => madeUpBatch(i + 1))
        all[1699]!.metadata = { n: "1700", tag: "wanted" }
        // The newest matches too, and runs: a list showing it refreshes at the running pace (2 s)...
        Object.assign(all[0]!, { status: "in_progress", completed_at: null, metadata: { n: "1", tag: "wanted" } })
        const pages: Array<number> = []
        await serveBatches(page, all, (limit) => pages.push(limit))
        await page.goto(`${base}/ui`)
        await poll(() => rows(page).count()).toBe(20)
        pages.length = 0
        await page.locator("#batches-filter").fill("wanted")
        await poll(() => found(page).textContent()).toBe("1 batch among the newest 1,000 matches this filter.")
        // Pages of 100, ten of them: no more than the step asks.
        expect(pages.slice(0, 10)).toEqual(Array(10).fill(100))
        // ...but a search that reads that far comes again at the idle pace (10 s).
        pages.length = 0
        await page.clock.fastForward(POLL_MS + 100)
        await new Promise((r) => setTimeout(r, 300))
        expect(pages).toEqual([])
        await page.clock.fastForward(IDLE_LIST_MS)
        await poll(() => pages.length).toBe(10)
        const more = page.locator("button.more")
        expect(await more.textContent()).toBe("Search older")
        await more.click()
        await poll(() => ids(page)).toEqual(["batch_000001", "batch_001700"])
        expect(await found(page).textContent()).toBe("2 batches among the newest 2,000 match this filter.")
        // The search as far down for another filter: the status of the same batch.
        await page.locator("#batches-status").selectOption("completed")
        await poll(() => found(page).textContent()).toBe("1 batch among the newest 2,000 matches this filter.")
        expect(await ids(page)).toEqual(["batch_001700"])
        await page.locator("#batches-status").selectOption("")
        await page.unroute(BATCH_LIST)
        await page.locator("#batches-filter").fill("")
        await expectClean(browser)
      }), { timeout: 60_000 })
  })
})
