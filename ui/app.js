// @ts-check
/**
 * The dashboard's entry: hash routes to views, the refresh loop, and the API key dialog.
 *
 * A view is `{ el, refresh, title, every }`: `refresh` reads what it shows and resolves with whether it may still
 * change. The open view is refreshed every `every` ms (2 s by default; read at each turn, so a view may change its
 * pace) while that is true and the tab is visible (a hidden tab polls nothing, and is refreshed at once when it
 * shows again); after a failure, less often (see `nextDelay`). Refreshes never overlap: a view that wants one now
 * (after "More", a cancel, an upload) asks through its context's `refresh`, which waits for the one under way. Each
 * view gets a signal that aborts when it is left, so a call that hangs cannot hold the next view up.
 */
import { ApiError, askKeyAgain, forgetKey, KEY_PATTERN, keyDeclined, onKeyChange, setKeyPrompt, storedKey } from "./api.js"
import { batchListView } from "./batchList.js"
import { batchPageView } from "./batchPage.js"
import { notice, showError } from "./dom.js"
import { filesView } from "./files.js"

const POLL_MS = 2000
/** The longest wait between refreshes while they fail. */
const MAX_BACKOFF_MS = 60_000

/**
 * @typedef {{ el: HTMLElement, refresh: () => Promise<boolean>, title: string, every?: number }} View
 * @typedef {{ signal: AbortSignal, refresh: () => void, from: string }} ViewContext what a view is given: its calls'
 *   signal, the hash of the view it follows (`from`), and
 *   a way to be refreshed now
 */

const byId = (/** @type {string} */ id) => /** @type {HTMLElement} */ (document.getElementById(id))

/** What a batch id may be in an address (the server's are `batch_` and 32 hex digits): no words a link could say. */
const ID_PATTERN = /^batch_[A-Za-z0-9]{1,64}$/

/**
 * The view the location's hash names: `#/` (`#/?q=…&status=…`: the list's filter), `#/files`, `#/batches/ID` (the list
 * for an id that cannot be one).
 * @param {string} hash @param {ViewContext} context @returns {View}
 */
