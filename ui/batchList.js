// @ts-check
/**
 * The batches page (`#/`): newest first, a row per batch with its live progress, counts, tokens, age and run
 * time. "More" follows OpenAI's `after` cursor; each refresh reads again as many batches as are shown, from the
 * top, so the rows already loaded stay live and new batches appear above: at the page's pace while one of them
 * runs, every 10 s once all have ended (batches made elsewhere still show up, at a sixth of the requests). Left and
 * opened again (Back from a batch), it shows as many rows as it had, scrolled where it was.
 */
import { json, query } from "./api.js"
import { fill, h, headings, progressBar, setStatus } from "./dom.js"
import { ago, batchSubline, count, duration, endedAt, failedMayBeUnrun, runTime, tokens } from "./format.js"

/** @typedef {import("./api.js").Batch} Batch */

const PAGE = 20
/** The refresh pace while no batch shown can change any more. */
const IDLE_EVERY_MS = 10_000
/** The API's largest page. */
const MAX_PAGE = 100
/** What the list showed when it was left, for the next time it opens (Back from a batch reset it to the top 20). */
const left = { shown: PAGE, scrollY: 0 }

/** @param {string} id */
export const batchHref = (id) => `#/batches/${encodeURIComponent(id)}`

/**
 * Batches from the top of the list until `wanted` are read (or there are no more), in pages of at most 100.
 * @param {number} wanted
 * @param {AbortSignal} signal
 * @returns {Promise<{ batches: Batch[], hasMore: boolean }>}
 */
const readBatches = async (wanted, signal) => {
  /** @type {Batch[]} */
  const batches = []
  /** @type {string | undefined} */
  let cursor
  for (;;) {
    /** @type {import("./api.js").Page<Batch>} */
    const page = await json(`/v1/batches${query({ limit: Math.min(MAX_PAGE, wanted - batches.length), after: cursor })}`, { signal })
    batches.push(...page.data)
    if (!page.has_more || batches.length >= wanted || page.last_id === null) return { batches, hasMore: page.has_more }
    cursor = page.last_id
  }
}

/** A table cell with its label (shown beside the value when the table turns into cards on a phone). */
const cell = (/** @type {string} */ label, /** @type {string} */ className = "") => h("td", { className, dataset: { label } })

/** One batch's row; `update` rewrites its figures in place, so the bar's width moves rather than jumps. */
const batchRow = () => {
  const link = h("a")
  const endpoint = h("span", { className: "sub" })
  const status = h("span")
  const bar = progressBar()
  const done = h("span", { className: "sub" })
  const failed = cell("Failed", "num")
  const used = cell("Tokens", "num")
  const age = cell("Created")
  const took = cell("Duration")
  const el = h(
    "tr",
    {},
    h("td", { className: "id", dataset: { label: "Batch" } }, link, endpoint),
    h("td", { dataset: { label: "Status" } }, status),
    h("td", { className: "progress", dataset: { label: "Progress" } }, bar.el, done),
    failed,
    used,
    age,
    took
  )
  /** @param {Batch} b */
  const update = (b) => {
    const { total, completed, failed: failures } = b.request_counts
    link.textContent = b.id
    link.href = batchHref(b.id)
    endpoint.textContent = batchSubline(b)
    setStatus(status, b.status)
    bar.update(b)
    done.textContent = total > 0 ? `${count(completed + failures)}/${count(total)}` : "–"
    failed.textContent = count(failures)
    // Not red when they may be requests a cancel or an expiry left unrun.
    failed.classList.toggle("has-failed", failures > 0 && !failedMayBeUnrun(b))
    used.textContent = tokens(b.usage?.total_tokens ?? 0)
    age.textContent = ago(b.created_at)
    took.textContent = duration(runTime(b))
  }
  return { el, update }
}

/** @param {import("./app.js").ViewContext} context */
export function batchListView({ signal, refresh: refreshNow }) {
  const body = h("tbody")
  const empty = h("p", { className: "empty", hidden: true },
    "No batches yet. ", h("a", { href: "#/files" }, "Upload a file"), " to start one.")
  const more = h("button", { type: "button", className: "more", hidden: true }, "More")
  const table = h(
    "table",
    { className: "batches" },
    headings(["Batch", "Status", "Progress", "Failed", "Tokens", "Created", "Duration"]),
    body
  )
  const el = h(
    "section",
    {},
    h("div", { className: "heading" }, h("h1", {}, "Batches"), h("a", { className: "button", href: "#/files" }, "New batch")),
    table,
    empty,
    more
  )

  /** Rows by batch id: kept across refreshes. @type {Map<string, ReturnType<typeof batchRow>>} */
  const rows = new Map()
  let shown = left.shown
  /** Where to scroll once the rows are in, the first time. */
  let scrollTo = /** @type {number | null} */ (left.scrollY)
  signal.addEventListener("abort", () => {
    left.shown = shown
    left.scrollY = window.scrollY
  })
  /** Whether a batch shown may still change. */
  let running = false

  /** @param {Batch[]} batches @param {boolean} hasMore */
  const render = (batches, hasMore) => {
    const seen = new Set()
    const ordered = batches.map((b) => {
      seen.add(b.id)
      let row = rows.get(b.id)
      if (row === undefined) rows.set(b.id, (row = batchRow()))
      row.update(b)
      return row.el
    })
    for (const id of [...rows.keys()]) if (!seen.has(id)) rows.delete(id)
    running = batches.some((b) => endedAt(b) === null)
    fill(body, ordered)
    table.hidden = batches.length === 0
    empty.hidden = batches.length > 0
    more.hidden = !hasMore
    more.disabled = false
    if (scrollTo !== null) window.scrollTo(0, scrollTo)
    scrollTo = null
  }

  const refresh = async () => {
    const { batches, hasMore } = await readBatches(shown, signal)
    render(batches, hasMore)
    return true
  }

  // Through the page's refresh, which waits for one under way: an older answer never lands after this one.
  more.addEventListener("click", () => {
    shown += PAGE
    more.disabled = true
    refreshNow()
  })

  return {
    el,
    refresh,
    title: "Batches",
    get every() {
      return running ? undefined : IDLE_EVERY_MS
    }
  }
}
