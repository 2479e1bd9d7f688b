/**
 * `Range: bytes=…` on a file's content (RFC 9110 §14): a download cut half-way (600 MB of embeddings) resumes from
 * where it stopped instead of starting over. One range only (a list of them is answered whole, as the RFC allows);
 * files never change, so no `If-Range` is needed. Pure; the stream cut to the range is `storage/sliceBytes.ts`.
 */

export type Wanted =
  | { readonly _tag: "All" }
  | { readonly _tag: "Part"; readonly start: number; readonly end: number }
  | { readonly _tag: "Unsatisfiable" }

const ALL: Wanted = { _tag: "All" }

/**
 * What a `Range` header asks of a file of `size` bytes: `end` inclusive, clamped to the file. A header that is not
 * one `bytes` range (another unit, several ranges, a malformed one) is ignored: the whole file, as the RFC says.
 */
export const wantedRange = (header: string | undefined, size: number): Wanted => {
  // An empty file has no byte to ask for: it is sent (empty) whatever the range.
  if (header === undefined || size === 0) return ALL
  const match = /^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$/i.exec(header)
  if (match === null || (match[1] === "" && match[2] === "")) return ALL
  const [first, last] = [match[1]!, match[2]!]
  if (first === "") {
    // A suffix: the last N bytes.
    const length = Number(last)
    if (length === 0) return { _tag: "Unsatisfiable" }
    return { _tag: "Part", start: Math.max(size - length, 0), end: size - 1 }
  }
  const start = Number(first)
  const end = last === "" ? size - 1 : Math.min(Number(last), size - 1)
  if (!Number.isSafeInteger(start) || start >= size) return { _tag: "Unsatisfiable" }
  if (end < start) return ALL // an invalid range: ignored
  return { _tag: "Part", start, end }
}
