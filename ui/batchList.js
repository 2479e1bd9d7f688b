// @ts-check
/**
 * The batches page (`#/`): newest first, a row per batch with its live progress, counts, tokens, age and run
 * time. "More" follows OpenAI's `after` cursor; each refresh reads again as many batches as are shown, from the
 * top, so the rows already loaded stay live and new batches appear above: at the page's pace while one of them
 * runs, every 10 s once all have ended (batches made elsewhere still show up, at a sixth of the requests). Left and
 * opened again (Back from a batch), it shows as many rows as it had, scrolled where it was, with its filter. The
 * filter is in the address too (`#/?q=sweep%3Dlr-3&status=failures`), so a search can be bookmarked or sent.
 *
 * The filter (words, `format.js`'s `batchMatches`, and a status) is the page's: OpenAI's list has no such
 * parameters. A refresh reads pages from the top until it has as many batches that match as are shown, looking
 * through at most `SCAN_STEP` batches ("Search older" goes a step further each time, and stays so for the other
 * filters), so a match made weeks ago is found without pressing "More" page after page. A refresh that read more
 * than a page comes at the idle pace: a tab filtering for a rare match re-read 1,000 batches every 2 s.
 */
import { json, query } from "./api.js"
import { h, headings, isBusy, placeChildren, progressBar, setBusy, setStatus } from "./dom.js"
import { ago, batchMatches, batchSubline, count, duration, endedAt, failedMayBeUnrun, runTime, tokens } from "./format.js"

/** @typedef {import("./api.js").Batch} Batch */

const PAGE = 20
/** The refresh pace while no batch shown can change any more. */
const IDLE_EVERY_MS = 10_000
/** The API's largest page. */
const MAX_PAGE = 100
/** How many batches a filtered refresh looks through, and how many more each "Search older" adds. */
const SCAN_STEP = 1000
/** The statuses the filter offers, with their labels (`""`: any). */
const STATUSES = [["", "Any status"], ["validating", "Validating"], ["in_progress", "In progress"], ["finalizing", "Finalizing"],
  ["completed", "Completed"], ["failed", "Failed"], ["expired", "Expired"], ["cancelling", "Cancelling"], ["cancelled", "Cancelled"],
  ["failures", "With failed requests"]]
/** The wait after a keystroke in the filter before the list is read again. */
const TYPING_MS = 250
/**
 * What the list showed when it was left (rows, scroll, filter, the batch opened from it), for the next time it opens:
 * Back from a batch.
 */
const left = { shown: PAGE, scrollY: 0, text: "", status: "", scan: SCAN_STEP, opened: "" }

/** @typedef {{ text: string, status: string, scan: number }} Filter */
/** @param {Filter} filter */
const filtering = (filter) => filter.text.trim() !== "" || filter.status !== ""

/**
 * The filter an address asks for (`q`, `status`: an unknown status is any), or null when it names none.
 * @param {URLSearchParams} params @returns {{ text: string, status: string } | null}
 */
const filterIn = (params) => {
  if (!params.has("q") && !params.has("status")) return null
  const status = params.get("status") ?? ""
  return { text: params.get("q") ?? "", status: STATUSES.some(([value]) => value === status) ? status : "" }
}

/** The list's address for `filter`: `#/` without one. @param {Filter} filter */
const listHref = (filter) => {
  const params = new URLSearchParams()
  if (filter.text.trim() !== "") params.set("q", filter.text)
  if (filter.status !== "") params.set("status", filter.status)
  const query = params.toString()
  return query === "" ? "#/" : `#/?${query}`
}

/** The list's address as it was left: its filter (the links back to it, so that they come back to what it showed). */
export const listAddress = () => listHref(left)

/** @param {string} id */
export const batchHref = (id) => `#/batches/${encodeURIComponent(id)}`

/**
 * Batches from the top of the list until `wanted` that `filter` keeps are read (or there are no more, or a filter
 * has looked through `filter.scan` batches: `searched` says how many then), in pages of at most 100.
 * @param {number} wanted
 * @param {Filter} filter
 * @param {AbortSignal} signal
 * @returns {Promise<{ batches: Batch[], hasMore: boolean, searched: number | null, pages: number }>}
 */
