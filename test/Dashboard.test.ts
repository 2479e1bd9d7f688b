/**
 * The `/ui` dashboard driven in headless Chromium as a person uses it, against the real app (API keys on) and the
 * upstream simulator: the key asked for (one no header can carry refused, a wrong one refused and not kept), a file uploaded
 * and a batch started through the forms, its bar filling to 100 % and its output saved with its progress shown; a
 * slow batch cancelled with the button, a poll answered late not undoing it; batches and files made elsewhere
 * appearing without a reload, and no polling while the tab is hidden; a hung call holding nothing up, and
 * failures backing off; hostile metadata and file names shown as text; validation problems listed; no horizontal
 * scrolling at phone width; and `/docs` rendering under its Content-Security-Policy.
 *
 * The page runs on Playwright's clock: the tests move it on instead of waiting for the page's 2 s (5 s) refreshes
 * and 30 s time limit. Screenshots go to `UI_SCREENSHOTS_DIR` (`npm run screenshots` writes the README's, in
 * docs/screenshots), taken where only ordinary names are on screen.
 */
import { describe, expect, layer } from "@effect/vitest"
import { Effect, Layer, Redacted } from "effect"
import { mkdirSync, readFileSync } from "node:fs"
import * as Path from "node:path"
import OpenAI from "openai"
import type { Page } from "playwright-core"
import { chatLine, createBatch, upload } from "./support/Batches.js"
import { BrowserPage, violations } from "./support/Chromium.js"
import {
  axeFinds, DESKTOP, expectClean, file, FILES_POLL_MS, IDLE_LIST_MS, inPage, KEY, listLoaded, noticeOf, openWithKey, overflows, PHONE, poll, POLL_MS, shown,
  uploadThroughPage
} from "./support/Dashboard.js"
import { testAppWithUpstream } from "./support/TestApp.js"

/** The browser's globals, in the functions `page.evaluate` runs in the page (this project's types are Node's). */
declare const document: any, window: any, localStorage: any, getComputedStyle: any, MutationObserver: any

/** A key no HTTP header can carry (not Latin-1). */
const UNSENDABLE = "sk-ключ-42"
const root = Path.resolve(import.meta.dirname, "..")
const screenshots = Path.resolve(root, process.env.UI_SCREENSHOTS_DIR ?? ".screenshots")
/** The page's calls' time limit (`ui/api.js`). */
const CALL_TIMEOUT_MS = 30_000
/**
 * What hostile metadata or file names would run if the page parsed them as HTML (no quotes: a browser escapes them
 * in a form's file name).
 */
const HOSTILE = "<img src=x onerror=document.body.dataset.pwned=1>"

/** A PNG of the page: the window, the whole page, or its top `height` pixels. */
const shot = (page: Page, name: string, size: "window" | "full" | { readonly height: number } = "window") =>
  page.screenshot({
    path: Path.join(screenshots, `${name}.png`),
    type: "png",
    fullPage: size === "full",
    ...(typeof size === "object" ? { clip: { x: 0, y: 0, width: DESKTOP.width, height: size.height } } : {})
  })

