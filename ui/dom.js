// @ts-check
/**
 * Building the page with DOM APIs only. Every value from the server (file names, metadata, error messages are
 * other people's text) becomes a text node or a property: nothing here parses HTML. Text goes in through `visible`,
 * so that none can reorder what is shown around it.
 */
import { download } from "./content.js"
import { failedMayBeUnrun, failedWords, transferred, visible } from "./format.js"

/**
 * @typedef {Record<string, unknown> & { dataset?: Record<string, string>, attrs?: Record<string, string> }} Props
 * @typedef {Node | string | number | null | undefined | false} Child
 */

/**
 * `h("td", { className: "num", dataset: { label: "Failed" } }, "3")`: an element with properties (`onclick` and
 * other `on…` functions become listeners; `attrs` are set as attributes: `aria-*`, `role`) and children (strings
 * become text nodes; null, undefined and false are left out).
 * @template {keyof HTMLElementTagNameMap} K
 * @param {K} tag
 * @param {Props} [props]
 * @param {...(Child | Child[])} children
 * @returns {HTMLElementTagNameMap[K]}
 */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag)
  for (const [name, value] of Object.entries(props)) {
    if (value === undefined || value === null) continue
    if (name === "dataset") Object.assign(el.dataset, value)
    else if (name === "attrs") {
      for (const [a, v] of Object.entries(/** @type {Record<string, string>} */ (value))) el.setAttribute(a, v)
    } else if (name.startsWith("on") && typeof value === "function") {
      el.addEventListener(name.slice(2), /** @type {EventListener} */ (value))
    }
    else /** @type {any} */ (el)[name] = value
  }
  append(el, children)
  return el
}

/**
 * @param {Element} el
 * @param {Array<Child | Child[]>} children
 */
const append = (el, children) => {
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue
    el.append(typeof child === "number" ? String(child) : typeof child === "string" ? visible(child) : child)
  }
}

/**
 * Replaces the children of `el`.
 * @param {Element} el
 * @param {...(Child | Child[])} children
 */
export function fill(el, ...children) {
  el.replaceChildren()
  append(el, children)
}

/**
 * Puts `children` in `el` in that order, moving only what is out of place and removing what is not among them: a
 * row that stays keeps its focus (a refresh that put every row back threw a keyboard user to the page's top); the
 * focus in a row that goes (its file deleted, its batch filtered out, elsewhere) moves to the next row that stays,
 * else the one before.
 * @param {Element} el
 * @param {Element[]} children
 */
export function placeChildren(el, children) {
  const wanted = new Set(children)
  const current = [...el.children]
  const focused = current.findIndex((child) => !wanted.has(child) && child.contains(document.activeElement))
  if (focused !== -1) {
    /** @param {Element} child */
    const staying = (child) => wanted.has(child)
    const next = current.slice(focused + 1).find(staying) ?? current.slice(0, focused).reverse().find(staying)
    const target = next?.querySelector("a, button")
    if (target instanceof HTMLElement) target.focus()
  }
  for (const child of current) if (!wanted.has(child)) child.remove()
  children.forEach((child, i) => {
    if (el.children[i] !== child) el.insertBefore(child, el.children[i] ?? null)
  })
}

/**
 * Marks a button busy (its clicks to be ignored: `isBusy`) or not. Not `disabled`, which drops a keyboard user's
 * focus to the page.
 * @param {HTMLButtonElement} button
 * @param {boolean} busy
 */
export function setBusy(button, busy) {
  if (busy) button.setAttribute("aria-disabled", "true")
  else button.removeAttribute("aria-disabled")
}

/** @param {HTMLButtonElement} button */
export const isBusy = (button) => button.getAttribute("aria-disabled") === "true"

/**
 * A progress bar (`role=progressbar`) of a batch's requests done: the succeeded part, then the failed part (drawn
 * neutral, not as failures, when it may hold requests a cancel or an expiry left unrun). `update` sets both widths,
 * the percentage and the spoken text.
 */