const readBatches = async (wanted, filter, signal) => {
  const filtered = filtering(filter)
  /** @type {Batch[]} */
  const batches = []
  let read = 0
  let pages = 0
  /** @type {string | undefined} */
  let cursor
  for (;;) {
    const limit = filtered ? Math.min(MAX_PAGE, filter.scan - read) : Math.min(MAX_PAGE, wanted - batches.length)
    /** @type {import("./api.js").Page<Batch>} */
    const page = await json(`/v1/batches${query({ limit, after: cursor })}`, { signal })
    read += page.data.length
    pages++
    batches.push(...(filtered ? page.data.filter((b) => batchMatches(b, filter.text, filter.status)) : page.data))
    const more = page.has_more && page.last_id !== null
    if (batches.length >= wanted) return { batches: batches.slice(0, wanted), hasMore: more || batches.length > wanted, searched: null, pages }
    if (!more) return { batches, hasMore: false, searched: null, pages }
    if (filtered && read >= filter.scan) return { batches, hasMore: true, searched: read, pages }
    cursor = page.last_id ?? undefined
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
    if (link.textContent !== b.id) {
      link.textContent = b.id
      link.href = batchHref(b.id)
    }
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

/** @param {import("./app.js").ViewContext} context @param {URLSearchParams} params the address's query */
export function batchListView({ signal, refresh: refreshNow, from }, params) {
  const addressed = filterIn(params)
  // Another filter than the one the list was left with (a link to a search): its own rows, from the top.
  if (addressed !== null && (addressed.text !== left.text || addressed.status !== left.status)) {
    Object.assign(left, addressed, { shown: PAGE, scrollY: 0, scan: SCAN_STEP, opened: "" })
  }
  // Back (or "← Batches") from the batch opened from the list: its row takes the focus once the rows are in (Back
  // left it on the heading, far above the rows the list scrolls back to). Only then, and only once.
  const returnedFrom = left.opened !== "" && from === batchHref(left.opened) ? left.opened : ""
  left.opened = ""
  const body = h("tbody")
  const none = h("p", { className: "empty", hidden: true },
    "No batches yet. ", h("a", { href: "#/files" }, "Upload a file"), " to start one.")
  /**
   * What the filter found, or did not, and how far it looked. A live region always in the page, its words written
   * only when they change: rewritten at each refresh, the same line was read out every 2 s.
   */
  const found = h("p", { className: "found", attrs: { role: "status" } })
  const sayFound = (/** @type {string} */ text) => {
    if (found.textContent !== text) found.textContent = text
  }
  const more = h("button", { type: "button", className: "more", hidden: true }, "More")
  const filter = { text: left.text, status: left.status, scan: left.scan }
  const words = h("input", {
    type: "search",
    id: "batches-filter",
    value: filter.text,
    placeholder: "Id, model, metadata…",
    attrs: { "aria-label": "Filter batches by id, model, endpoint, file or metadata" }
  })
  const status = h("select", { id: "batches-status", attrs: { "aria-label": "Batches of status" } },
    STATUSES.map(([value, label]) => h("option", { value, selected: value === filter.status }, label)))
  // Hidden until the first answer: a table of headers alone read as an empty list.
  const table = h(
    "table",
    { className: "batches", hidden: true },
    headings(["Batch", "Status", "Progress", "Failed", "Tokens", "Created", "Duration"]),
    body
  )
  const el = h(
    "section",
    {},
    h("div", { className: "heading" }, h("h1", {}, "Batches"), words, status, h("a", { className: "button", href: "#/files" }, "New batch")),
    table,
    none,
    found,
    more
  )

  /** Rows by batch id: kept across refreshes. @type {Map<string, ReturnType<typeof batchRow>>} */
  const rows = new Map()
  let shown = left.shown
  /** Where to scroll once the rows are in, the first time. */
  let scrollTo = /** @type {number | null} */ (left.scrollY)
  /** What "More" asked for (rows shown, batches looked through), until a read answers it; busy till then. */
  let moreAsked = /** @type {{ shown: number, scan: number } | null} */ (null)
  /** The row whose link takes the focus once "More" is answered: the first one it added. */
  let focusRow = /** @type {number | null} */ (null)
  body.addEventListener("click", (event) => {
    const link = event.target instanceof Element ? event.target.closest("a") : null
    if (link !== null) left.opened = link.textContent ?? ""
  })
  signal.addEventListener("abort", () => {
    Object.assign(left, filter, { shown, scrollY: window.scrollY })
  })
  // The address says the filter (replaced, not pushed: Back leaves the list, not a keystroke), and so do the links
  // to the list (a click on the header's "Batches" made a second entry of the same address, which Back then showed).
  const address = () => {
    const href = listHref(filter)
    if (location.hash !== href && !(location.hash === "" && href === "#/")) history.replaceState(history.state, "", href)
    for (const link of document.querySelectorAll("a[data-list]")) link.setAttribute("href", href)
  }
  address()
  /** A new filter: read again from the top, a page's worth, as far down as the last search went. */
  const refilter = () => {
    filter.text = words.value
    filter.status = status.value
    if (!signal.aborted) address()
    shown = PAGE
    // A "More" under way asked for rows of the old filter: not waited for any longer.
    moreAsked = focusRow = null
    setBusy(more, false)
    sayFound("Searching…")
    refreshNow()
  }
  /** @type {ReturnType<typeof setTimeout> | undefined} */
  let typing
  words.addEventListener("input", () => {
    clearTimeout(typing)
    typing = setTimeout(refilter, TYPING_MS)
  })
  status.addEventListener("change", refilter)
  signal.addEventListener("abort", () => clearTimeout(typing))
  /** Whether "More" goes on looking rather than shows more of what was found. */
  let searchOlder = false
  /** Whether a batch shown may still change. */
  let running = false
  /** Whether the last refresh read more than a page (a filter looking far down). */
  let readFar = false

  /**
   * @param {Batch[]} batches @param {boolean} hasMore @param {number | null} searched
   * @param {Filter} asked @param {number} wanted the rows the read was for
   */
  const render = (batches, hasMore, searched, asked, wanted) => {
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
    placeChildren(body, ordered)
    table.hidden = batches.length === 0
    const filtered = filtering(asked)
    none.hidden = batches.length > 0 || filtered
    const matched = batches.length === 0 ? "No batch" : `${count(batches.length)} ${batches.length === 1 ? "batch" : "batches"}`
    const verb = batches.length > 1 ? "match" : "matches"
    // How many match, once the whole list was read; how far it looked, when a search stopped short.
    sayFound(!filtered
      ? ""
      : searched !== null
      ? `${matched} among the newest ${count(searched)} ${verb} this filter.`
      : hasMore ? `${count(batches.length)} or more batches match this filter: More shows more.` : `${matched} ${verb} this filter.`)
    searchOlder = searched !== null
    more.textContent = searchOlder ? "Search older" : "More"
    more.setAttribute("aria-label", searchOlder ? "Search older batches" : "More batches")
    more.hidden = !hasMore
    // A read begun before "More" was pressed does not answer it (its rows are the old ones).
    if (moreAsked === null || (wanted >= moreAsked.shown && asked.scan >= moreAsked.scan)) {
      setBusy(more, false)
      if (focusRow !== null) body.children[focusRow]?.querySelector("a")?.focus()
      moreAsked = focusRow = null
    }
    if (scrollTo !== null) {
      window.scrollTo(0, scrollTo)
      // Unless the person has moved on meanwhile (into the filter, say).
      const at = document.activeElement
      const heading = el.querySelector("h1")
      if (returnedFrom !== "" && (at === document.body || at === heading)) {
        body.children[batches.findIndex((b) => b.id === returnedFrom)]?.querySelector("a")?.focus({ preventScroll: true })
      }
    }
    scrollTo = null
  }

  const refresh = async () => {
    // The filter as it was asked: one typed into during the read is the next refresh's.
    const asked = { ...filter }
    const wanted = shown
    const { batches, hasMore, searched, pages } = await readBatches(wanted, asked, signal)
    readFar = pages > 1
    render(batches, hasMore, searched, asked, wanted)
    return true
  }

  // Through the page's refresh, which waits for one under way: an older answer never lands after this one.
  more.addEventListener("click", () => {
    if (isBusy(more)) return
    if (searchOlder) filter.scan += SCAN_STEP
    else {
      focusRow = shown
      shown += PAGE
    }
    moreAsked = { shown, scan: filter.scan }
    setBusy(more, true)
    refreshNow()
  })

  return {
    el,
    refresh,
    title: "Batches",
    get every() {
      return running && !readFar ? undefined : IDLE_EVERY_MS
    }
  }
}
