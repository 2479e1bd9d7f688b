// @ts-check
/**
 * The files page (`#/files`): the upload form (multipart `POST /v1/files`, purpose `batch`), the form that starts
 * a batch from a file (`startForm.js`), and the files, newest first (all, or of one purpose), each to delete,
 * "More" showing 50 more. Refreshed every
 * 5 s while the tab is visible (files come and go through the API and batches' outputs), and at once after an
 * upload.
 */
import { fileUrl, json, postForm, query } from "./api.js"
import { downloadButton, h, headings, isBusy, messageOf, placeChildren, say, setBusy, statusLine } from "./dom.js"
import { ago, bytes, visible } from "./format.js"
import { localFirstLine, startForm } from "./startForm.js"

/** @typedef {import("./api.js").FileObject} FileObject */

const PAGE = 50
/** The API's largest page of files. */
const MAX_PAGE = 10_000
/** How often the list is read again. */
const EVERY_MS = 5000
/** @param {(file: FileObject, line: string) => void} uploaded */
const uploadForm = (uploaded) => {
  const input = h("input", { id: "upload-file", type: "file", name: "file", accept: ".jsonl", required: true })
  const submit = h("button", { type: "submit" }, "Upload")
  const said = statusLine("p")
  const el = h(
    "form",
    { className: "card", id: "upload" },
    h("h2", {}, "Upload a JSONL file"),
    h("label", { htmlFor: "upload-file" }, "JSONL file: one request a line (purpose: batch)"),
    input,
    h("div", { className: "actions" }, submit),
    said
  )
  el.addEventListener("submit", async (event) => {
    event.preventDefault()
    const file = input.files?.[0]
    if (file === undefined || isBusy(submit)) return
    const form = new FormData()
    form.append("purpose", "batch")
    form.append("file", file, file.name)
    setBusy(submit, true)
    say(said, `Uploading ${file.name} (${bytes(file.size)})…`)
    try {
      /** @type {FileObject} */
      const stored = await postForm("/v1/files", form)
      say(said, `Uploaded as ${stored.id}.`)
      el.reset()
      uploaded(stored, await localFirstLine(file))
    } catch (error) {
      say(said, messageOf(error), true)
    } finally {
      setBusy(submit, false)
    }
  })
  return el
}

/**
 * A file's row: its figures, and buttons to start a batch from it (an input), save it, and delete it.
 * @param {FileObject} file
 * @param {{ start: (file: FileObject) => void, remove: (file: FileObject) => void }} actions
 */
const fileRow = (file, { start, remove }) => {
  const name = visible(file.filename)
  return h(
    "tr",
    {},
    h("td", { className: "name", dataset: { label: "File" } },
      h("span", {}, file.filename, h("span", { className: "sub" }, file.id))),
    h("td", { dataset: { label: "Purpose" } }, file.purpose),
    h("td", { className: "num", dataset: { label: "Size" } }, bytes(file.bytes)),
    h("td", { dataset: { label: "Created" } }, ago(file.created_at)),
    h("td", { className: "actions" },
      file.purpose === "batch"
        ? h("button", { type: "button", attrs: { "aria-label": `Start batch from ${name}` }, onclick: () => start(file) }, "Start batch")
        : null,
      downloadButton(file.id, file.filename, { className: "quiet" }),
      h("button", { type: "button", className: "quiet danger", attrs: { "aria-label": `Delete ${name}` }, onclick: () => remove(file) }, "Delete"))
  )
}

/** The purposes the list can be narrowed to (the API's `purpose`): a batch's outputs would bury its inputs. */
const PURPOSES = [["", "All purposes"], ["batch", "Batch inputs"], ["batch_output", "Batch outputs and errors"]]

