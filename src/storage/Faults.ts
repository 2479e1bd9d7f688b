/**
 * Storage faults told apart from the rest: a full disk or database is a fault of the server, not of the batch or
 * the request that met it, and it ends once space is freed. Pure: it only looks at the errors it is given.
 *
 * The driver's error is usually wrapped (an `SqlError` around a better-sqlite3 `SqliteError` or a pg
 * `DatabaseError`, a platform `SystemError` around Node's errno error), so every error is followed down its
 * `.cause` chain (and an `AggregateError`'s `.errors`).
 *
 *   capacity     no space to write: SQLite `SQLITE_FULL` (also what a full disk under the database gives, and
 *                `SQLITE_IOERR_SHMSIZE`, a WAL index that could not grow), errno `ENOSPC` / `EDQUOT` (file
 *                bytes on a full disk or over quota), PostgreSQL SQLSTATE `53100` (disk_full).
 *   refused      the storage takes no write for now: errno `EROFS` (a file system mounted read-only, as Linux
 *                remounts one after errors), `EACCES` / `EPERM` (permissions taken away), SQLite `SQLITE_READONLY`
 *                and its extended codes, PostgreSQL `25006` under an `SqlError` (a standby after a failover). Waited out as the others (an operator puts it right): a batch whose
 *                output file met a read-only `DATA_DIR` failed for good, its results unreachable by the API.
 *   unavailable  the database cannot serve for now, only when met under an `SqlError`: PostgreSQL `53000`
 *                (insufficient_resources), `53200` (out_of_memory), `53300` (too_many_connections), `08000`,
 *                `08001`, `08003`, `08004`, `08006` (connection exceptions), `57014` (a statement timed out:
 *                `DATABASE_STATEMENT_TIMEOUT`, or the server's own), `57P01`–`57P03` (shutting down, starting up); a lost or refused connection (`ECONNREFUSED`, `ECONNRESET`, …, pg's "Connection
 *                terminated…", a connection not made in time: "Connection timed out"); SQLite `SQLITE_NOMEM`, `SQLITE_BUSY` and its extended codes (another process on
 *                the file held its write lock past the busy timeout).
 *
 * Not storage faults: other `SQLITE_IOERR_*` codes (a failing device, not a full one: SQLite reports a write
 * that hit ENOSPC as `SQLITE_FULL`), `SQLITE_CORRUPT`, PostgreSQL `53400` (configuration_limit_exceeded, such as
 * `temp_file_limit`: waiting does not help), and any message text outside an `SqlError`.
 */
import { Cause } from "effect"

export type StorageFault = "capacity" | "refused" | "unavailable"

const capacityCodes = new Set(["SQLITE_FULL", "SQLITE_IOERR_SHMSIZE", "ENOSPC", "EDQUOT", "53100"])
const refusedCodes = new Set(["EROFS", "EACCES", "EPERM", "SQLITE_READONLY"])
/** PostgreSQL's read_only_sql_transaction: a server in recovery, a failover onto a standby. */
const refusedSqlCodes = new Set(["25006"])

/** Codes that mean "unavailable" only when they come from the SQL client (a socket error elsewhere is not one). */
const unavailableSqlCodes = new Set([
  "SQLITE_NOMEM",
  "SQLITE_BUSY",
  "53000",
  "53200",
  "53300",
  "57014",
  "57P01",
  "57P02",
  "57P03",
  "08000",
  "08001",
  "08003",
  "08004",
  "08006",
  "ECONNREFUSED",
  "ECONNRESET",
  "EPIPE",
  "ETIMEDOUT",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "EAI_AGAIN"
])

/** pg's own errors for a lost connection carry no code. */
const lostConnection = /^(Connection terminated|Client has encountered a connection error|timeout exceeded when trying to connect|Connection timed out)/

const MAX_DEPTH = 16

const field = (u: object, key: string): unknown => {
  try {
    return (u as Record<string, unknown>)[key]
  } catch {
    return undefined
  }
}

const worse = (a: StorageFault | undefined, b: StorageFault | undefined): StorageFault | undefined =>
  a === "capacity" || b === "capacity" ? "capacity" : a ?? b

