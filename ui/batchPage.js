// @ts-check
/**
 * A batch's page (`#/batches/ID`): status, progress, counts, tokens, the time each phase took, its files (saved
 * through the API with the key), validation problems, metadata, and a cancel button while it can be cancelled.
 * Refreshed until the batch ends.
 */
import { ApiError, batchUrl, fileUrl, json, postJson } from "./api.js"
import { listAddress } from "./batchList.js"
import { downloadButton, fill, h, headings, isBusy, messageOf, placeChildren, progressBar, say, setBusy, setStatus, statusLine } from "./dom.js"
import { bytes, count, dateTime, DOWN_REASONS, duration, endedAt, failedWords, nowSeconds, runTime, timeOfDay, tokens, visible } from "./format.js"

/**
 * @typedef {import("./api.js").Batch} Batch
 * @typedef {import("./api.js").BatchError} BatchError
 * @typedef {import("./api.js").FileObject} FileObject
 * @typedef {import("./dom.js").Child} Child
 * @typedef {{ name: string, state: string, down_since: number | null, down_reason: string | null, models: string[],
 *   serves_any_model: boolean }} Upstream what `GET /v1/upstreams` (this server's extension) says of one
 */

const CANCELLABLE = ["validating", "in_progress", "finalizing"]
const ENDED = ["completed", "failed", "expired", "cancelled"]
/** Problems listed at most (a file may have thousands; the count says how many more). */
const MAX_PROBLEMS = 200

/**
 * The phases the batch went through, in order, each with when it began and how long it took (until the next one,
 * or until now for the one it is in); the end as a last phase of no length.
 * @param {Batch} b
 * @returns {Array<{ name: string, at: number, took: number | null, current: boolean }>}
 */
const phases = (b) => {
  const end = endedAt(b)
  /** @type {Array<[string, number | null]>} */
  const marks = [
    ["validating", b.created_at],
    ["in_progress", b.in_progress_at],
    ["finalizing", b.finalizing_at],
    ["cancelling", b.cancelling_at]
  ]
  const begun = marks.filter((m) => typeof m[1] === "number" && m[1] > 0)
    .map(([name, at]) => ({ name, at: /** @type {number} */ (at) }))
    .sort((x, y) => x.at - y.at)
  const steps = begun.map((p, i) => {
    const next = begun[i + 1]?.at ?? end
    return { ...p, took: (next ?? nowSeconds()) - p.at, current: next === null }
  })
  return end === null ? steps : [...steps, { name: b.status, at: end, took: null, current: false }]
}

/** `612 of 1,000 done (61%): 600 succeeded, 12 failed`. @param {Batch} b */
const countsText = (b) => {
  const { total, completed, failed } = b.request_counts
  if (total === 0) return b.status === "validating" ? "Validating the input file…" : "No requests ran."
  const done = completed + failed
  return `${count(done)} of ${count(total)} done (${Math.floor((100 * done) / total)}%): ` +
    `${count(completed)} succeeded, ${count(failed)} ${failedWords(b)}`
}

/**
 * The upstream serving the batch's model (the one listing it, else one serving any, as the server routes), when
 * it is down: a batch waiting for it stays `in_progress` with its counts still, and its object says nothing of why.
 * @param {Upstream[]} upstreams
 * @param {Batch} b
 */
const downUpstreamLine = (upstreams, b) => {
  const model = b.model ?? ""
  const upstream = upstreams.find((u) => u.models.includes(model)) ?? upstreams.find((u) => u.serves_any_model)
  if (upstream?.state !== "down") return ""
  const at = upstream.down_since
  // An outage of hours may have begun another day: its date then.
  const since = at === null ? "" : ` since ${nowSeconds() - at < 12 * 3600 ? timeOfDay(at) : dateTime(at)}`
  const reason = upstream.down_reason === null ? "" : ` (${DOWN_REASONS[upstream.down_reason] ?? upstream.down_reason})`
  return `Upstream ${upstream.name} has been down${since}${reason}: this batch waits for it and loses nothing; ` +
    "it goes on when it is back."
}

