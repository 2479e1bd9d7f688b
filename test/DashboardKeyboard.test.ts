/**
 * The dashboard for a keyboard and a screen reader, in headless Chromium (from an accessibility audit): a refresh
 * leaves the focus where it was (it had put every row back, and the focus on the page's top every 2 s), and can be
 * paused; "More" and
 * Back from a batch put it on a row; a delete on the next row; the start form's Escape on the button that opened it,
 * and a metadata mistake on its field; the filter's line is read out when it changes, not at each refresh; the key
 * dialog says why it asks, and a cancel leaves the focus on the header's "Enter key".
 */
import { describe, expect, layer } from "@effect/vitest"
import { Effect, Layer, Redacted } from "effect"
import OpenAI from "openai"
import type { Page, Route } from "playwright-core"
import { chatLine, createBatch, terminal, upload, waitFor } from "./support/Batches.js"
import { BrowserPage } from "./support/Chromium.js"
import {
  BATCH_LIST, DESKTOP, expectClean, FILES_POLL_MS, IDLE_LIST_MS, inPage, KEY, madeUpBatch, openWithKey, poll, POLL_MS, serveBatches, shown
} from "./support/Dashboard.js"
import { baseUrl, testAppWithUpstream } from "./support/TestApp.js"

/** The browser's globals, in the functions `page.evaluate` runs in the page (this project's types are Node's). */
declare const document: any
declare const window: any

const rows = (page: Page) => page.locator("table.batches tbody tr")
/** The text of what has the focus, and its tag. */
const focused = (page: Page) => page.evaluate(() => `${document.activeElement?.tagName} ${document.activeElement?.textContent ?? ""}`.trim())