const classify = (u: unknown, underSql: boolean, depth: number, seen: Set<unknown>): StorageFault | undefined => {
  if (typeof u !== "object" || u === null || depth > MAX_DEPTH || seen.has(u)) return undefined
  seen.add(u)
  const sql = underSql || field(u, "_tag") === "SqlError"
  const code = field(u, "code")
  let found: StorageFault | undefined
  if (typeof code === "string") {
    if (capacityCodes.has(code)) return "capacity"
    if (refusedCodes.has(code) || code.startsWith("SQLITE_READONLY_") || (sql && refusedSqlCodes.has(code))) found = "refused"
    else if (sql && (unavailableSqlCodes.has(code) || code.startsWith("SQLITE_BUSY_"))) found = "unavailable"
  }
  const message = field(u, "message")
  if (sql && found === undefined && typeof message === "string" && lostConnection.test(message)) found = "unavailable"
  found = worse(found, classify(field(u, "cause"), sql, depth + 1, seen))
  const errors = field(u, "errors")
  if (Array.isArray(errors)) {
    for (const e of errors) found = worse(found, classify(e, sql, depth + 1, seen))
  }
  return found
}

/** The storage fault an error (a failure or a defect) is, following its `.cause` chain; none for anything else. */
export const storageFaultOf = (error: unknown): StorageFault | undefined => classify(error, false, 0, new Set())

/**
 * The storage fault among a cause's failures and defects: `capacity` if any of them is one (a full disk tends to
 * bring down other operations with it, whose errors say less), else the first other one; none when no failure or
 * defect is a storage fault (interruptions alone included).
 */
export const storageFault = (cause: Cause.Cause<unknown>): StorageFault | undefined => {
  let found: StorageFault | undefined
  for (const error of [...Cause.failures(cause), ...Cause.defects(cause)]) {
    found = worse(found, storageFaultOf(error))
    if (found === "capacity") return found
  }
  return found
}

/** Whether `u`, or an error along its `.cause` chain, is an `SqlError` or under one, with the code `code`. */
const sqlCodeIn = (u: unknown, code: string, underSql: boolean, depth: number): boolean => {
  if (typeof u !== "object" || u === null || depth > MAX_DEPTH) return false
  const sql = underSql || field(u, "_tag") === "SqlError"
  return (sql && field(u, "code") === code) || sqlCodeIn(field(u, "cause"), code, sql, depth + 1)
}

/**
 * Whether the cause holds PostgreSQL's insufficient_privilege (`42501`): a grant taken away, or a table a later
 * release added without `ALTER DEFAULT PRIVILEGES`. Not a storage fault a batch waits out: its reads still work, so
 * each retry sent a window of requests upstream again before its writes were refused (every 30 s, for as long as
 * it lasted). A request that meets it gets a 503 (`Middleware.ts`); a start says what the role needs.
 */
export const privilegeMissing = (cause: Cause.Cause<unknown>): boolean =>
  [...Cause.failures(cause), ...Cause.defects(cause)].some((error) => sqlCodeIn(error, "42501", false, 0))

/** Whether the cause holds a capacity fault: no space left to write (disk, quota or database full). */
export const isCapacityFault = (cause: Cause.Cause<unknown>): boolean => storageFault(cause) === "capacity"

/** The innermost message of an error's `cause` chain: what the driver said (`connect ECONNREFUSED 10.0.0.5:5432`). */
export const rootMessage = (error: unknown): string => {
  let at: unknown = error
  while (at instanceof Error && at.cause instanceof Error) at = at.cause
  return at instanceof Error ? at.message : String(at)
}

/** The state of the storage a fault says: `full` (capacity), `not writable` (refused) or `unavailable`. */
export const storageState = (fault: StorageFault): string =>
  fault === "capacity" ? "full" : fault === "refused" ? "not writable" : "unavailable"

/**
 * What the driver said in the error of `cause` that is `fault` (a full disk brings other operations down with it,
 * whose errors say less); the first error's words when none is.
 */
export const faultWords = (fault: StorageFault | undefined, cause: Cause.Cause<unknown>): string => {
  const faulty = fault === undefined ? undefined : [...Cause.failures(cause), ...Cause.defects(cause)].find((error) => storageFaultOf(error) === fault)
  return rootMessage(faulty ?? Cause.squash(cause))
}

/** What the storage fault in `cause` is, in a few words, with what the driver said: for a line of its own. */
export const describeStorageFault = (fault: StorageFault, cause: Cause.Cause<unknown>): string =>
  `${storageState(fault)} (${faultWords(fault, cause).slice(0, 300)})`
