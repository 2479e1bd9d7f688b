/**
 * The SQLite file's pages checked at start (`PRAGMA quick_check`): a copy taken while a server wrote may have pages
 * from different moments (one such `cp` in 25 in a trial, 9 in 40 in another, under four large batches). Opened as
 * it was, such a copy started, answered 500 wherever a read met a damaged page, and its start's orphan check set
 * real files' bytes aside as bytes no row names. Pages that only belong to nothing (leaked by such a copy), the file
 * otherwise whole by a full `integrity_check`, are said, not refused: `VACUUM` gives them back.
 */
import type * as SqlClient from "@effect/sql/SqlClient"
import { SqlError } from "@effect/sql/SqlError"
import { Duration, Effect } from "effect"
import { closeSync, openSync, readSync, statSync } from "node:fs"
import { freemem } from "node:os"

/** A check at start longer than this is said. */
const SAID_AFTER = Duration.seconds(2)

/**
 * How many problems the check reports at most: the b-trees' come first, then pages used by nothing, then indexes
 * whose entries do not match their tables (not reached past the limit: hence `integrityOf` when pages leaked).
 */
const MOST_REPORTED = 20

/** SQLite's words for a page that belongs to no table, index or free list (`Page 81814: never used`). */
const LEAKED_PAGE = /^Page \d+(:| is) never used$/

/**
 * The file read once from start to end, when it fits in a quarter of the free memory: the check walks the b-trees,
 * whose pages lie anywhere in the file, and from a cold disk a 555 MB file took 7.5 s that way against 1.2 s read in
 * order first (a start after a reboot, a restore, a new pod).
 */
const readInOrder = (filename: string) => {
  try {
    // A container's memory limit, when there is one, is the memory there is (`freemem` reads the host's).
    const memory = Math.min(freemem(), process.constrainedMemory?.() || Number.POSITIVE_INFINITY)
    if (statSync(filename).size > memory / 4) return
    const fd = openSync(filename, "r")
    try {
      const buffer = Buffer.allocUnsafe(1024 * 1024)
      while (readSync(fd, buffer, 0, buffer.length, null) > 0) {
        // read for the page cache only
      }
    } finally {
      closeSync(fd)
    }
  } catch {
    // not a file (in memory), or unreadable: the check says what it finds
  }
}

/** The problems a check's rows report: one a row, or several in a row's text, one a line, under a `***` heading. */
const problemsOf = (rows: ReadonlyArray<Record<string, unknown>>) =>
  rows.flatMap((row) => String(Object.values(row)[0]).split("\n"))
    .map((line) => line.trim()).filter((line) => line !== "ok" && line !== "" && !line.startsWith("***"))

/**
 * `PRAGMA integrity_check` with room for every page to be reported leaked and what comes after: whether indexes match
 * their tables, which `quick_check` does not look at (a torn copy's leaked pages are a sign to look: its indexes can
 * be another moment's). Seven times `quick_check`'s time; run only when pages leaked.
 */
const integrityOf = (sqlite: SqlClient.SqlClient) =>
  Effect.flatMap(sqlite.unsafe<{ page_count: number }>("PRAGMA page_count"), ([count]) =>
    Effect.map(sqlite.unsafe<Record<string, unknown>>(`PRAGMA integrity_check(${Number(count?.page_count ?? 0) + 100})`), problemsOf))

/**
 * Fails when `PRAGMA quick_check` finds the file at `filename` (opened by `sqlite`) damaged; says pages leaked (once
 * `integrity_check` found nothing else), and a check that took long. `quick_check` reads every page once: half a
 * second for 400 MB cached, 7.5 s for 555 MB from a cold disk before `readInOrder`.
 */
export const refuseDamagedPages = (sqlite: SqlClient.SqlClient, filename: string) =>
  Effect.gen(function*() {
    const [took, problems] = yield* Effect.timed(Effect.gen(function*() {
      readInOrder(filename)
      const quick = problemsOf(yield* sqlite.unsafe<Record<string, unknown>>(`PRAGMA quick_check(${MOST_REPORTED})`))
      return quick.length > 0 && quick.every((line) => LEAKED_PAGE.test(line)) ? yield* integrityOf(sqlite) : quick
    }))
    const damage = problems.filter((line) => !LEAKED_PAGE.test(line))
    if (damage.length > 0) {
      return yield* Effect.fail(new SqlError({
        // SQLite's words for damage (what `startFaultLines.ts` reads), then what the check found.
        message: `database disk image is malformed (SQLite's check: ${damage.slice(0, 3).join("; ").slice(0, 300)})`
      }))
    }
    if (problems.length > 0) {
      yield* Effect.logWarning(
        `The database file has ${problems.length} page(s) that belong to nothing (its data is whole: a copy taken ` +
          "while a server wrote leaves them); `sqlite3 batches.sqlite VACUUM`, the server stopped, gives the space back."
      ).pipe(Effect.annotateLogs({ event: "database.leaked_pages" }))
    }
    // A start that sat silent for a large file's check says what it did.
    if (Duration.greaterThan(took, SAID_AFTER)) {
      yield* Effect.logInfo(`Checked the database file's pages in ${(Duration.toMillis(took) / 1000).toFixed(1)} s.`).pipe(
        Effect.annotateLogs({ event: "database.checked" })
      )
    }
  })
