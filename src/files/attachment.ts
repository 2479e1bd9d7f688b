/**
 * The `Content-Disposition` of a file's content (RFC 6266): `attachment` with the file's name, so that `curl -OJ`
 * saves it under that name rather than `content`. An ASCII `filename` for the clients that read only it (curl: other
 * characters, quotes, backslashes and `%` become `_`: Chromium decodes `%E2%82%AC` there), and RFC 8187's `filename*`
 * with the name exact when it differs (browsers). Not the `content-disposition` package: it cuts a name at a
 * backslash, which a stored name may hold (`a\b.jsonl`), and sends Latin-1 letters raw, which curl saves as Latin-1.
 */

/** The header's value for a file named `filename`. */
export const attachment = (filename: string): string => {
  const fallback = filename.replace(/[^\x20-\x7e]|["\\%]/gu, "_")
  return fallback === filename
    ? `attachment; filename="${filename}"`
    : `attachment; filename="${fallback}"; filename*=UTF-8''${rfc8187(filename)}`
}

/** Percent-encoded UTF-8 with only RFC 8187's `attr-char` left as is (`encodeURIComponent` also leaves `'()*`). */
const rfc8187 = (text: string) =>
  encodeURIComponent(text).replace(/['()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`)
