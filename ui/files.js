// @ts-check
/**
 * The files page (`#/files`): the upload form (multipart `POST /v1/files`, purpose `batch`), the form that starts
 * a batch from a file (`POST /v1/batches`), and the files, newest first, "More" showing 50 more. Refreshed every
 * 5 s while the tab is visible (files come and go through the API and batches' outputs), and at once after an
 * upload.
 */
import { json, postForm, postJson, query } from "./api.js"
import { batchHref } from "./batchList.js"
import { downloadButton, fill, h, headings, messageOf, say } from "./dom.js"
import { ago, bytes, visible } from "./format.js"

/** @typedef {import("./api.js").FileObject} FileObject */

const PAGE = 50
/** The API's largest page of files. */
const MAX_PAGE = 10_000
/** How often the list is read again. */
const EVERY_MS = 5000
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
/** How much of a file is read to find its first request's `url`. */
const FIRST_LINE_BYTES = 64 * 1024
/**
 * An API path a file's first request may name beside `ENDPOINTS` (a server's `EXTRA_BATCH_ENDPOINTS`): offered as
 * it is, and the server says whether it runs it.
 */
const API_PATH = /^\/v1\/[\w\-./]{1,200}$/

/**
 * The endpoint a file's first request names, when it is an API path.
 * @param {File} file
 * @returns {Promise<string | undefined>}
 */
const firstEndpoint = async (file) => {
  try {
    const url = JSON.parse((await file.slice(0, FIRST_LINE_BYTES).text()).split("\n")[0] ?? "").url
    return typeof url === "string" && API_PATH.test(url) ? url : undefined
  } catch {
    return undefined
  }
}

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

/** The form that starts a batch from one file; `open` shows it for a file. */
const startForm = () => {
  const fileName = h("span", { className: "name" })
  const endpoint = h("select", { id: "batch-endpoint", name: "endpoint" }, ENDPOINTS.map((e) => h("option", { value: e }, e)))
  const metadata = h("textarea",
    { id: "batch-metadata", name: "metadata", rows: 3, placeholder: "project=demo\nowner=me", spellcheck: false })
  const submit = h("button", { type: "submit" }, "Start batch")
  const said = h("p", { className: "said" })
  let fileId = ""
  const el = h(
    "form",
    { className: "card", id: "start-batch", hidden: true },
    h("h2", {}, "Start a batch"),
    h("p", {}, "From ", fileName),
    h("label", { htmlFor: "batch-endpoint" }, "Endpoint"),
    endpoint,
    h("p", { className: "sub" }, "Completion window: 24h"),
    h("label", { htmlFor: "batch-metadata" }, "Metadata (optional, one key=value a line)"),
    metadata,
    h("div", { className: "actions" },
      submit,
      h("button", { type: "button", className: "quiet", onclick: () => (el.hidden = true) }, "Close")),
    said
  )
  el.addEventListener("submit", async (event) => {
    event.preventDefault()
    submit.disabled = true
    say(said, "Starting…")
    try {
      const batch = await postJson("/v1/batches", {
        input_file_id: fileId,
        endpoint: endpoint.value,
        completion_window: "24h",
        metadata: parseMetadata(metadata.value)
      })
      location.hash = batchHref(batch.id)
    } catch (error) {
      say(said, messageOf(error), true)
    } finally {
      submit.disabled = false
    }
  })
  /** @param {FileObject} file @param {string} [guessed] the endpoint its first line names */
  const open = (file, guessed) => {
    fileId = file.id
    fill(fileName, file.filename, h("span", { className: "sub" }, file.id))
    if (guessed !== undefined && ![...endpoint.options].some((o) => o.value === guessed)) {
      endpoint.append(h("option", { value: guessed }, guessed))
    }
    if (guessed !== undefined) endpoint.value = guessed
    say(said, "")
    el.hidden = false
    el.scrollIntoView({ block: "nearest" })
  }
  return { el, open }
}

