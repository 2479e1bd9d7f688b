/**
 * A file read whole only when it is a regular file of at most a given size: the keys file, the upstreams file, a
 * recording. A named pipe waited for a writer for ever (and the start with it, deaf to SIGTERM), and a device or a
 * /proc file says it has 0 bytes: `/dev/zero` as the keys file took 675 MB before it failed.
 */
import { constants } from "node:fs"
import * as fs from "node:fs/promises"

export type BoundedRead =
  | { readonly _tag: "Missing"; readonly code: string }
  | { readonly _tag: "NotAFile" }
  | { readonly _tag: "TooLarge" }
  | { readonly _tag: "Failed"; readonly message: string }
  | { readonly _tag: "Read"; readonly text: string }

const CHUNK_BYTES = 64 * 1024

/** The text of the file at `path` (UTF-8) if it is a regular file of at most `maxBytes`; never rejects. */
export const readBounded = async (path: string, maxBytes: number): Promise<BoundedRead> => {
  let handle: fs.FileHandle | undefined
  try {
    // A pipe or a device is refused before it is opened (opening some does something: a tape rewinds). Opened
    // non-blocking all the same, should one be put there meanwhile (a plain open of a pipe waits for its writer);
    // a regular file that refuses that (a lease held on it) is opened plainly.
    if (!(await fs.stat(path)).isFile()) return { _tag: "NotAFile" }
    const opened = await fs.open(path, constants.O_RDONLY | constants.O_NONBLOCK).catch((error: NodeJS.ErrnoException) =>
      error.code === "EAGAIN" || error.code === "EWOULDBLOCK" ? fs.open(path, "r") : Promise.reject(error))
    handle = opened
    const stat = await opened.stat()
    if (!stat.isFile()) return { _tag: "NotAFile" }
    if (stat.size > maxBytes) return { _tag: "TooLarge" }
    // Read up to one byte past the bound, whatever the size said: a file growing meanwhile is still cut there.
    const chunks: Array<Buffer> = []
    let total = 0
    while (total <= maxBytes) {
      const { buffer, bytesRead } = await opened.read(Buffer.alloc(Math.min(CHUNK_BYTES, maxBytes + 1 - total)), 0, undefined, null)
      if (bytesRead === 0) break
      chunks.push(buffer.subarray(0, bytesRead))
      total += bytesRead
    }
    if (total > maxBytes) return { _tag: "TooLarge" }
    return { _tag: "Read", text: Buffer.concat(chunks, total).toString("utf8") }
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code
    return code === "ENOENT" || code === "ENOTDIR"
      ? { _tag: "Missing", code }
      : { _tag: "Failed", message: typeof code === "string" ? `cannot be read (${code})` : "cannot be read" }
  } finally {
    await handle?.close()
  }
}

/** What a read that is not `Read` says of the file, for a setting's message ("is not a regular file"…). */
export const unreadable = (read: Exclude<BoundedRead, { _tag: "Read" }>, maxBytes: number, what: string): string => {
  switch (read._tag) {
    case "Missing":
      return `cannot be read (${read.code})`
    case "NotAFile":
      return "is not a regular file (a pipe, a device or a directory)"
    case "TooLarge":
      return `is larger than ${maxBytes / 1024 / 1024} MiB: not ${what}`
    case "Failed":
      return read.message
  }
}
