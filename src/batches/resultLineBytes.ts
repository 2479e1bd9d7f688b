/**
 * The output and error file lines of a page of `batch_results` rows, joined on SQLite (PostgreSQL joins them
 * itself: `sql.ts`). SQLite's own joining copied a large answer several times over and read each column stored
 * after it by walking its overflow pages again: a page of one 32 MiB answer held the event loop 1.4 s, 0.6–0.8 s
 * read as columns and joined here. A page of 1,000 small answers takes a little longer here (3.6 ms against 2.7).
 */
import { escapeLineSeparators } from "../domain/Json.js"
import type { ResultLines } from "./BatchStore.js"

/** The columns `resultLineBytes` reads, in its order; the answer as bytes, so that it is never decoded. */
export const RESULT_ROW_COLUMNS =
  "line, result_id, custom_id, status_code, request_id, error_code, error_message, CAST(response AS BLOB)"

type ResultRow = readonly [
  line: number,
  resultId: string,
  customId: string,
  statusCode: number | null,
  requestId: string | null,
  errorCode: string | null,
  errorMessage: string | null,
  response: Uint8Array | null
]

const json = (text: string | null) => (text === null ? "null" : escapeLineSeparators(JSON.stringify(text)))
const AFTER_BODY = Buffer.from(`},"error":null}\n`)

/**
 * Each row's line, `{"id","custom_id","response":{"status_code","request_id","body"},"error":null}` with the
 * upstream's answer embedded as stored, or `"response":null` and `"error":{"code","message"}`, with its newline.
 */
export const resultLinesOf = (values: ReadonlyArray<ReadonlyArray<unknown>>): ResultLines => {
  const rows = values as ReadonlyArray<ResultRow>
  const heads = new Array<string>(rows.length)
  let size = 0
  for (let i = 0; i < rows.length; i++) {
    const [, resultId, customId, status, requestId, code, message, body] = rows[i]!
    const head = status !== null && body !== null
      ? `{"id":${json(resultId)},"custom_id":${json(customId)},"response":{"status_code":${status},"request_id":${json(requestId)},"body":`
      : `{"id":${json(resultId)},"custom_id":${json(customId)},"response":null,"error":{"code":${json(code)},"message":${json(message)}}}\n`
    heads[i] = head
    size += Buffer.byteLength(head) + (status !== null && body !== null ? body.length + AFTER_BODY.length : 0)
  }
  const bytes = Buffer.allocUnsafe(size)
  let at = 0
  for (let i = 0; i < rows.length; i++) {
    at += bytes.write(heads[i]!, at)
    const [, , , status, , , , body] = rows[i]!
    if (status !== null && body !== null) {
      bytes.set(body, at)
      at += body.length
      at += AFTER_BODY.copy(bytes, at)
    }
  }
  // Every byte written: an answer that did not come as bytes (a column read as text) would leave some unset.
  if (at !== size) throw new Error(`result lines: wrote ${at} of ${size} bytes`)
  return { bytes, count: rows.length, lastLine: rows.length > 0 ? rows[rows.length - 1]![0] : 0 }
}