/** @param {(file: FileObject, guessed: string | undefined) => void} uploaded */
const uploadForm = (uploaded) => {
  const input = h("input", { id: "upload-file", type: "file", name: "file", accept: ".jsonl", required: true })
  const submit = h("button", { type: "submit" }, "Upload")
  const said = h("p", { className: "said" })
  const el = h(
    "form",
    { className: "card", id: "upload" },
    h("h2", {}, "Upload a JSONL file"),
    h("label", { htmlFor: "upload-file" }, "One request a line (purpose: batch)"),
    input,
    h("div", { className: "actions" }, submit),
    said
  )
  el.addEventListener("submit", async (event) => {
    event.preventDefault()
    const file = input.files?.[0]
    if (file === undefined) return
    const form = new FormData()
    form.append("purpose", "batch")
    form.append("file", file, file.name)
    submit.disabled = true
    say(said, `Uploading ${file.name} (${bytes(file.size)})…`)
    try {
      /** @type {FileObject} */
      const stored = await postForm("/v1/files", form)
      say(said, `Uploaded as ${stored.id}.`)
      el.reset()
      uploaded(stored, await firstEndpoint(file))
    } catch (error) {
      say(said, messageOf(error), true)
    } finally {
      submit.disabled = false
    }
  })
  return el
}

/** @param {FileObject} file @param {(file: FileObject) => void} start */
const fileRow = (file, start) =>
  h(
    "tr",
    {},
    h("td", { className: "name", dataset: { label: "File" } },
      h("span", {}, file.filename, h("span", { className: "sub" }, file.id))),
    h("td", { dataset: { label: "Purpose" } }, file.purpose),
    h("td", { className: "num", dataset: { label: "Size" } }, bytes(file.bytes)),
    h("td", { dataset: { label: "Created" } }, ago(file.created_at)),
    h("td", { className: "actions" },
      file.purpose === "batch"
        ? h("button", { type: "button", attrs: { "aria-label": `Start batch from ${visible(file.filename)}` }, onclick: () => start(file) }, "Start batch")
        : null,
      downloadButton(file.id, file.filename, { className: "quiet" }))
  )

/** @param {import("./app.js").ViewContext} context */
export function filesView({ signal, refresh: refreshNow }) {
  const start = startForm()
  const body = h("tbody")
  const more = h("button", { type: "button", className: "more", hidden: true }, "More")
  const empty = h("p", { className: "empty", hidden: true }, "No files yet.")
  /** Rows by file id, made once: a refresh keeps a download's progress line. @type {Map<string, HTMLElement>} */
  const rows = new Map()
  let shown = PAGE

  const table = h("table", { className: "files-list" }, headings(["File", "Purpose", "Size", "Created", ""]), body)
  /** @param {FileObject[]} files @param {boolean} hasMore */
  const render = (files, hasMore) => {
    const seen = new Set(files.map((f) => f.id))
    for (const id of [...rows.keys()]) if (!seen.has(id)) rows.delete(id)
    fill(body, files.map((f) => {
      const row = rows.get(f.id) ?? fileRow(f, (file) => start.open(file))
      rows.set(f.id, row)
      return row
    }))
    table.hidden = files.length === 0
    empty.hidden = files.length > 0
    more.hidden = !hasMore
    more.disabled = false
  }
  // Reads as many files as are shown, from the top: new ones appear above, deleted ones go. Page after page: a page
  // ends sooner than its limit at 1 MiB (`has_more`).
  const refresh = async () => {
    /** @type {FileObject[]} */
    const files = []
    /** @type {string | undefined} */
    let after
    let hasMore = true
    while (hasMore && files.length < shown) {
      /** @type {import("./api.js").Page<FileObject>} */
      const page = await json(`/v1/files${query({ limit: Math.min(shown - files.length, MAX_PAGE), order: "desc", after })}`, { signal })
      files.push(...page.data)
      hasMore = page.has_more && page.data.length > 0
      after = page.last_id ?? undefined
    }
    render(files, hasMore)
    return true
  }
  more.addEventListener("click", () => {
    shown += PAGE
    more.disabled = true
    refreshNow()
  })

  const upload = uploadForm((file, guessed) => {
    start.open(file, guessed)
    refreshNow()
  })

  const el = h(
    "section",
    {},
    h("div", { className: "heading" }, h("h1", {}, "Files")),
    h("div", { className: "forms" }, upload, start.el),
    table,
    empty,
    more
  )
  return { el, refresh, title: "Files", every: EVERY_MS }
}