export function progressBar() {
  const ok = h("span", { className: "ok" })
  const bad = h("span", { className: "bad" })
  const el = h("div", { className: "bar", attrs: { role: "progressbar", "aria-label": "Requests done", "aria-valuemin": "0", "aria-valuemax": "100" } }, ok, bad)
  /** @param {import("./api.js").Batch} b */
  const update = (b) => {
    const { total, completed, failed } = b.request_counts
    const share = (/** @type {number} */ n) => (total > 0 ? Math.min(100, (100 * n) / total) : 0)
    ok.style.width = `${share(completed)}%`
    bad.style.width = `${Math.min(share(failed), 100 - share(completed))}%`
    bad.classList.toggle("unrun", failedMayBeUnrun(b))
    const percent = Math.floor(share(completed + failed))
    el.setAttribute("aria-valuenow", String(percent))
    const spoken = total > 0 ? `${percent}%: ${completed + failed} of ${total} done, ${failed} ${failedWords(b)}` : "not started"
    el.setAttribute("aria-valuetext", spoken)
    el.classList.toggle("empty", total === 0)
  }
  return { el, update }
}

/** A table's header row; a name in `[brackets]` is read out but not shown (a column of buttons). @param {string[]} names */
export const headings = (names) =>
  h("thead", {}, h("tr", {}, names.map((n) => {
    const unseen = /^\[(.*)\]$/.exec(n)
    return h("th", { scope: "col" }, unseen === null ? n : h("span", { className: "visually-hidden" }, unseen[1] ?? ""))
  })))

/** The batch statuses that have a style of their own. */
const STATUSES = ["validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling", "cancelled"]

/**
 * A status badge: its text, and a class from the known statuses only.
 * @param {HTMLElement} el
 * @param {string} status
 */
export function setStatus(el, status) {
  // Written only when it changes: a batch page's status is a live region, read out once per move.
  const text = status.replace("_", " ")
  if (el.textContent !== text) el.textContent = text
  el.className = `status ${STATUSES.includes(status) ? `s-${status}` : ""}`
}

const noticeEl = () => /** @type {HTMLElement} */ (document.getElementById("notice"))

/**
 * Shows a problem above the page (an API error's message), or hides it with null.
 * @param {string | null} message
 */
export function notice(message) {
  const el = noticeEl()
  const text = visible(message ?? "")
  // The same words again (a refresh that fails as the last did) are not announced again by a screen reader.
  if (el.textContent !== text) el.textContent = text
  el.hidden = message === null
}

/** What went wrong, in words (an `ApiError`'s message is the envelope's). @param {unknown} error */
export const messageOf = (error) => (error instanceof Error ? error.message : String(error))

/** Shows why something failed. @param {unknown} error */
export const showError = (error) => notice(messageOf(error))

/**
 * An element for `say`: a live region (`role=status`), so that a screen reader tells what an upload, a start, a
 * cancel, a delete or a download did without the person looking for it.
 * @param {"span" | "p"} tag
 */
export const statusLine = (tag) => h(tag, { className: "said", attrs: { role: "status" } })

/**
 * A form's own status line (made by `statusLine`): what a submit did, or why it failed.
 * @param {HTMLElement} el
 * @param {string} text
 * @param {boolean} [failed]
 */
export function say(el, text, failed = false) {
  el.textContent = visible(text)
  el.classList.toggle("error", failed)
}

/**
 * A "Download" button saving a file's content as `name`, with a line saying how far it got, then how it went.
 * @param {string} fileId
 * @param {string} name
 * @param {Props} [props] the button's
 */
export function downloadButton(fileId, name, props = {}) {
  const said = statusLine("span")
  // How far it got, shown but not read out: a status line rewritten at every chunk was thousands of announcements.
  const progress = h("span", { className: "said", attrs: { "aria-hidden": "true" } })
  // Named for its file: a list of buttons all called "Download" says nothing to a screen reader.
  const button = h("button", { type: "button", attrs: { "aria-label": `Download ${visible(name)}` }, ...props }, "Download")
  button.addEventListener("click", () => {
    if (isBusy(button)) return
    setBusy(button, true)
    say(said, "Downloading…")
    download(fileId, name, (received, total) => (progress.textContent = transferred(received, total)))
      .then(() => say(said, `Saved ${name}.`), (error) => say(said, messageOf(error), true))
      .finally(() => {
        progress.textContent = ""
        setBusy(button, false)
      })
  })
  return h("span", { className: "download" }, button, said, progress)
}