/** A `<dl>` row. @param {string} term @param {Child | Child[]} value */
const row = (term, value) => [h("dt", {}, term), h("dd", {}, value)]

/** `1.2k input (300 cached)`. @param {number} n @param {string} what @param {number | undefined} part @param {string} partName */
const tokenLine = (n, what, part, partName) =>
  h("span", { className: "line" }, `${tokens(n)} ${what}${part ? ` (${tokens(part)} ${partName})` : ""}`)

/** The "Details" list. @param {Batch} b */
const facts = (b) => {
  const usage = b.usage
  const running = endedAt(b) === null
  return [
    row("Created", dateTime(b.created_at)),
    row("Duration", `${duration(runTime(b))}${running ? " so far" : ""}`),
    row("Tokens", usage && usage.total_tokens > 0
      ? [
        tokenLine(usage.input_tokens, "input", usage.input_tokens_details?.cached_tokens, "cached"),
        tokenLine(usage.output_tokens, "output", usage.output_tokens_details?.reasoning_tokens, "reasoning"),
        h("span", { className: "line" }, `${tokens(usage.total_tokens)} in all`)
      ]
      : running ? "none yet" : "none"),
    row("Window", b.completion_window),
    b.expires_at && running ? row("Expires", dateTime(b.expires_at)) : []
  ].flat()
}

/** The "Timing" table's rows. @param {Batch} b */
const timingRows = (b) =>
  phases(b).map((p) => {
    const name = h("span")
    setStatus(name, p.name)
    const took = p.took === null ? "" : `${duration(p.took)}${p.current ? " so far" : ""}`
    return h("tr", { className: p.current ? "current" : "" },
      h("td", {}, name),
      h("td", {}, dateTime(p.at)),
      h("td", { className: "num" }, took))
  })

/**
 * The validation problems, as a list; the server's last `too_many_errors` entry (how many more it found and did not
 * list) is said below it, whatever the page leaves out.
 * @param {BatchError[]} errors
 */
const problemList = (errors) => {
  const listed = errors.filter((e) => e.code !== "too_many_errors")
  const unlisted = errors.filter((e) => e.code === "too_many_errors")
  return [
    h("h2", {}, `Problems (${count(listed.length)}${unlisted.length > 0 ? " and more" : ""})`),
    h("ol", {}, listed.slice(0, MAX_PROBLEMS).map((e) =>
      h("li", {},
        h("span", { className: "where" }, e.line === null ? "file" : `line ${e.line}`), " ",
        h("code", {}, e.code), " ",
        e.message,
        e.param ? h("span", { className: "sub" }, ` (${e.param})`) : null))),
    listed.length > MAX_PROBLEMS ? h("p", { className: "sub" }, `and ${count(listed.length - MAX_PROBLEMS)} more listed in the batch`) : null,
    ...unlisted.map((e) => h("p", { className: "sub" }, e.message))
  ]
}

/**
 * A file's row: name, size and a button that saves it (`null` file: it could not be read).
 * @param {Batch} b
 * @param {string} label
 * @param {string | null} id
 * @param {string} kind
 * @param {FileObject | null | undefined} file
 */
const fileRow = (b, label, id, kind, file) => {
  const head = h("th", { scope: "row" }, label)
  if (id === null) {
    // The words in a span: `.sub` is display:block, which on the cell itself cut its border short of the table's.
    return h("tr", {}, head, h("td", { colSpan: 3 }, h("span", { className: "sub" }, ENDED.includes(b.status) ? "none" : "when the batch ends")))
  }
  const name = file?.filename ?? `${b.id}_${kind}.jsonl`
  return h("tr", {},
    head,
    h("td", { className: "name" }, file === null ? [id, h("span", { className: "sub" }, "deleted")] : [name, h("span", { className: "sub" }, id)]),
    h("td", { className: "num" }, file ? bytes(file.bytes) : ""),
    h("td", {}, file === null ? null : downloadButton(id, name, { dataset: { file: kind } })))
}