/** Uploads `input` through the page and starts its batch; resolves on the batch's page with its id. */
const startBatch = async (page: Page, input: ReturnType<typeof file>, metadata = "") => {
  await uploadThroughPage(page, input)
  expect(await page.locator("#batch-endpoint").inputValue()).toBe("/v1/chat/completions")
  await page.locator("#batch-metadata").fill(metadata)
  await page.getByRole("button", { name: "Start batch" }).first().click()
  await page.waitForURL(/#\/batches\/batch_/)
  return decodeURIComponent(page.url().split("#/batches/")[1]!)
}

const statusOf = (page: Page) => page.locator(".heading .status").textContent()

/** Records every text `selector` shows from now on, in the page's `window.texts`. */
const recordTexts = (page: Page, selector: string) =>
  page.locator(selector).first().evaluate((el) => {
    window.texts = [el.textContent]
    new MutationObserver(() => window.texts.push(el.textContent)).observe(el, { childList: true, characterData: true, subtree: true })
  })
const recordedTexts = (page: Page): Promise<Array<string>> => page.evaluate(() => window.texts)

/** The bar's filled share (0–1) as drawn: its parts' widths over the track's (polled: the width moves in 0.4 s). */
const barFill = (page: Page, selector: string) =>
  page.locator(selector).first().evaluate((bar) => {
    const parts = [...bar.children].reduce((sum, part) => sum + part.getBoundingClientRect().width, 0)
    return parts / bar.getBoundingClientRect().width
  })

describe("the dashboard", () => {
  mkdirSync(screenshots, { recursive: true })
  layer(
    Layer.merge(testAppWithUpstream({ apiKeys: [Redacted.make(KEY)], maxConcurrentBatches: 4 }), BrowserPage.layer(DESKTOP)),
    { excludeTestServices: true, timeout: 60_000 }
  )("in headless Chromium, with API keys on", (it) => {
    it.effect("asks for a key it can send, uploads, starts a batch, shows it reach 100 % and saves its output", () =>
      inPage(async (base, browser) => {
        const { page } = browser
        await page.goto(`${base}/ui`)
        // No key kept: the first call's 401 opens the dialog.
        const dialog = page.locator("#key-dialog")
        await poll(() => dialog.isVisible()).toBe(true)
        expect(await page.locator("#key-reason").textContent()).toBe("This server needs an API key.")
        // A key no header can carry is refused in the dialog, which stays open.
        await page.locator("#key-input").fill(UNSENDABLE)
        await page.locator("#key-input").press("Enter")
        expect(await page.locator("#key-problem").textContent()).toContain("printable ASCII")
        expect(await dialog.isVisible()).toBe(true)
        // Dismissed, it stays closed (no prompt at every refresh) until the header's "Enter key".
        await page.getByRole("button", { name: "Cancel" }).click()
        // No key was sent: the notice says one is needed (not that a key was refused).
        await poll(() => noticeOf(page)).toBe("This server needs an API key: enter one to go on.")
        expect(await dialog.isVisible()).toBe(false)
        await page.getByRole("button", { name: "Enter key" }).click()
        await poll(() => dialog.isVisible()).toBe(true)
        expect(await page.locator("#key-problem").isVisible()).toBe(false)
        // A wrong key is refused by the server and asked for again.
        await page.locator("#key-input").fill("sk-wrong")
        await page.locator("#key-input").press("Enter")
        await poll(() => page.locator("#key-reason").textContent()).toBe("The server refused this key.")
        // Dismissed then, the refused key is not kept, and the header offers to enter one: its first click asks.
        await page.getByRole("button", { name: "Cancel" }).click()
        await poll(() => noticeOf(page)).toContain("Enter an API key to go on.")
        expect(await page.evaluate(() => localStorage.getItem("openai-batch.api-key"))).toBeNull()
        await page.getByRole("button", { name: "Enter key" }).click()
        await poll(() => dialog.isVisible()).toBe(true)
        await page.locator("#key-input").fill(KEY)
        await page.getByRole("button", { name: "Use this key" }).click()
        await poll(() => page.locator("main .empty").isVisible()).toBe(true)
        expect(await dialog.isVisible()).toBe(false)
        expect(page.url()).toBe(`${base}/ui/`)
        expect(await page.evaluate(() => localStorage.getItem("openai-batch.api-key"))).toBe(KEY)
        expect(await page.locator("#key-button").textContent()).toBe("Forget key")

        const lines = Array.from({ length: 24 }, (_, i) => chatLine(`req-${i}`, `question ${i}`))
        const id = await startBatch(page, file("requests.jsonl", lines), "project=demo\nowner=data-team")
        await shown(page, () => statusOf(page)).toBe("completed")
        const bar = page.locator(".big [role=progressbar]")
        expect(await bar.getAttribute("aria-valuenow")).toBe("100")
        await poll(() => barFill(page, ".big .bar")).toBeCloseTo(1, 2)
        expect(await page.locator(".counts").textContent()).toBe("24 of 24 done (100%): 24 succeeded, 0 failed")
        expect(await page.locator("table.timing").textContent()).toContain("in progress")
        expect(await page.locator(".metadata").textContent()).toBe("projectdemoownerdata-team")
        await shot(page, "batch", "full")

        // The output, saved through the page (fetched with the key, saved as a Blob under its name), its
        // progress shown meanwhile (not read out: aria-hidden), bytes of the size the server gave; then said saved.
        const output = page.locator("button[data-file=output]")
        await recordTexts(page, "button[data-file=output] ~ .said[aria-hidden=true]")
        const [download] = await Promise.all([page.waitForEvent("download"), output.click()])
        expect(download.suggestedFilename()).toBe(`${id}_output.jsonl`)
        const saved = readFileSync((await download.path())!, "utf8").split("\n").filter((l) => l !== "").map((l) => JSON.parse(l))
        expect(saved.map((l) => l.custom_id).sort()).toEqual(lines.map((_, i) => `req-${i}`).sort())
        expect(saved.every((l) => l.response.status_code === 200 && l.error === null)).toBe(true)
        const size = (await page.locator("table.files tr", { has: output }).locator(".num").textContent())!
        expect(await recordedTexts(page)).toContain(`${size} of ${size} (100%)`)
        await poll(() => page.locator("button[data-file=output] + .said").textContent()).toBe(`Saved ${id}_output.jsonl.`)
        // The button kept its focus (disabled while busy, it had dropped a keyboard user's to the page).
        expect(await page.evaluate(() => document.activeElement?.getAttribute("data-file"))).toBe("output")

        // The list shows it done, at 100 %.
        await page.locator("nav a", { hasText: "Batches" }).click()
        const rows = page.locator("table.batches tbody tr")
        await poll(() => rows.count()).toBe(1)
        expect(await page.locator("table.batches tbody tr .status").textContent()).toBe("completed")
        await poll(() => barFill(page, "table.batches .bar")).toBeCloseTo(1, 2)
        expect(await page.locator("table.batches tbody tr").textContent()).toContain("24/24")
        await expectClean(browser)
      }))

    it.effect("cancels a slow batch (a poll answered late does not undo it); the lists follow what is made elsewhere", () =>
      inPage(async (base, browser) => {
        const { page } = browser
        // A kept key no header can carry (typed before the dialog checked keys): asked for again.
        await openWithKey(page, base, UNSENDABLE)
        await poll(() => page.locator("#key-dialog").isVisible()).toBe(true)
        expect(await page.locator("#key-reason").textContent()).toContain("This key cannot be sent")
        await page.locator("#key-input").fill(KEY)
        await page.locator("#key-input").press("Enter")
        await poll(() => listLoaded(page)).toBe(true)
        expect(await page.evaluate(() => localStorage.getItem("openai-batch.api-key"))).toBe(KEY)

        // 12 requests answer at once, 18 sleep far longer than the test: the batch sits at 40 %.
        const lines = Array.from({ length: 30 }, (_, i) => chatLine(`slow-${i}`, i < 12 ? `quick ${i}` : `slow ${i} [sleep:60000]`))
        const id = await startBatch(page, file("slow.jsonl", lines), "project=demo")
        await shown(page, () => page.locator(".counts").textContent()).toMatch(/^12 of 30 done \(40%\)/)
        expect(await statusOf(page)).toBe("in progress")
        await poll(() => barFill(page, ".big .bar")).toBeCloseTo(0.4, 2)

        // The list, live: a batch created through the API elsewhere shows up without a reload.
        await page.locator("nav a", { hasText: "Batches" }).click()
        const rows = page.locator("table.batches tbody tr")
        await poll(() => rows.first().textContent()).toContain(id)
        const before = await rows.count()
        const openai = new OpenAI({ baseURL: `${base}/v1`, apiKey: KEY, maxRetries: 0 })
        const elsewhere = upload(openai, [chatLine("x-0", "elsewhere")], "elsewhere.jsonl")
        const other = await Effect.runPromise(Effect.flatMap(elsewhere, (f) => createBatch(openai, f.id)))
        await shown(page, () => rows.count()).toBe(before + 1)
        await poll(() => rows.first().textContent()).toContain(other.id)
        await poll(() => rows.first().locator(".status").textContent()).toBe("completed")
        await poll(() => barFill(page, "table.batches .bar")).toBeCloseTo(1, 2) // its width moves in 0.4 s
        await shot(page, "batches", { height: 420 })

        // A hidden tab polls nothing, however long; shown again, it refreshes at once.
        let polls = 0
        const counted = (r: { url: () => string }) => void (r.url().includes("/v1/batches") && polls++)
        page.on("request", counted)
        const setHidden = (hidden: boolean) =>
          page.evaluate((h) => {
            Object.defineProperty(document, "hidden", { value: h, configurable: true })
            Object.defineProperty(document, "visibilityState", { value: h ? "hidden" : "visible", configurable: true })
            document.dispatchEvent(new Event("visibilitychange"))
          }, hidden)
        await setHidden(true)
        polls = 0
        await page.clock.fastForward(60_000)
        await page.waitForTimeout(100)
        expect(polls).toBe(0)
        await setHidden(false)
        await poll(() => polls, 1000).toBeGreaterThan(0)
        page.off("request", counted)

        // The files page, live too (every 5 s): a file uploaded elsewhere shows up.
        await page.locator("nav a", { hasText: "Files" }).click()
        const fileRows = page.locator("table.files-list tbody tr")
        await poll(() => page.locator("table.files-list").textContent()).toContain("elsewhere.jsonl")
        await Effect.runPromise(upload(openai, [chatLine("n-0", "later")], "later.jsonl"))
        await shown(page, () => fileRows.first().textContent(), FILES_POLL_MS).toContain("later.jsonl")
        await fileRows.filter({ hasText: "slow.jsonl" }).getByRole("button", { name: "Start batch" }).click()
        await poll(() => page.locator("#start-batch").textContent()).toContain("slow.jsonl")
        await shot(page, "files")

        // Cancel, with the button (after its confirmation), while a poll read before it is answered after it.
        await page.goto(`${base}/ui#/batches/${id}`)
        await poll(() => page.getByRole("button", { name: "Cancel batch" }).isVisible()).toBe(true)
        let fetched!: () => void
        let release!: () => void
        const polled = new Promise<void>((resolve) => (fetched = resolve))
        const held = new Promise<void>((resolve) => (release = resolve))
        await page.route(`${base}/v1/batches/${id}`, async (route) => {
          const answer = await route.fetch()
          fetched()
          await held
          await route.fulfill({ response: answer })
        }, { times: 1 })
        await page.clock.fastForward(POLL_MS)
        await polled
        await recordTexts(page, ".heading .status")
        let asked = ""
        page.once("dialog", (d) => {
          asked = d.message()
          void d.accept()
        })
        await Promise.all([
          page.waitForResponse((r) => r.url().endsWith("/cancel")),
          page.getByRole("button", { name: "Cancel batch" }).click()
        ])
        // The cancel's answer taken in (its "Cancelling…" cleared), the older poll's answer comes.
        await poll(() => page.locator(".heading .said").textContent()).toBe("")
        release()
        await shown(page, () => statusOf(page)).toBe("cancelled")
        const statuses = await recordedTexts(page)
        expect(statuses.slice(statuses.findIndex((s) => s.startsWith("cancel")))).not.toContain("in progress")
        expect(asked).toContain(id)
        expect(await page.getByRole("button", { name: "Cancel batch" }).isVisible()).toBe(false)
        expect(await page.locator("table.timing").textContent()).toContain("cancelling")
        expect(await page.locator(".counts").textContent()).toMatch(/^30 of 30 done|^12 of 30 done/)

        // Back from a batch opened far down the list: the list shows the rows it had (past its first 20), where it
        // was scrolled (it showed the first 20, at the top).
        const { id: fileId } = await Effect.runPromise(upload(openai, [chatLine("b-0", "back")], "back.jsonl"))
        for (let i = 0; i < 20; i++) await Effect.runPromise(createBatch(openai, fileId))
        await page.locator("nav a", { hasText: "Batches" }).click()
        await poll(() => rows.count()).toBe(20)
        await page.getByRole("button", { name: "More" }).click()
        await poll(() => rows.count()).toBe(before + 21)
        const last = rows.last().locator("a").first()
        await last.scrollIntoViewIfNeeded()
        const scrolled = await page.evaluate(() => window.scrollY)
        expect(scrolled).toBeGreaterThan(0)
        const opened = await last.textContent()
        await last.click()
        await poll(() => page.locator("h1").first().textContent()).toContain(opened!)
        await page.goBack()
        await poll(() => rows.count()).toBe(before + 21)
        await poll(() => page.evaluate(() => window.scrollY)).toBe(scrolled)
        await expectClean(browser)
      }))

    it.effect("a hung call holds nothing up: another view opens at once, and after 30 s it fails and polling goes on; failures back off", () =>
      inPage(async (base, browser) => {
        const { page } = browser
        await openWithKey(page, base)
        await poll(() => listLoaded(page)).toBe(true)
        const lists = `${base}/v1/batches?*`
        let asked = 0
        // The server takes the calls and never answers. (The list's batches may all have ended: its slowest pace.)
        await page.route(lists, () => void asked++)
        await page.clock.fastForward(IDLE_LIST_MS)
        await poll(() => asked).toBe(1)
        // Left, the view's call is dropped: the files page loads at once.
        await page.locator("nav a", { hasText: "Files" }).click()
        await poll(() => listLoaded(page)).toBe(true)
        // Staying, the call fails at its time limit, said so, and the next refresh (after a back-off) gets through.
        await page.locator("nav a", { hasText: "Batches" }).click()
        await poll(() => asked).toBe(2)
        await page.clock.fastForward(CALL_TIMEOUT_MS)
        await poll(() => noticeOf(page)).toBe("The server did not answer within 30 s.")
        await page.unroute(lists)
        await shown(page, () => page.locator("#notice").isVisible()).toBe(false)
        expect(await listLoaded(page)).toBe(true)

        // A 503 asking for 8 s: the next call comes after 8 s, not after the page's own back-off (its pace doubled: 4 s
        // while batches run, 20 s once all have ended). The page's clock runs on in real time: the checks come soon.
        asked = 0
        await page.route(lists, (route) => {
          asked++
          return route.fulfill({
            status: 503,
            headers: { "retry-after": "8" },
            json: { error: { message: "Overloaded, try later.", type: "server_error", param: null, code: null } }
          })
        })
        await page.clock.fastForward(IDLE_LIST_MS)
        await poll(() => noticeOf(page)).toBe("Overloaded, try later.")
        await page.clock.fastForward(6_000)
        await page.waitForTimeout(200)
        expect(asked).toBe(1)
        await page.clock.fastForward(2_500)
        await poll(() => asked, 3_000).toBe(2)
        await page.unroute(lists)
        await shown(page, () => page.locator("#notice").isVisible()).toBe(false)

        // A rate limit's 429 asking for 265 ms (the list idle, read every 10 s): tried again after 265 ms, not 20 s.
        asked = 0
        await page.route(lists, (route) => {
          asked++
          return asked > 1 ? route.fallback() : route.fulfill({
            status: 429,
            headers: { "retry-after": "1", "retry-after-ms": "265" },
            json: { error: { message: "Please try again in 265ms.", type: "requests", param: null, code: "rate_limit_exceeded" } }
          })
        })
        await page.clock.fastForward(IDLE_LIST_MS)
        await poll(() => noticeOf(page)).toBe("Please try again in 265ms.")
        await page.clock.fastForward(300)
        await poll(() => asked).toBe(2)
        await page.unroute(lists)
        await shown(page, () => page.locator("#notice").isVisible()).toBe(false)
        await expectClean(browser)
      }))

    it.effect("shows validation problems, hostile names and metadata as text, offers a file's own endpoint, fits a phone", () =>
      inPage(async (base, browser) => {
        const { page } = browser
        await page.unrouteAll({ behavior: "ignoreErrors" }) // what a failed test before may have left
        await openWithKey(page, base)
        // A server with EXTRA_BATCH_ENDPOINTS runs more than the picker lists: the file's own is offered.
        const rerank = JSON.stringify({ custom_id: "r-1", method: "POST", url: "/v1/rerank", body: { model: "m", query: "q" } })
        await uploadThroughPage(page, file("rerank.jsonl", [rerank]))
        expect(await page.locator("#batch-endpoint").inputValue()).toBe("/v1/rerank")

        // More bad lines than the batch lists: the server's count of the rest is shown too.
        const input = file(`${HOSTILE}.jsonl`, [chatLine("ok-1", "fine"), ...Array.from({ length: 1100 }, () => "{not json")])
        const id = await startBatch(page, input, `project=demo\nnote=${HOSTILE}\ntrick=\u202Etxt.exe`)
        await shown(page, () => statusOf(page)).toBe("failed")
        expect(await page.locator(".problems li").first().textContent()).toContain("line 2")
        expect(await page.locator(".problems").textContent()).toContain("invalid_json_line")
        expect(await page.locator(".problems h2").textContent()).toMatch(/^Problems \([\d,]+ and more\)$/)
        expect(await page.locator(".problems").textContent()).toMatch(/[\d,]+ more listed in the batch\d+ more problems were found and are not listed\./)
        // The metadata and the file's name are text: the <img> is shown, never made (so its onerror never runs).
        expect(await page.locator(".metadata").textContent()).toContain(HOSTILE)
        expect(await page.locator("table.files").textContent()).toContain(`${HOSTILE}.jsonl`)
        expect(await page.locator("main img").count()).toBe(0)
        // A right-to-left override shows as what it is: it cannot make "txt.exe" read "exe.txt".
        expect(await page.locator(".metadata").textContent()).toContain("⟨U+202E⟩txt.exe")
        expect(await page.locator("main").textContent()).not.toContain("\u202E")

        await page.locator("nav a", { hasText: "Files" }).click()
        const hostileRow = page.locator("table.files-list tbody tr", { hasText: `${HOSTILE}.jsonl` })
        await poll(() => hostileRow.count()).toBe(1)
        // A listed file's "Start batch" opens the form for it.
        // Its buttons are named for the file (a screen reader hears more than a column of "Start batch").
        expect(await hostileRow.getByRole("button", { name: `Download ${HOSTILE}.jsonl`, exact: true }).count()).toBe(1)
        await hostileRow.getByRole("button", { name: `Start batch from ${HOSTILE}.jsonl`, exact: true }).click()
        await poll(() => page.locator("#start-batch").textContent()).toContain(`${HOSTILE}.jsonl`)
        expect(await page.locator("main img").count()).toBe(0)

        // A phone, and a desktop of 1440 px zoomed to 200 %.
        for (const size of [{ width: 720, height: 800 }, PHONE]) {
          await page.setViewportSize(size)
          for (const [hash, ready] of [["#/", "table.batches"], ["#/files", "table.files-list"], [`#/batches/${id}`, ".problems"]]) {
            await page.goto(`${base}/ui${hash}`)
            await poll(() => page.locator(`${ready}:not([hidden])`).count()).toBe(1)
            expect(await overflows(page), `${hash} at ${size.width} px`).toBe(false)
          }
          // Cards there too: the table's seven columns overflowed 720 px by 19 with a running batch's figures.
          await page.goto(`${base}/ui#/`)
          await poll(() => page.locator("table.batches tbody tr").count()).toBeGreaterThan(0)
          expect(await page.locator("table.batches thead").isVisible(), `${size.width} px`).toBe(false)
        }
        await page.goto(`${base}/ui#/`)
        await poll(() => page.locator("table.batches tbody tr").count()).toBeGreaterThan(0)
        // A row tells its batch from the others by its metadata too (the failed one has no model: none validated).
        expect(await page.locator("table.batches tbody tr", { hasText: id }).locator("td.id .sub").textContent()).toMatch(/^\/v1\/chat\/completions · project=demo, note=/)
        // The table turned into cards: one batch a card, its labels beside its values.
        expect(await page.locator("table.batches thead").isVisible()).toBe(false)
        expect(await page.locator("table.batches tbody tr").first().evaluate((tr) => getComputedStyle(tr).display)).not.toBe("table-row")
        await shot(page, "phone")

        // Every batch listed has ended: the list is read every 10 s, not every 2 s.
        await page.setViewportSize(DESKTOP)
        const listReads: Array<string> = []
        const noted = (r: { url: () => string }) => void (r.url().includes("/v1/batches?") && listReads.push(r.url()))
        page.on("request", noted)
        await page.clock.fastForward(POLL_MS + 100)
        await page.clock.fastForward(POLL_MS + 100)
        expect(listReads).toEqual([])
        await page.clock.fastForward(IDLE_LIST_MS)
        await poll(() => listReads.length).toBe(1)
        page.off("request", noted)
        // `.`, `..` and a blank are no batch ids (the browser would ask for /v1/batches/, the list): the list is shown.
        for (const dots of [".", "..", "%2e", "%20"]) {
          await page.goto(`${base}/ui#/batches/${dots}`)
          await poll(() => page.locator("table.batches tbody tr").count()).toBeGreaterThan(0)
        }
        // An id pasted with the spaces around it is the batch's.
        await page.goto(`${base}/ui#/batches/%20${id}%20`)
        await poll(() => page.locator(".problems").isVisible()).toBe(true)
        // A link's text that can be no id is not shown as the page's heading (a phishing sentence): the list instead.
        for (const words of ["Your%20session%20expired%2C%20paste%20your%20key%20at%20evil.example", "Session-expired_paste-your-key-at-evil-example"]) {
          await page.goto(`${base}/ui#/batches/${words}`)
          await poll(() => page.locator("h1").textContent()).toBe("Batches")
          expect((await page.locator("body").textContent())!.toLowerCase()).not.toContain("session")
        }

        // "Forget key" removes it from the browser, and what it showed with it; the next refresh asks again.
        await page.getByRole("button", { name: "Forget key" }).click()
        expect(await page.evaluate(() => localStorage.getItem("openai-batch.api-key"))).toBeNull()
        expect(await page.locator("table.batches tbody tr").count()).toBe(0)
        await shown(page, () => page.locator("#key-dialog").isVisible()).toBe(true)
        // Declined, the focus is on the header's "Enter key" (not on the view's heading the browser gave it back to).
        await page.keyboard.press("Escape")
        await poll(() => page.evaluate(() => `${document.activeElement?.tagName} ${document.activeElement?.textContent}`)).toBe("BUTTON Enter key")
        await expectClean(browser)
        await page.setViewportSize(DESKTOP)
      }))

    it.effect("/docs renders the API reference under its Content-Security-Policy, fetching nothing from elsewhere", () =>
      inPage(async (base, { page, problems }) => {
        const elsewhere: Array<string> = []
        const noted = (r: { url: () => string }) => void (!r.url().startsWith(`${base}/`) && !r.url().startsWith("data:") && elsewhere.push(r.url()))
        page.on("request", noted)
        await page.goto(`${base}/docs`)
        expect(await page.locator("html").getAttribute("lang")).toBe("en") // a screen reader reads it as English
        await poll(() => page.getByRole("heading", { name: "OpenAI-compatible Files and Batches" }).isVisible()).toBe(true)
        await poll(() => page.getByText("Liveness check").first().isVisible()).toBe(true)
        // An operation opened from the sidebar: its parameters and answers drawn.
        await page.getByText("Batches", { exact: true }).first().click()
        await page.getByText("Retrieve a batch").first().click()
        await poll(() => page.getByRole("heading", { name: "Retrieve a batch" }).isVisible()).toBe(true)
        await poll(() => page.getByText("Path Parameters").first().isVisible()).toBe(true)
        page.off("request", noted)
        expect(elsewhere).toEqual([])
        // Text at WCAG AA's contrast in both schemes (Scalar's own greys and method colours were 3.3–4.4:1).
        expect(await axeFinds(page, ["color-contrast", "html-has-lang"])).toEqual({})
        await page.emulateMedia({ colorScheme: "dark" })
        await poll(() => page.locator(".dark-mode").count()).toBeGreaterThan(0)
        expect(await axeFinds(page, ["color-contrast"])).toEqual({})
        await page.emulateMedia({ colorScheme: "light" })
        expect(problems).toEqual([])
        // Scalar probes for `new Function` (and copes without it): the one thing the policy refuses.
        expect((await violations(page)).filter((v) => v !== "script-src eval")).toEqual([])
      }))
  })
})
