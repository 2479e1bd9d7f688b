/**
 * The dashboard's files page in headless Chromium, as a trial used it (API keys on, the upstream simulator): a
 * batch started from the list runs the endpoint its own file names (not the last upload's), with no metadata left
 * from before; files deleted (after a confirmation) to make room, and the list narrowed to a purpose; a long name
 * and long metadata wrapped, at a desktop's width and a phone's; what the forms did told to a screen reader, and
 * focus moved to what changed.
 */
import { describe, expect, layer } from "@effect/vitest"
import { Layer, Redacted } from "effect"
import type { Page } from "playwright-core"
import { chatLine } from "./support/Batches.js"
import { BrowserPage } from "./support/Chromium.js"
import { DESKTOP, expectClean, file, inPage, KEY, openWithKey, overflows, PHONE, poll, shown, uploadThroughPage } from "./support/Dashboard.js"
import { testAppWithUpstream } from "./support/TestApp.js"

/** The browser's globals, in the functions `page.evaluate` runs in the page (this project's types are Node's). */
declare const document: any

const embeddingLine = (id: string) =>
  JSON.stringify({ custom_id: id, method: "POST", url: "/v1/embeddings", body: { model: "sim-model", input: "hello" } })

const fileRow = (page: Page, name: string) => page.locator("table.files-list tbody tr", { hasText: name })
const endpointOf = (page: Page) => page.locator("#batch-endpoint").inputValue()