/** @param {import("./app.js").ViewContext} context */
export function filesView({ signal, refresh: refreshNow }) {
  const start = startForm(signal)
  const body = h("tbody")
  const more = h("button", { type: "button", className: "more", hidden: true, attrs: { "aria-label": "More files" } }, "More")
  const empty = h("p", { className: "empty", hidden: true })
  const purpose = h("select", { id: "files-purpose", attrs: { "aria-label": "Files of purpose" } },
    PURPOSES.map(([value, label]) => h("option", { value }, label)))
  /** What a delete did, said where a screen reader hears it. */
  const said = statusLine("p")
  /** Rows by file id, made once: a refresh keeps a download's progress line. @type {Map<string, HTMLElement>} */
  const rows = new Map()
  let shown = PAGE
  /** The rows "More" asked for, until a read answers it (busy till then), and the first one it adds, to focus. */
  let moreAsked = /** @type {number | null} */ (null)
  let focusRow = /** @type {number | null} */ (null)

  // Hidden until the first answer: a table of headers alone read as an empty list.
  const table = h("table", { className: "files-list", hidden: true }, headings(["File", "Purpose", "Size", "Created", "[Actions]"]), body)
  /** @param {FileObject[]} files @param {boolean} hasMore @param {number} wanted the rows the read was for */
  const render = (files, hasMore, wanted) => {
    const seen = new Set(files.map((f) => f.id))
    for (const id of [...rows.keys()]) if (!seen.has(id)) rows.delete(id)
    placeChildren(body, files.map((f) => {
      const row = rows.get(f.id) ?? fileRow(f, { start: (file) => void start.open(file), remove })
      rows.set(f.id, row)
      return row
    }))

    table.hidden = files.length === 0
    empty.hidden = files.length > 0
    empty.textContent = purpose.value === "" ? "No files yet." : "No files of this purpose."
    more.hidden = !hasMore
    // A read begun before "More" was pressed does not answer it; the first row it added takes the focus.
    if (moreAsked === null || wanted >= moreAsked) {
      setBusy(more, false)
      if (focusRow !== null) body.children[focusRow]?.querySelector("button")?.focus()
      moreAsked = focusRow = null
    }
  }
  // Reads as many files as are shown, from the top: new ones appear above, deleted ones go. Page after page: a page
  // ends sooner than its limit at 1 MiB (`has_more`).
  const refresh = async () => {
    /** @type {FileObject[]} */
    const files = []
    /** @type {string | undefined} */
    let after
    let hasMore = true
    const wanted = shown
    while (hasMore && files.length < wanted) {
      /** @type {import("./api.js").Page<FileObject>} */
      const page = await json(`/v1/files${query({ limit: Math.min(wanted - files.length, MAX_PAGE), order: "desc", after, purpose: purpose.value || undefined })}`, { signal })
      files.push(...page.data)
      hasMore = page.has_more && page.data.length > 0
      after = page.last_id ?? undefined
    }
    render(files, hasMore, wanted)
    return true
  }
  purpose.addEventListener("change", refreshNow)

  // After a confirmation, as a cancel: a deleted file is gone for every batch that would read it.
  /** @param {FileObject} file */
  const remove = async (file) => {
    if (!confirm(`Delete ${visible(file.filename)} (${file.id})? This cannot be undone.`)) return
    say(said, `Deleting ${file.filename}…`)
    try {
      await json(fileUrl(file.id), { method: "DELETE", signal })
      say(said, `Deleted ${file.filename}.`)
      // Its row goes now, the focus to the next row's first button (or the one before), not to the page.
      const row = rows.get(file.id)
      const next = row?.nextElementSibling ?? row?.previousElementSibling
      if (row?.contains(document.activeElement) === true) next?.querySelector("button")?.focus()
      row?.remove()
      rows.delete(file.id)
      refreshNow()
    } catch (error) {
      say(said, messageOf(error), true)
    }
  }
  more.addEventListener("click", () => {
    if (isBusy(more)) return
    focusRow = shown
    shown += PAGE
    moreAsked = shown
    setBusy(more, true)
    refreshNow()
  })

  const upload = uploadForm((file, line) => {
    void start.open(file, line)
    refreshNow()
  })

  const el = h(
    "section",
    {},
    h("div", { className: "heading" }, h("h1", {}, "Files"), h("span", { className: "grow" }), purpose),
    h("div", { className: "forms" }, upload, start.el),
    said,
    table,
    empty,
    more
  )
  return { el, refresh, title: "Files", every: EVERY_MS }
}