describe("the dashboard for a keyboard and a screen reader", () => {
  layer(Layer.merge(testAppWithUpstream({ apiKeys: [Redacted.make(KEY)] }), BrowserPage.layer(DESKTOP)), { excludeTestServices: true, timeout: 60_000 })(
    "in headless Chromium",
    (it) => {
      it.effect("a refresh keeps the focus; More puts it on the first row added; the filter's line is written once", () =>
        inPage(async (base, browser) => {
          const { page } = browser
          // 45 batches, the newest running: the list is read every 2 s.
          const all = Array.from({ length: 45 }, (_, i) => madeUpBatch(i + 1))
          Object.assign(all[0]!, { status: "in_progress", completed_at: null })
          let reads = 0
          await serveBatches(page, all, () => void reads++)
          // Before the first answer, no table of headers alone (read as an empty list).
          let answer: () => void = () => {}
          const answered = new Promise<void>((resolve) => (answer = resolve))
          const holding = async (route: Route) => {
            await answered
            return route.fallback()
          }
          await page.route(BATCH_LIST, holding)
          await openWithKey(page, base)
          await poll(() => page.locator("h1").textContent()).toBe("Batches")
          expect(await page.locator("table.batches").isVisible()).toBe(false)
          answer()
          await page.unroute(BATCH_LIST, holding)
          await poll(() => rows(page).count()).toBe(20)
          // On the third row's link, through two refreshes (a batch runs: every 2 s): still there.
          await rows(page).nth(2).locator("a").focus()
          const before = reads
          await page.clock.fastForward(POLL_MS + 100)
          await poll(() => reads).toBeGreaterThan(before)
          await page.clock.fastForward(POLL_MS + 100)
          await poll(() => reads).toBeGreaterThan(before + 1)
          expect(await focused(page)).toBe("A batch_000003")
          // Paused (WCAG 2.2.2), the list is read on no timer; resumed, at once.
          const pause = page.getByRole("button", { name: "Pause updates" })
          await pause.click()
          expect(await page.locator("#pause-button").getAttribute("aria-pressed")).toBeNull() // its label says it
          const paused = reads
          await page.clock.fastForward(3 * POLL_MS)
          await new Promise((r) => setTimeout(r, 300))
          expect(reads).toBe(paused)
          await page.getByRole("button", { name: "Resume updates" }).click()
          await poll(() => reads).toBeGreaterThan(paused)

          // "More" by the keyboard: the focus on the first of the rows it added.
          await page.locator("button.more").focus()
          await page.keyboard.press("Enter")
          await poll(() => rows(page).count()).toBe(40)
          await poll(() => focused(page)).toBe("A batch_000021")

          // The filter's line, a live region: written when the words change, not at each refresh.
          await page.locator("#batches-filter").fill("n=5")
          await poll(() => page.locator("main p.found").textContent()).toBe("1 batch matches this filter.")
          await page.locator("main p.found").evaluate((el) => {
            window.foundChanges = 0
            new window.MutationObserver(() => window.foundChanges++).observe(el, { childList: true, characterData: true, subtree: true })
          })
          const quiet = reads
          await page.clock.fastForward(IDLE_LIST_MS)
          await poll(() => reads).toBeGreaterThan(quiet)
          await page.clock.fastForward(IDLE_LIST_MS)
          await poll(() => reads).toBeGreaterThan(quiet + 1)
          expect(await page.evaluate(() => window.foundChanges)).toBe(0)
          await page.locator("#batches-filter").fill("")
          await page.unroute(BATCH_LIST)
          await expectClean(browser)
        }))

      it.effect("Back from a batch puts the focus on its row; a delete on the next row's button; the start form's problems and Escape", () =>
        Effect.gen(function*() {
          const openai = new OpenAI({ baseURL: `${yield* baseUrl}/v1`, apiKey: KEY, maxRetries: 0 })
          const file = yield* upload(openai, [chatLine("a", "hello")], "keyboard.jsonl")
          const batches = []
          for (let i = 0; i < 3; i++) batches.push(yield* createBatch(openai, file.id))
          for (const b of batches) yield* waitFor(openai, b.id, terminal)
          const second = batches[1]!.id // newest first: the second row too
          yield* inPage(async (base, browser) => {
            const { page } = browser
            await openWithKey(page, base)
            await poll(() => rows(page).count()).toBeGreaterThanOrEqual(3)
            await page.getByRole("link", { name: second }).focus()
            await page.keyboard.press("Enter")
            await poll(() => page.locator(".heading .status").textContent()).toBe("completed")
            // Its heading says what it is, not the id alone.
            expect(await page.getByRole("heading", { level: 1 }).textContent()).toBe(`Batch ${second}`)
            await page.goBack()
            await poll(() => focused(page)).toBe(`A ${second}`)
            // Once: the list opened again some other way (the header's link) is on its heading.
            await page.locator("nav a", { hasText: "Files" }).click()
            await page.locator("nav a", { hasText: "Batches" }).click()
            await poll(() => rows(page).count()).toBeGreaterThanOrEqual(3)
            expect(await focused(page)).toBe("H1 Batches")

            // Files: deleting one by the keyboard leaves the focus on the next row's first button.
            await page.locator("nav a", { hasText: "Files" }).click()
            const fileRows = page.locator("table.files-list tbody tr")
            await poll(() => fileRows.count()).toBeGreaterThanOrEqual(2)
            const names = await fileRows.locator("td.name > span").evaluateAll((spans) => spans.map((s: any) => s.firstChild.textContent))
            const next = await fileRows.nth(1).locator("button").first().getAttribute("aria-label")
            page.once("dialog", (d) => void d.accept())
            await fileRows.first().getByRole("button", { name: `Delete ${names[0]}` }).focus()
            await page.keyboard.press("Enter")
            await poll(() => page.evaluate(() => document.activeElement?.getAttribute("aria-label"))).toBe(next)
            // A row deleted elsewhere, its button focused: at the next refresh the focus is on the next row's.
            const label = () => page.evaluate(() => document.activeElement?.getAttribute("aria-label"))
            const elsewhere = await fileRows.first().locator("td.name .sub").textContent()
            const after = await fileRows.nth(1).locator("button").first().getAttribute("aria-label")
            expect(await label()).toBe(await fileRows.first().locator("button").first().getAttribute("aria-label"))
            await openai.files.delete(elsewhere!)
            await shown(page, label, FILES_POLL_MS).toBe(after)
            // An upload the server refuses leaves the focus on its button (a disabled one dropped it to the page).
            await page.route("**/v1/files", (route) =>
              route.request().method() === "POST"
                ? route.fulfill({ status: 400, contentType: "application/json", body: JSON.stringify({ error: { message: "The file is too large.", type: "invalid_request_error", param: "file", code: null } }) })
                : route.fallback())
            await page.locator("#upload-file").setInputFiles({ name: "refused.jsonl", mimeType: "application/jsonl", buffer: Buffer.from(chatLine("r", "x") + "\n") })
            await page.locator("#upload button[type=submit]").focus()
            await page.keyboard.press("Enter")
            await poll(() => page.locator("#upload").textContent()).toContain("The file is too large.")
            expect(await focused(page)).toBe("BUTTON Upload")
            await page.unroute("**/v1/files")

            // The start form: a metadata line that is no pair is said, its field marked and focused; Escape closes
            // the form, and the focus is back on the button that opened it.
            const startButton = page.getByRole("button", { name: "Start batch from keyboard.jsonl" })
            await startButton.focus()
            await page.keyboard.press("Enter")
            await poll(() => page.locator("#batch-endpoint").isEnabled()).toBe(true)
            await page.locator("#batch-metadata").fill("no pair here")
            await page.locator("#start-batch button[type=submit]").click()
            await poll(() => page.locator("#start-batch-said").textContent()).toContain("Metadata lines are key=value")
            expect(await page.locator("#batch-metadata").getAttribute("aria-invalid")).toBe("true")
            expect(await page.evaluate(() => document.activeElement?.id)).toBe("batch-metadata")
            await page.keyboard.press("Escape")
            expect(await page.locator("#start-batch").isVisible()).toBe(false)
            expect(await page.evaluate(() => document.activeElement?.getAttribute("aria-label"))).toBe("Start batch from keyboard.jsonl")
            await expectClean(browser)
          })
        }))

      it.effect("the key dialog says why it asks; cancelled, the focus is on the header's Enter key", () =>
        inPage(async (base, browser) => {
          const { page } = browser
          await page.goto(`${base}/ui/app.css`)
          await page.evaluate(() => window.localStorage.removeItem("openai-batch.api-key"))
          await page.goto(`${base}/ui`)
          const dialog = page.locator("#key-dialog")
          await poll(() => dialog.isVisible()).toBe(true)
          expect(await dialog.getAttribute("aria-describedby")).toBe("key-reason")
          expect(await page.locator("#key-reason").textContent()).not.toBe("")
          // A key no header can carry: said, and the field marked invalid, with the words that say why.
          await page.locator("#key-input").fill("sk with spaces")
          await page.keyboard.press("Enter")
          expect(await page.locator("#key-input").getAttribute("aria-invalid")).toBe("true")
          expect(await page.locator("#key-input").getAttribute("aria-describedby")).toBe("key-problem")
          await page.keyboard.press("Escape")
          await poll(() => focused(page)).toBe("BUTTON Enter key")
          await expectClean(browser)
        }))
    }
  )
})