/** @param {string} batchId @param {import("./app.js").ViewContext} context */
export function batchPageView(batchId, { signal, refresh: refreshNow }) {
  // Read out as the batch moves (its end too), not only shown.
  const status = h("span", { attrs: { role: "status", "aria-label": "Status" } })
  const cancel = h("button", { type: "button", className: "danger", hidden: true }, "Cancel batch")
  const cancelSaid = statusLine("span")
  const subtitle = h("p", { className: "sub" })
  const bar = progressBar()
  const countsLine = h("p", { className: "counts" })
  const waiting = h("p", { className: "waiting", hidden: true, attrs: { role: "status" } })
  const details = h("dl", { className: "facts" })
  const timing = h("tbody")
  const files = h("tbody")
  const problems = h("section", { className: "problems", hidden: true })
  const metadata = h("section", { hidden: true })
  // What stands in for the batch until it is read, or when it cannot be: not a bare outline.
  const state = h("p", { className: "state", attrs: { role: "status" } }, "Loading…")
  const shownBatch = h("div", { hidden: true },
    subtitle,
    h("div", { className: "big" }, bar.el),
    countsLine,
    waiting,
    h("div", { className: "columns" },
      h("section", {}, h("h2", {}, "Details"), details),
      h("section", {}, h("h2", {}, "Timing"), h("table", { className: "timing" }, headings(["Phase", "Began", "Took"]), timing))),
    h("section", {}, h("h2", {}, "Files"), h("table", { className: "files" }, files)),
    problems,
    metadata)

  // "Batch" read out before the id (the heading was the id alone).
  const heading = h("h1", {}, h("span", { className: "visually-hidden" }, "Batch "), h("code", { className: "id" }, batchId))
  const el = h(
    "section",
    { className: "batch" },
    h("p", { className: "crumbs" }, h("a", { href: listAddress(), dataset: { list: "" } }, "← Batches")),
    h("div", { className: "heading" }, heading, status, h("span", { className: "grow" }), cancelSaid, cancel),
    state,
    shownBatch
  )

  /** File objects by id, read once each (null: it could not be read). @type {Map<string, FileObject | null>} */
  const fileObjects = new Map()
  /** The files' rows by id, made once: a refresh keeps a download's progress line. @type {Map<string, HTMLElement>} */
  const fileRows = new Map()
  /** @type {Batch | null} */
  let current = null
  /** Whether the server has `GET /v1/upstreams` (an extension: after a 404 it is asked no more). */
  let upstreamsKnown = true

  /** @param {string} id */
  const readFile = async (id) => {
    if (fileObjects.has(id)) return
    try {
      fileObjects.set(id, await json(fileUrl(id), { signal }))
    } catch (error) {
      if (!(error instanceof ApiError) || error.status !== 404) throw error
      fileObjects.set(id, null)
    }
  }

  /**
   * Says `text` instead of the batch (which no longer shows, nor its button); said again only when it changes (a
   * status region: a read failing every second was read out every second).
   * @param {string} text
   */
  const instead = (text) => {
    if (state.hidden || state.textContent !== visible(text)) fill(state, text)
    leaveFocusOn(cancel)
    state.hidden = false
    shownBatch.hidden = true
    status.hidden = true
    cancel.hidden = true
  }

  /**
   * Moves the focus from `button`, about to be hidden, to the heading (tabindex -1), not to the page: a refresh that
   * answered before the cancel hid the button first, and the focus fell to the page's top.
   * @param {HTMLElement} button
   */
  const leaveFocusOn = (button) => {
    if (button === document.activeElement) heading.focus()
  }

  /** @param {Batch} b */
  const render = (b) => {
    current = b
    state.hidden = true
    shownBatch.hidden = false
    status.hidden = false
    setStatus(status, b.status)
    if (!CANCELLABLE.includes(b.status)) leaveFocusOn(cancel)
    cancel.hidden = !CANCELLABLE.includes(b.status)
    subtitle.textContent = visible([b.endpoint, b.model].filter(Boolean).join(" · "))
    bar.update(b)
    countsLine.textContent = countsText(b)
    fill(details, facts(b))
    fill(timing, timingRows(b))
    /** @type {Array<[string, string | null, string]>} */
    const kinds = [
      ["Input", b.input_file_id, "input"],
      ["Output", b.output_file_id, "output"],
      ["Errors", b.error_file_id, "error"]
    ]
    placeChildren(files, kinds.map(([label, id, kind]) => {
      if (id === null) return fileRow(b, label, id, kind, undefined)
      const made = fileRows.get(id) ?? fileRow(b, label, id, kind, fileObjects.get(id))
      fileRows.set(id, made)
      return made
    }))
    const errors = b.errors?.data ?? []
    problems.hidden = errors.length === 0
    fill(problems, problemList(errors))
    const pairs = Object.entries(b.metadata ?? {})
    metadata.hidden = pairs.length === 0
    fill(metadata, h("h2", {}, "Metadata"), h("dl", { className: "facts metadata" }, pairs.flatMap(([k, v]) => row(k, v))))
  }

  // The page shows the batch through its refresh, which waits for one under way: a poll's older answer never
  // lands after the cancel's.
  cancel.addEventListener("click", async () => {
    const question = `Cancel batch ${batchId}? Requests in flight are stopped; finished results are kept.`
    if (current === null || isBusy(cancel) || !confirm(question)) return
    setBusy(cancel, true)
    say(cancelSaid, "Cancelling…")
    try {
      await postJson(`${batchUrl(batchId)}/cancel`, {})
      say(cancelSaid, "")
      leaveFocusOn(cancel) // it goes once the batch is cancelling
      refreshNow()
    } catch (error) {
      say(cancelSaid, messageOf(error), true)
    } finally {
      setBusy(cancel, false)
    }
  })

  /**
   * Says whether the batch waits for its upstream, down: asked at each refresh of an `in_progress` batch only. A
   * failure leaves the line as it was (it is a hint: the batch's own refresh says what failed, if anything does).
   * @param {Batch} b
   */
  const showUpstream = async (b) => {
    if (!upstreamsKnown || b.status !== "in_progress") {
      waiting.hidden = true
      return
    }
    try {
      /** @type {{ data: Upstream[] }} */
      const { data } = await json("/v1/upstreams", { signal })
      const line = visible(downUpstreamLine(data, b))
      // The same words again are not announced again (a live region).
      if (waiting.textContent !== line) waiting.textContent = line
      waiting.hidden = line === ""
    } catch (error) {
      if (error instanceof ApiError && error.status === 404) {
        upstreamsKnown = false
        waiting.hidden = true
      }
    }
  }

  /** Reads the batch (and its files not read yet, and its upstream's state); true while it may still change. */
  const refresh = async () => {
    /** @type {Batch} */
    let b
    try {
      b = await json(batchUrl(batchId), { signal })
    } catch (error) {
      // Said here rather than above the page: nothing is left to show, and nothing to read again.
      if (error instanceof ApiError && error.status === 404) {
        instead(`No batch ${batchId} (it may have been deleted, or belong to another project).`)
        return false
      }
      // A batch shown already stays, the failure said above it; before the first answer, the view says it too.
      if (current === null) instead(`The batch could not be read: ${messageOf(error)} The page tries again by itself; reload it to try at once.`)
      throw error
    }
    const ids = [b.input_file_id, b.output_file_id, b.error_file_id].filter((id) => id !== null)
    await Promise.all([...ids.map((id) => readFile(/** @type {string} */ (id))), showUpstream(b)])
    render(b)
    return !ENDED.includes(b.status)
  }

  return { el, refresh, title: `Batch ${batchId}` }
}
