/**
 * The reads clients poll (a batch, the batch list, a file, the file list) on a connection of their own. Why: each
 * `@effect/sql` statement costs ~120 steps of Effect's runtime (its span, scope, connection permit and prepared
 * statement cache), more than a third of a poll's; on SQLite these reads run instead as one synchronous call on a
 * read-only connection to the same file. It sees what is committed (WAL gives each read a snapshot), never another
 * fiber's transaction in progress, and does not wait for one to end. A read made inside a transaction still goes
 * through the transaction's connection, so that it sees the transaction's own writes. A read repeated before any
 * commit gives the rows it gave, unread.
 *
 * `layerSqlite` provides it for a database file; PostgreSQL, an in-memory or temporary SQLite database and storage of
 * your own do without it: `readValuesOf` then runs the statement through the `SqlClient` as any other, as it does
 * for a store given another `SqlClient` than the one the connection reads the file of.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { SqlError } from "@effect/sql/SqlError"
import type * as Statement from "@effect/sql/Statement"
import Database from "better-sqlite3"
import { Context, Effect, Layer, Option } from "effect"
import { LIST_PAGE_BYTES } from "../domain/List.js"

export type Rows = ReadonlyArray<ReadonlyArray<unknown>>

/** Runs a read statement, giving its rows as arrays of their columns (what `statement.values` gives). */
export type ReadValues = (statement: Statement.Statement<unknown>) => Effect.Effect<Rows, SqlError>

export interface ReadConnectionShape {
  /** The client whose database this connection reads: the stores given another one read through theirs. */
  readonly client: SqlClient.SqlClient
  readonly values: ReadValues
}

export class ReadConnection extends Context.Tag("ReadConnection")<ReadConnection, ReadConnectionShape>() {}

/** Prepared statements kept per connection: the polled reads are a handful of texts; a cursor or filter adds a few. */
const PREPARED_LIMIT = 64

/**
 * The most rows (and reads), and their values' characters, kept for reads repeated while the database is unchanged
 * (a larger read is not kept): what is built from them (records, pages, their JSON) lives as long, and a batch's
 * row may hold 64 KiB of validation errors.
 */
const REPEATED_ROWS_LIMIT = 10_000
const REPEATED_CHARS_LIMIT = 8 * 1024 * 1024

/** About how many characters `row` takes as stored (its texts' and bytes' lengths, a few for each other value). */
const storedChars = (row: ReadonlyArray<unknown>) => {
  let chars = 0
  for (const value of row) chars += 24 + (typeof value === "string" || value instanceof Uint8Array ? value.length : 0)
  return chars
}

/**
 * How many of a list read's `rows` (at most `limit`) go in its page: as many as `LIST_PAGE_BYTES` holds by their
 * stored size, one at least, so that the rows left out are never decoded.
 */
export const rowsInPage = (rows: Rows, limit: number): number => {
  const most = Math.min(limit, rows.length)
  let chars = 0
  for (let i = 0; i < most; i++) {
    chars += storedChars(rows[i]!)
    if (i > 0 && chars > LIST_PAGE_BYTES) return i
  }
  return most
}

/** What `sqliteFile` found, per client (asked once: several layers built at start want it). */
const filesOf = new WeakMap<SqlClient.SqlClient, string>()

/** The file of the SQLite database `sql` is connected to, as SQLite names it: `""` for one in memory or temporary. */
export const sqliteFile = (sql: SqlClient.SqlClient) =>
  Effect.suspend(() => {
    const known = filesOf.get(sql)
    if (known !== undefined) return Effect.succeed(known)
    return Effect.map(sql<{ file: string }>`SELECT file FROM pragma_database_list WHERE name = 'main'`, (rows) => {
      const file = rows[0]?.file ?? ""
      filesOf.set(sql, file)
      return file
    })
  })

/**
 * A read-only connection to the file of the SQLite database of the `SqlClient` (build it once the migrations have
 * made the file); none for a database in memory or temporary, which no other connection can open.
 */
