/**
 * Files whose bytes a start cannot find, in a store kept apart from the database (files on disk): a database
 * restored newer than its files' copy (or copied after them, a file made in between) lists files whose downloads
 * then fail. Said once at start, with the first ids, so that an operator can put the right copy in place while
 * the old one is at hand; nothing is changed (the bytes may yet be put back).
 */
import type * as SqlClient from "@effect/sql/SqlClient"
import { Effect } from "effect"
import type { BlobStoreShape } from "../storage/BlobStore.js"
import { nowSeconds } from "../storage/Sql.js"

/** Files made this recently are not looked at: their bytes may have been published after the directory was read. */
const YOUNG_SECONDS = 60
/** Rows read at a time. */
const PAGE = 1_000
/** The ids the line names (its count says how many in all). */
const NAMED = 20

/** The warning of `count` files without bytes, `named` the first of them, the bytes looked for in `dir`. */
export const missingBytesLine = (count: number, named: ReadonlyArray<string>, dir: string) =>
  `${count} file(s) listed in the database have no bytes in ${dir} (${named.join(", ")}${count > named.length ? ", …" : ""}): ` +
  "a database restored newer than its files' copy, the files' copy taken before the database's, or FILE_STORAGE " +
  'changed since they were stored. Their downloads fail until the bytes are put back (README, "Backup and ' +
  'restore"); delete the files that are no longer needed.'

/** Says the files listed in `sql` whose bytes `blobs` does not hold (a store kept apart from the database only). */
export const sayMissingBytes = (sql: SqlClient.SqlClient, blobs: BlobStoreShape) =>
  Effect.gen(function*() {
    if (blobs.published === undefined) return
    const { dir, keys } = blobs.published
    // The directory first, then the rows: a row is written after its bytes are published, and removed before
    // them, so a row read after the listing whose bytes it lacks had none then, unless the row is younger than
    // YOUNG_SECONDS (its bytes may have been published after the listing, its `created_at` read before).
    const before = (yield* nowSeconds) - YOUNG_SECONDS
    const present = yield* keys
    const named: Array<string> = []
    let count = 0
    let after = ""
    for (;;) {
      const rows = yield* sql<{ id: string }>`SELECT id FROM files WHERE id > ${after} AND created_at < ${before}
        ORDER BY id LIMIT ${PAGE}`
      for (const { id } of rows) {
        if (present.has(id)) continue
        count++
        if (named.length < NAMED) named.push(id)
      }
      if (rows.length < PAGE) break
      after = rows[rows.length - 1]!.id
    }
    if (count > 0) {
      yield* Effect.logWarning(missingBytesLine(count, named, dir)).pipe(Effect.annotateLogs({ event: "files.missing_bytes", files: count }))
    }
  }).pipe(
    // A check that only warns does not stop the start (a database that answers no query stops it soon enough).
    Effect.catchAllCause((cause) => Effect.logWarning("The start's check of the files' bytes failed", cause)),
    Effect.withSpan("FileStore.sayMissingBytes")
  )
