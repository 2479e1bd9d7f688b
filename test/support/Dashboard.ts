/**
 * What the dashboard's browser tests share: the test server's key, window sizes, the page's intervals, steps a
 * person takes (opening the page with a key kept, uploading through the form), on Playwright's clock, and a list of
 * made-up batches served by the page's own route.
 */
import { expect } from "@effect/vitest"
import { Effect } from "effect"
import { readFileSync } from "node:fs"
import { createRequire } from "node:module"
import type { Page } from "playwright-core"
import { BrowserPage, violations } from "./Chromium.js"
import { baseUrl } from "./TestApp.js"

/** The browser's globals, in the functions `page.evaluate` runs in the page (this project's types are Node's). */
declare const document: any, window: any, localStorage: any

export const KEY = "sk-dashboard-5e3a9c0d"
export const DESKTOP = { width: 1200, height: 760 }
export const PHONE = { width: 390, height: 844 }
/** The page's refresh intervals (`ui/app.js`, `ui/files.js`), and the batch list's once no batch shown can change (`ui/batchList.js`). */
export const POLL_MS = 2000
export const FILES_POLL_MS = 5000
export const IDLE_LIST_MS = 10_000

/** A test's steps in the shared page, given the test server's base URL. */
export const inPage = (steps: (base: string, browser: BrowserPage["Type"]) => Promise<void>) =>
  Effect.flatMap(Effect.all([baseUrl, BrowserPage]), ([base, browser]) => Effect.promise(() => steps(base, browser)))

/** No script failed, the CSP refused nothing, and no hostile text ran as HTML. */
export const expectClean = async ({ page, problems }: BrowserPage["Type"]) => {
  expect(problems).toEqual([])
  expect(await violations(page)).toEqual([])
  expect(await page.evaluate(() => document.body.dataset.pwned)).toBeUndefined()
}

/** `expect.poll` (vitest's default gives up after 1 s). */
export const poll = <T>(read: () => T | Promise<T>, timeout = 15_000) => expect.poll(read, { timeout, interval: 50 })

/**
 * `expect.poll` of what the page shows, its clock moved on by a refresh's interval at each look: the page's next
 * refresh comes at once rather than up to `every` ms later.
 */
export const shown = <T>(page: Page, read: () => Promise<T>, every = POLL_MS) =>
  expect.poll(async () => {
    await page.clock.fastForward(every)
    return read()
  }, { timeout: 15_000, interval: 100 })

const jsonl = (lines: ReadonlyArray<string>) => Buffer.from(lines.join("\n") + "\n")
export const file = (name: string, lines: ReadonlyArray<string>) => ({ name, mimeType: "application/jsonl", buffer: jsonl(lines) })

/** Uploads `input` through the files page's form; resolves when the start form is open for it. */
export const uploadThroughPage = async (page: Page, input: ReturnType<typeof file>) => {
  await page.goto(`${new URL(page.url()).origin}/ui#/files`)
  await page.locator("#upload-file").setInputFiles(input)
  await page.getByRole("button", { name: "Upload" }).click()
  await poll(() => page.locator("#start-batch").textContent()).toContain(input.name)
}

/** Opens the dashboard with `key` kept already (set from a page of the same origin that runs no script). */
export const openWithKey = async (page: Page, base: string, key = KEY, at = "") => {
  await page.goto(`${base}/ui/app.css`)
  await page.evaluate((k) => localStorage.setItem("openai-batch.api-key", k), key)
  await page.goto(`${base}/ui${at}`)
}

/** Whether the list on screen was read: its rows, or its "nothing yet". */
export const listLoaded = async (page: Page) => (await page.locator("main tbody tr, main p.empty:not([hidden])").count()) > 0
export const noticeOf = (page: Page) => page.locator("#notice").textContent()

/** Whether the page is wider than the window (a horizontal scrollbar). */
export const overflows = (page: Page) => page.evaluate(() => document.documentElement.scrollWidth > window.innerWidth)

/** A batch as the list gives it, made up: `n` newest first, completed, metadata `{ n }`. */
export const madeUpBatch = (n: number) => ({
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
  completed_at: 1_790_000_000 - n as number | null,
  failed_at: null,
  expired_at: null,
  cancelling_at: null,
  cancelled_at: null,
  request_counts: { total: 1, completed: 1, failed: 0 },
  metadata: { n: String(n) } as Record<string, string>
})

/** The list route's URLs, to unroute. */
export const BATCH_LIST = /\/v1\/batches(\?.*)?$/

/** The list route (`GET /v1/batches`) answered from `all`, paged as the API pages; `onRead` is told each page's limit. */
export const serveBatches = (page: Page, all: ReadonlyArray<ReturnType<typeof madeUpBatch>>, onRead: (limit: number) => void = () => {}) =>
  page.route(BATCH_LIST, (route) => {
    const url = new URL(route.request().url())
    const after = url.searchParams.get("after")
    const limit = Number(url.searchParams.get("limit") ?? 20)
    const from = after === null ? 0 : all.findIndex((b) => b.id === after) + 1
    const data = all.slice(from, from + limit)
    onRead(limit)
    return route.fulfill({
      json: { object: "list", data, first_id: data[0]?.id ?? null, last_id: data.at(-1)?.id ?? null, has_more: from + limit < all.length }
    })
  })

/** axe-core's script, read once: evaluated in a page (a page's CSP does not stop what the test runs there). */
let axeSource: string | undefined

/**
 * What axe-core finds on `page` for `rules` (`color-contrast`, `html-has-lang`…): each violation's rule, and for a
 * contrast one its colours and ratio, counted. Empty when none.
 */
export const axeFinds = async (page: Page, rules: ReadonlyArray<string>): Promise<Record<string, number>> => {
  axeSource ??= readFileSync(createRequire(import.meta.url).resolve("axe-core/axe.min.js"), "utf8")
  await page.evaluate(axeSource)
  const found: Array<string> = await page.evaluate(async (runOnly) => {
    const result = await (window as any).axe.run(document, { runOnly })
    return result.violations.flatMap((v: any) => v.nodes.map((n: any) => {
      const data = n.any[0]?.data
      return data?.contrastRatio === undefined ? v.id : `${v.id}: ${data.fgColor} on ${data.bgColor} (${data.contrastRatio}:1)`
    }))
  }, [...rules])
  return found.reduce<Record<string, number>>((counts, what) => ({ ...counts, [what]: (counts[what] ?? 0) + 1 }), {})
}