const viewFor = (hash, context) => {
  const address = hash.replace(/^#/, "")
  const query = address.indexOf("?")
  const path = query === -1 ? address : address.slice(0, query)
  const batch = /^\/batches\/([^/]+)$/.exec(path)
  if (batch !== null) {
    try {
      // Trimmed: no id holds a space, and one pasted with its neighbours' ("No batch  batch_1 " read as the id's).
      const id = decodeURIComponent(batch[1] ?? "").trim()
      // Only what an id can be (not `.` or `..` either, which a URL would resolve to another path): a link's other
      // text was shown as the page's heading ("Batch Your session expired, paste your key…").
      if (ID_PATTERN.test(id)) return batchPageView(id, context)
    } catch {
      // a malformed escape: the list instead
    }
  }
  return path === "/files" ? filesView(context) : batchListView(context, new URLSearchParams(query === -1 ? "" : address.slice(query + 1)))
}

/** The shortest wait a server's hint gets (a hint of 0 must not make a loop). */
const MIN_RETRY_MS = 250

/**
 * The wait before the next refresh: the view's pace; after failures in a row, what the server asked for when it
 * said (`retry-after` of a 429 or 503: a rate limit's 265 ms is 265 ms, not the back-off from a 10 s pace), else
 * twice as long at each, up to a minute.
 * @param {number} every
 * @param {number} failures
 * @param {unknown} error the last failure
 */
const nextDelay = (every, failures, error) => {
  if (failures === 0) return every
  const asked = error instanceof ApiError ? error.retryAfterMs : null
  return asked !== null ? Math.max(asked, MIN_RETRY_MS) : Math.min(MAX_BACKOFF_MS, every * 2 ** failures)
}

/** @type {View | null} */
let view = null
/** Aborts the calls of the open view when it is left. */
let leaving = new AbortController()
/** Whether the open view asked to be refreshed again. */
let live = false
/** Failed refreshes in a row, and the last one's error. */
let failures = 0
/** @type {unknown} */
let lastError = null
/** @type {ReturnType<typeof setTimeout> | undefined} */
let timer
/** The refresh under way, if any. @type {Promise<void> | null} */
let running = null
/** Whether a refresh was asked for while one was under way: it runs as soon as that one ends. */
let again = false
/** Whether a view was opened before (the page's first one takes no focus). */
let routed = false
/** The hash of the open view. */
let routedHash = ""
/** Whether the person paused the refreshes (WCAG 2.2.2): a view is read when opened or asked to, not on a timer. */
let paused = false

/** Refreshes the open view now (or once the refresh under way ends), then schedules the next one. */
const refresh = () => {
  clearTimeout(timer)
  if (view === null) return
  if (running !== null) {
    again = true
    return
  }
  again = false
  const refreshed = view
  running = refreshed.refresh().then(
    (more) => {
      if (refreshed !== view) return
      live = more
      failures = 0
      notice(null)
    },
    (error) => {
      // A view left meanwhile: its calls were aborted, and its errors are nobody's concern.
      if (refreshed !== view) return
      // Keep trying (the server may be back at the next turn), unless what the view shows does not exist.
      live = !(error instanceof ApiError && error.status === 404)
      failures++
      lastError = error
      showError(error)
    }
  ).finally(() => {
    running = null
    if (refreshed !== view || again) refresh()
    else if (live && !document.hidden && !paused) timer = setTimeout(refresh, nextDelay(refreshed.every ?? POLL_MS, failures, lastError))
  })
}

const route = () => {
  leaving.abort()
  leaving = new AbortController()
  const from = routedHash
  routedHash = location.hash
  view = viewFor(location.hash, { signal: leaving.signal, refresh, from })
  live = false
  failures = 0
  document.title = `${view.title} · openai-batch`
  byId("view").replaceChildren(view.el)
  window.scrollTo(0, 0) // a view opens at its top (the list, once its rows are in, where it was left)
  const section = location.hash.startsWith("#/files") ? "files" : "batches"
  for (const link of document.querySelectorAll("nav a")) {
    if (!(link instanceof HTMLElement)) continue
    link.classList.toggle("active", link.dataset.nav === section)
    if (link.dataset.nav === section) link.setAttribute("aria-current", "page")
    else link.removeAttribute("aria-current")
  }
  // Focus follows the page when it changes (not when it opens: the first Tab reaches the skip link): a screen reader
  // reads the new view's heading, and Tab goes on from there.
  const heading = view.el.querySelector("h1")
  heading?.setAttribute("tabindex", "-1")
  if (routed) heading?.focus({ preventScroll: true })
  routed = true
  notice(null)
  refresh()
}

document.addEventListener("visibilitychange", () => {
  if (document.hidden) clearTimeout(timer)
  else if (live && !paused) refresh()
})

/**
 * The key dialog: resolves with the key typed, or null when cancelled. A key an HTTP header cannot carry is
 * refused here, with a word why.
 */
const askForKey = (/** @type {string} */ reason) =>
  new Promise((resolve) => {
    const dialog = /** @type {HTMLDialogElement} */ (byId("key-dialog"))
    const form = /** @type {HTMLFormElement} */ (byId("key-form"))
    const input = /** @type {HTMLInputElement} */ (byId("key-input"))
    const problem = byId("key-problem")
    byId("key-reason").textContent = reason
    input.value = ""
    input.removeAttribute("aria-invalid")
    problem.hidden = true
    /** @param {string | null} key */
    const done = (key) => {
      form.removeEventListener("submit", submitted)
      byId("key-cancel").removeEventListener("click", cancelled)
      dialog.removeEventListener("cancel", cancelled)
      dialog.close()
      resolve(key)
    }
    const submitted = (/** @type {Event} */ event) => {
      event.preventDefault()
      const key = input.value.trim()
      if (key === "") return
      if (KEY_PATTERN.test(key)) return done(key)
      problem.textContent = "An API key is printable ASCII (letters, digits, punctuation), without spaces."
      problem.hidden = false
      input.setAttribute("aria-invalid", "true")
      input.select()
    }
    const cancelled = (/** @type {Event} */ event) => {
      event.preventDefault()
      // Declined, the header's "Enter key" shows: the focus goes there, not to the page (where the dialog had none)
      // nor back to the view's heading (the browser's pick after a "Forget key" had routed there).
      const hadFocus = dialog.contains(document.activeElement)
      done(null)
      setTimeout(() => {
        const button = byId("key-button")
        const at = document.activeElement
        if (!button.hidden && (hadFocus || at === null || at === document.body)) button.focus()
      })
    }
    form.addEventListener("submit", submitted)
    byId("key-cancel").addEventListener("click", cancelled)
    dialog.addEventListener("cancel", cancelled)
    dialog.showModal()
    input.focus()
  })

/** The header's button: "Forget key" while one is kept, "Enter key" after the prompt was declined. */
const keyButton = () => {
  const button = byId("key-button")
  const update = () => {
    const kept = storedKey() !== null
    button.textContent = kept ? "Forget key" : "Enter key"
    button.hidden = !kept && !keyDeclined()
  }
  button.addEventListener("click", async () => {
    if (storedKey() !== null) {
      forgetKey()
      // What the key showed goes with it: the view is made again, and asks for a key to show anything.
      route()
      notice("The key was forgotten: this browser keeps none now.")
      return
    }
    if (await askKeyAgain()) route()
    update()
  })
  onKeyChange(update)
  return update
}

// "Pause updates": no refresh on a timer until resumed (then one at once), for a reader who needs the page still.
// Its label says what a press does; no `aria-pressed` beside it ("Resume updates, pressed" read as resuming on).
byId("pause-button").addEventListener("click", (event) => {
  const button = /** @type {HTMLElement} */ (event.currentTarget)
  paused = !paused
  button.textContent = paused ? "Resume updates" : "Pause updates"
  if (paused) clearTimeout(timer)
  else refresh()
})

// The skip link moves focus to the view without touching the hash (which routes).
byId("skip").addEventListener("click", (event) => {
  event.preventDefault()
  byId("view").focus()
})

setKeyPrompt(askForKey)
const updateKeyButton = keyButton()
addEventListener("hashchange", route)
route()
updateKeyButton()
