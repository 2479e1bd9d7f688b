// @ts-check
/**
 * A file's content, read through the API with the key (a plain link cannot send it): saved whole under the file's
 * name with its progress, or just its first line (asked as a `Range` of its first bytes; the read stops there).
 */
import { fileUrl, readWithin } from "./api.js"

/** Chunks gathered before they are added to the Blob, so that the script's own memory stays small. */
const BLOB_STEP_BYTES = 8 * 1024 * 1024

/**
 * A file's content as a Blob, `progress` told the bytes received (and the total, when the server gave a
 * `content-length`). The chunks are added to the Blob every 8 MB: the browser keeps a Blob's bytes in its own
 * storage (Chromium moves large ones to disk), the script only the last few MB. A download fails when no byte
 * came for the call's time limit, however long it takes in all.
 * @param {string} fileId
 * @param {(received: number, total: number | null) => void} progress
 */
const content = (fileId, progress) =>
  readWithin(`${fileUrl(fileId)}/content`, {}, async (res, extend) => {
    const size = Number(res.headers.get("content-length"))
    const total = Number.isSafeInteger(size) && size > 0 ? size : null
    if (res.body === null) return res.blob()
    const reader = res.body.getReader()
    let blob = new Blob([])
    /** @type {Uint8Array<ArrayBuffer>[]} */
    let chunks = []
    let pending = 0
    let received = 0
    for (;;) {
      const { done, value } = await reader.read()
      if (done) return new Blob([blob, ...chunks])
      extend()
      chunks.push(value)
      pending += value.byteLength
      received += value.byteLength
      if (pending >= BLOB_STEP_BYTES) {
        blob = new Blob([blob, ...chunks])
        chunks = []
        pending = 0
      }
      progress(received, total)
    }
  })

/**
 * Saves a file's content under `name` (the API needs the key header, so a plain link cannot fetch it).
 * @param {string} fileId
 * @param {string} name
 * @param {(received: number, total: number | null) => void} [progress]
 */
export async function download(fileId, name, progress = () => {}) {
  const url = URL.createObjectURL(await content(fileId, progress))
  const link = document.createElement("a")
  link.href = url
  link.download = name
  document.body.append(link)
  link.click()
  link.remove()
  // The download holds the Blob itself; the URL only has to live until it started.
  setTimeout(() => URL.revokeObjectURL(url), 10_000)
}

/**
 * The start of a file's content: up to its first newline, at most `max` bytes (asked as a `Range`; a server that
 * sends the whole file anyway has the rest cancelled unread).
 * @param {string} fileId
 * @param {number} max
 * @param {AbortSignal} [signal]
 * @returns {Promise<string>}
 */
export const firstLine = (fileId, max, signal) =>
  readWithin(`${fileUrl(fileId)}/content`, { signal, headers: { range: `bytes=0-${max - 1}` } }, async (res) => {
    if (res.body === null) return ""
    const reader = res.body.getReader()
    const decoder = new TextDecoder()
    let text = ""
    let read = 0
    try {
      while (read < max && !text.includes("\n")) {
        const { done, value } = await reader.read()
        if (done) break
        read += value.byteLength
        text += decoder.decode(value, { stream: true })
      }
    } finally {
      void reader.cancel().catch(() => {})
    }
    return text.split("\n")[0] ?? ""
  })
