// @ts-check
/**
 * The form that starts a batch from a file (`POST /v1/batches`): the endpoint, read from the file's first line
 * (each file's own: a file started after another never inherits its endpoint or its metadata), window `24h`,
 * optional metadata as `key=value` lines.
 */
import { postJson } from "./api.js"
import { batchHref } from "./batchList.js"
import { firstLine } from "./content.js"
import { fill, h, isBusy, messageOf, say, setBusy, statusLine } from "./dom.js"

/** @typedef {import("./api.js").FileObject} FileObject */

/**
 * The endpoints of OpenAI's Batch API this server runs: `StandardEndpoint` in `src/domain/Batches.ts`, which the page
 * cannot import (test/DashboardFormat.test.ts checks the two lists are the same).
 */
const ENDPOINTS = [
  "/v1/chat/completions",
  "/v1/completions",
  "/v1/embeddings",
  "/v1/responses",
  "/v1/moderations",
  "/v1/images/generations"
]
/** How much of a file is read, at most, to find its first request's `url`. */
const FIRST_LINE_BYTES = 1024 * 1024
/**
 * An API path a file's first request may name beside `ENDPOINTS` (a server's `EXTRA_BATCH_ENDPOINTS`): offered as
 * it is, and the server says whether it runs it.
 */
const API_PATH = /^\/v1\/[\w\-./]{1,200}$/

/** The endpoint a file's first line names, when it is an API path. @param {string} line @returns {string | undefined} */
const endpointOf = (line) => {
  try {
    const url = JSON.parse(line).url
    return typeof url === "string" && API_PATH.test(url) ? url : undefined
  } catch {
    return undefined
  }
}

/** The first line of a file about to be uploaded (read here: no call needed). @param {File} file */
export const localFirstLine = async (file) => (await file.slice(0, FIRST_LINE_BYTES).text()).split("\n")[0] ?? ""

/**
 * `key=value` lines as a metadata object (null when there are none); the server checks the limits.
 * @param {string} text
 * @returns {Record<string, string> | null}
 */
const parseMetadata = (text) => {
  /** @type {Record<string, string>} */
  const metadata = {}
  let any = false
  for (const line of text.split("\n")) {
    if (line.trim() === "") continue
    const at = line.indexOf("=")
    if (at <= 0) throw new Error(`Metadata lines are key=value: "${line.slice(0, 80)}"`)
    // A `__proto__` key stays a key of its own (the server refuses what it does not allow).
    Object.defineProperty(metadata, line.slice(0, at).trim(), { value: line.slice(at + 1), enumerable: true, writable: true })
    any = true
  }
  return any ? metadata : null
}

/**
 * The form; `open` shows it for a file, its endpoint the one the file's first line names (read from the server
 * unless given), else the first of `ENDPOINTS`.
 * @param {AbortSignal} signal
 */
export const startForm = (signal) => {
  const fileName = h("span", { className: "name" })
  const endpoint = h("select", { id: "batch-endpoint", name: "endpoint" }, ENDPOINTS.map((e) => h("option", { value: e }, e)))
  const metadata = h("textarea",
    { id: "batch-metadata", name: "metadata", rows: 3, placeholder: "project=demo\nowner=me", spellcheck: false, attrs: { "aria-describedby": "start-batch-said" } })
  const submit = h("button", { type: "submit" }, "Start batch")
  const said = statusLine("p")
  said.id = "start-batch-said"
  /** The file the form is open for (an older `open`'s read, answered late, finds another here and is dropped). */
  let fileId = ""
  /** What had the focus when the form opened (a row's "Start batch"): it takes it back when the form closes. */
  let opener = /** @type {Element | null} */ (null)
  const close = () => {
    el.hidden = true
    if (opener instanceof HTMLElement && opener.isConnected) opener.focus()
  }
  // Focused when the form opens: a keyboard or screen reader user is taken to it.
  const heading = h("h2", { tabIndex: -1 }, "Start a batch")
  const el = h(
    "form",
    { className: "card", id: "start-batch", hidden: true },
    heading,
    h("p", {}, "From ", fileName),
    h("label", { htmlFor: "batch-endpoint" }, "Endpoint"),
    endpoint,
    h("p", { className: "sub" }, "Completion window: 24h"),
    h("label", { htmlFor: "batch-metadata" }, "Metadata (optional, one key=value a line)"),
    metadata,
    h("div", { className: "actions" },
      submit,
      h("button", { type: "button", className: "quiet", onclick: close }, "Close")),
    said
  )
  el.addEventListener("keydown", (event) => {
    if (event.key === "Escape") close()
  })
  el.addEventListener("submit", async (event) => {
    event.preventDefault()
    if (isBusy(submit)) return
    setBusy(submit, true)
    say(said, "Starting…")
    metadata.removeAttribute("aria-invalid")
    /** @type {Record<string, string> | null} */
    let pairs
    try {
      pairs = parseMetadata(metadata.value)
    } catch (error) {
      // Said, and tied to the field it is about: the focus goes there to mend it.
      say(said, messageOf(error), true)
      metadata.setAttribute("aria-invalid", "true")
      metadata.focus()
      setBusy(submit, false)
      return
    }
    try {
      const batch = await postJson("/v1/batches", { input_file_id: fileId, endpoint: endpoint.value, completion_window: "24h", metadata: pairs })
      location.hash = batchHref(batch.id)
    } catch (error) {
      say(said, messageOf(error), true)
    } finally {
      setBusy(submit, false)
    }
  })

  /** @param {string | undefined} guessed */
  const choose = (guessed) => {
    if (guessed !== undefined && ![...endpoint.options].some((o) => o.value === guessed)) {
      endpoint.append(h("option", { value: guessed }, guessed))
    }
    endpoint.value = guessed ?? ENDPOINTS[0] ?? ""
  }

  /** @param {FileObject} file @param {string} [line] its first line, when the page has it */
  const open = async (file, line) => {
    fileId = file.id
    if (el.hidden) opener = document.activeElement
    fill(fileName, file.filename, h("span", { className: "sub" }, file.id))
    metadata.value = ""
    say(said, "")
    el.hidden = false
    el.scrollIntoView({ block: "nearest" })
    heading.focus({ preventScroll: true })
    if (line !== undefined) return choose(endpointOf(line))
    choose(undefined)
    endpoint.disabled = submit.disabled = true
    say(said, "Reading the endpoint from the file's first line…")
    try {
      const read = await firstLine(file.id, FIRST_LINE_BYTES, signal)
      if (fileId !== file.id) return
      choose(endpointOf(read))
      say(said, "")
    } catch (error) {
      if (fileId === file.id) say(said, `The file's endpoint could not be read (${messageOf(error)}): choose it.`, true)
    } finally {
      if (fileId === file.id) endpoint.disabled = submit.disabled = false
    }
  }
  return { el, open }
}