describe("the dashboard's files page", () => {
  layer(
    Layer.merge(testAppWithUpstream({ apiKeys: [Redacted.make(KEY)] }), BrowserPage.layer(DESKTOP)),
    { excludeTestServices: true, timeout: 60_000 }
  )("in headless Chromium", (it) => {
    it.effect("starts a batch from a listed file with the endpoint of that file's first line, metadata cleared", () =>
      inPage(async (base, browser) => {
        const { page } = browser
        await openWithKey(page, base, KEY, "#/files")
        await uploadThroughPage(page, file("chat.jsonl", [chatLine("c-0", "hi")]))
        await uploadThroughPage(page, file("emb.jsonl", [embeddingLine("e-0"), embeddingLine("e-1")]))
        expect(await endpointOf(page)).toBe("/v1/embeddings")
        await page.locator("#batch-metadata").fill("owner=someone")
        await page.getByRole("button", { name: "Close" }).click()

        // Another file's "Start batch": its own endpoint, and none of the last form's metadata.
        await fileRow(page, "chat.jsonl").getByRole("button", { name: /^Start batch/ }).click()
        await poll(() => endpointOf(page)).toBe("/v1/chat/completions")
        expect(await page.locator("#batch-metadata").inputValue()).toBe("")

        // After a reload (nothing the page remembers), an embeddings file started from the list runs as embeddings.
        await page.reload()
        await fileRow(page, "emb.jsonl").getByRole("button", { name: /^Start batch/ }).click()
        await poll(() => endpointOf(page)).toBe("/v1/embeddings")
        await page.locator("#start-batch").getByRole("button", { name: "Start batch" }).click()
        await page.waitForURL(/#\/batches\/batch_/)
        await shown(page, () => page.locator(".heading .status").textContent()).toBe("completed")
        expect(await page.locator(".counts").textContent()).toBe("2 of 2 done (100%): 2 succeeded, 0 failed")
        await expectClean(browser)
      }))

    it.effect("deletes a file after a confirmation, and shows one purpose's files", () =>
      inPage(async (base, browser) => {
        const { page } = browser
        await openWithKey(page, base, KEY, "#/files")
        await poll(() => fileRow(page, "emb.jsonl").count()).toBe(1)
        // The batch before left an output: "Batch inputs" leaves it out, "Batch outputs and errors" shows only it.
        await page.getByLabel("Files of purpose").selectOption("batch")
        await poll(() => page.locator("table.files-list tbody tr").count()).toBe(2)
        expect(await page.locator("table.files-list tbody").textContent()).not.toContain("batch_output")
        await page.getByLabel("Files of purpose").selectOption("batch_output")
        await poll(() => page.locator("table.files-list tbody tr td:nth-child(2)").allTextContents()).toEqual(["batch_output"])

        await page.getByLabel("Files of purpose").selectOption("")
        let asked = ""
        page.once("dialog", (d) => void ((asked = d.message()), d.dismiss()))
        await fileRow(page, "chat.jsonl").getByRole("button", { name: "Delete chat.jsonl" }).click()
        await poll(() => asked).toContain("chat.jsonl")
        expect(await fileRow(page, "chat.jsonl").count()).toBe(1)
        page.once("dialog", (d) => void d.accept())
        await fileRow(page, "chat.jsonl").getByRole("button", { name: "Delete chat.jsonl" }).click()
        await poll(() => page.getByRole("status").filter({ hasText: "Deleted" }).textContent()).toBe("Deleted chat.jsonl.")
        await poll(() => fileRow(page, "chat.jsonl").count()).toBe(0)
        await expectClean(browser)
      }))

    it.effect("wraps a long name without spaces and long metadata: no horizontal scrolling, no value off the screen; full-width rows", () =>
      inPage(async (base, browser) => {
        const { page } = browser
        await openWithKey(page, base, KEY, "#/files")
        const long = `${"x".repeat(200)}.jsonl`
        await uploadThroughPage(page, file(long, [chatLine("l-0", "hi")]))
        expect(await overflows(page), "the start form").toBe(false)
        await page.locator("#batch-metadata").fill(`${"k".repeat(64)}=${"v".repeat(512)}`)
        await page.locator("#start-batch").getByRole("button", { name: "Start batch" }).click()
        await page.waitForURL(/#\/batches\/batch_/)
        const batch = page.url()
        for (const size of [{ width: 1280, height: 800 }, PHONE]) {
          await page.setViewportSize(size)
          await page.goto(`${base}/ui#/files`)
          await poll(() => fileRow(page, long).count()).toBe(1)
          expect(await overflows(page), `files at ${size.width}`).toBe(false)
          await page.goto(batch)
          await poll(() => page.locator(".metadata").isVisible()).toBe(true)
          expect(await overflows(page), `batch at ${size.width}`).toBe(false)
          // Every metadata value starts within the window, and its box is no taller than its text needs.
          const box = await page.locator(".metadata dd").boundingBox()
          expect(box!.x + 40).toBeLessThan(size.width)
          expect(box!.height).toBeLessThan(400)
          if (size.width > PHONE.width) {
            // The row of the file it has none of (errors) spans the table, its border too (once it ended: a busy
            // machine may show it running, both rows "when the batch ends").
            await shown(page, () => page.locator(".heading .status").textContent()).toBe("completed")
            const [none, table] = await Promise.all([page.locator("table.files td[colspan]").boundingBox(), page.locator("table.files").boundingBox()])
            expect(none!.x + none!.width).toBeCloseTo(table!.x + table!.width, 0)
          }
        }
        await page.setViewportSize(DESKTOP)
        await expectClean(browser)
      }))

    it.effect("tells a screen reader what the forms did, and moves focus to what changed; a skip link, the page named", () =>
      inPage(async (base, browser) => {
        const { page } = browser
        await openWithKey(page, base, KEY, "#/files")
        await uploadThroughPage(page, file("spoken.jsonl", [chatLine("s-0", "hi")]))
        // The upload's outcome is in a live region; the start form that opened has the focus.
        expect(await page.getByRole("status").filter({ hasText: "Uploaded as file-" }).count()).toBe(1)
        await poll(() => page.evaluate(() => document.activeElement.closest("#start-batch") !== null)).toBe(true)
        // The section open is the current page; a new view's heading takes the focus.
        expect(await page.getByRole("link", { name: "Files" }).getAttribute("aria-current")).toBe("page")
        await page.getByRole("link", { name: "Batches", exact: true }).click()
        // The view's heading, not the link just clicked (its text is the same, and it has the focus at once).
        await poll(() => page.evaluate(() => document.activeElement.closest("#view") === null ? "" : document.activeElement.textContent)).toBe("Batches")
        expect(await page.getByRole("link", { name: "Files" }).getAttribute("aria-current")).toBeNull()
        // Opened afresh, the first Tab reaches "Skip to content", which takes the focus to the view (the hash stays).
        await page.reload()
        await page.keyboard.press("Tab")
        expect(await page.evaluate(() => document.activeElement.textContent)).toBe("Skip to content")
        await page.keyboard.press("Enter")
        expect(await page.evaluate(() => document.activeElement.id)).toBe("view")
        expect(new URL(page.url()).hash).toBe("#/")
        await expectClean(browser)
      }))
  })
})