export const sqliteReadConnection: Layer.Layer<never, SqlError, SqlClient.SqlClient> = Layer.unwrapEffect(
  Effect.gen(function*() {
    const client = yield* SqlClient.SqlClient
    const file = yield* sqliteFile(client)
    return file === "" ? Layer.empty : Layer.scoped(ReadConnection, openReadConnection(client, file))
  })
)

const openReadConnection = (client: SqlClient.SqlClient, filename: string) =>
  Effect.gen(function*() {
    const db = yield* Effect.acquireRelease(
      Effect.try({
        try: () => new Database(filename, { readonly: true, fileMustExist: true }),
        catch: (cause) => new SqlError({ cause, message: "Failed to open the read connection" })
      }),
      (db) => Effect.sync(() => db.close())
    )
    const prepared = new Map<string, Database.Statement>()
    // A read repeated while no connection (another process's included) has committed gives the rows it gave (the
    // same array: its readers treat it as read-only). Why: the clients' polls of one event-loop turn ask the same
    // few reads (a list page, a batch), and SQLite's stepping and the rows' conversion are most of a poll's reads.
    // `PRAGMA data_version` changes with every commit made on another connection; it is read before the statement,
    // so rows a commit overtook are kept under the version before it, and never served once it is seen.
    const dataVersion = db.prepare("PRAGMA data_version").pluck()
    let keptVersion: unknown
    const kept = new Map<string, Rows>()
    let keptRows = 0
    let keptChars = 0
    const read = (text: string, params: ReadonlyArray<unknown>): Rows => {
      const version = dataVersion.get()
      if (version !== keptVersion) {
        kept.clear()
        keptRows = 0
        keptChars = 0
        keptVersion = version
      }
      const key = params.length === 0 ? text : `${text}\u0000${params.map((p) => `${typeof p}:${String(p)}`).join("\u0000")}`
      const known = kept.get(key)
      if (known !== undefined) return known
      const rows = prepare(text).all(...params) as Rows
      if (keptRows + rows.length < REPEATED_ROWS_LIMIT) {
        let chars = 0
        for (const row of rows) chars += storedChars(row)
        if (keptChars + chars <= REPEATED_CHARS_LIMIT) {
          kept.set(key, rows)
          keptRows += rows.length + 1 // an empty read counts as one: the entries are bounded too
          keptChars += chars
        }
      }
      return rows
    }
    const prepare = (text: string) => {
      let statement = prepared.get(text)
      if (statement === undefined) {
        if (prepared.size >= PREPARED_LIMIT) prepared.clear()
        statement = db.prepare(text).raw(true)
        prepared.set(text, statement)
      }
      return statement
    }
    return ReadConnection.of({
      client,
      values: (statement) =>
        Effect.try({
          try: () => {
            const [text, params] = statement.compile()
            return read(text, params)
          },
          catch: (cause) => new SqlError({ cause, message: "Failed to execute statement" })
        })
    })
  })

/**
 * What `build` makes of a read's rows (and `key`: a page's size), made once per rows array: a read repeated before any
 * commit gives the same array, so the polls of one event-loop turn share what is decoded from it, and its JSON.
 */
export const sharedPerRows = <A, K = undefined>(build: (rows: Rows, key: K) => A) => {
  const built = new WeakMap<Rows, { readonly key: K; readonly value: A }>()
  return (rows: Rows, key: K): A => {
    const known = built.get(rows)
    if (known !== undefined && known.key === key) return known.value
    const value = build(rows, key)
    built.set(rows, { key, value })
    return value
  }
}

/**
 * How a store on `sql` runs its polled reads: on the `ReadConnection` when there is one for `sql` and the fiber is in
 * no transaction, else through `sql` (`statement.values`).
 */
export const readValuesOf = (sql: SqlClient.SqlClient): Effect.Effect<ReadValues> =>
  Effect.map(
    Effect.serviceOption(ReadConnection),
    (connection): ReadValues =>
      Option.isSome(connection) && connection.value.client === sql
        ? (statement) =>
          Effect.flatMap(
            Effect.serviceOption(SqlClient.TransactionConnection),
            (transaction) => Option.isSome(transaction) ? statement.values : connection.value.values(statement)
          )
        : (statement) => statement.values
  )
