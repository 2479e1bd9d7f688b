/**
 * The SQL layer: a `SqlClient` with every migration applied. SQLite (one file in `DATA_DIR`, WAL mode) is the
 * default; `DATABASE_URL` selects Postgres. The store code only talks to `SqlClient` (with small
 * `onDialectOrElse` branches where the dialects disagree), so a dialect is a layer here, not a rewrite.
 */
import * as Reactivity from "@effect/experimental/Reactivity"
import * as SqlClient from "@effect/sql/SqlClient"
import type * as SqlConnection from "@effect/sql/SqlConnection"
import * as Statement from "@effect/sql/Statement"
import { SqlError } from "@effect/sql/SqlError"
import * as PgClient from "@effect/sql-pg/PgClient"
import * as SqliteClient from "@effect/sql-sqlite-node/SqliteClient"
import Database from "better-sqlite3"
import { Clock, Duration, Effect, Layer, Option, Redacted } from "effect"
import { closeSync, openSync, readSync, statSync } from "node:fs"
import * as Path from "node:path"
import { AppConfig, defaults } from "../Config.js"
import type { Visibility } from "../domain/Projects.js"
import { postgresText } from "../observability/urlText.js"
import { makeDirectoriesSync } from "./makeDirectories.js"
import { migrations } from "./migrations.js"
import { type DatabasePlace, runMigrations } from "./migrationsTable.js"
import { makePool, type PoolOptions, type StatementBound } from "./pgPool.js"
import { sqliteReadConnection } from "./ReadConnection.js"
import { rootMessage } from "./Faults.js"
import { refuseDamagedPages } from "./sqliteCheck.js"
import { refuseOtherEncodings, refuseSharedSessionsOf } from "./pgSessions.js"
import { lockWaitingConnection, lockWaitingTransaction, SQLITE_BUSY_TIMEOUT_MS } from "./sqliteLocks.js"

/**
 * The advisory lock that serializes the migrations of the nodes on one schema: its key is the schema's (nodes on
 * other schemas of the database have tables of their own, and need not wait for each other's).
 */
export const MIGRATION_LOCK = "hashtextextended('effect-openai-batch migrations ' || current_schema(), 0)"

/**
 * Applies every pending migration to the `SqlClient` it is given (at `place`: a new database is said, where). On
 * Postgres, nodes starting at once take turns through an advisory lock held on a connection of its own: the
 * migrator's own table lock comes too late, as two nodes can both find its table missing and race to create it.
 */
export const migrationsAt = (place?: DatabasePlace) => Layer.effectDiscard(Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  const migrate = runMigrations(migrations, place)
  yield* sql.onDialectOrElse({
    pg: () =>
      Effect.scoped(Effect.gen(function*() {
        yield* refuseOtherEncodings(sql)
        const connection = yield* sql.reserve
        yield* connection.executeRaw(`SELECT pg_advisory_lock(${MIGRATION_LOCK})`, [])
        yield* Effect.ensuring(
          migrate,
          Effect.ignore(connection.executeRaw(`SELECT pg_advisory_unlock(${MIGRATION_LOCK})`, []))
        )
      })),
    orElse: () => migrate
  })
}).pipe(Effect.withSpan("Sql.migrate")))

/** The migrations of a database whose place is not known: a new one is not said. */
export const MigrationsLive = migrationsAt()

/**
 * WAL with `synchronous = NORMAL`: a commit is durable once it is in the write-ahead log, which survives a crash
 * or kill of the process (what "nothing lost on restart" protects against); only an OS crash or power loss can
 * drop the last commits. `FULL` would fsync on every commit and cap the runner at a few hundred writes a second.
 * `secure_delete`: what is deleted (prompts and answers, once their files are gone) is overwritten with zeros, not
 * left readable in the file's free pages (a privacy trial read 6,009 of them there after every row was swept).
 */
const SqlitePragmas = Layer.effectDiscard(Effect.flatMap(SqlClient.SqlClient, (sql) =>
  Effect.all([
    sql`PRAGMA synchronous = NORMAL`,
    sql.unsafe(`PRAGMA journal_size_limit = ${WAL_SIZE_LIMIT}`),
    sql`PRAGMA secure_delete = ON`
  ], { discard: true })))

/**
 * The size the write-ahead log is cut back to once checkpointed. Why: SQLite reuses its WAL file from the start and
 * keeps it at its high-water mark (a soak's burst left hundreds of MB there until the next restart).
 */
export const WAL_SIZE_LIMIT = 64 * 1024 * 1024

/**
 * `connection`, whose ROLLBACK with nothing left to undo succeeds: its BEGIN met another process's lock past the
 * busy timeout, or SQLite undid the transaction itself (a full disk, an I/O error), savepoints included. @effect/sql
 * makes a failed ROLLBACK a defect that replaces the transaction's own error: a full disk (in a transaction, or in
 * one within another) was a fault of no kind instead of a 507, and a lock held elsewhere an error with a stack
 * instead of the storage warning it is.
 */
const rollbackWhenBegun = (connection: SqlConnection.Connection): SqlConnection.Connection => ({
  ...connection,
  executeUnprepared: (sql, params, transformRows) => {
    const undone = sql === "ROLLBACK" ? /no transaction is active/ : sql.startsWith("ROLLBACK TO SAVEPOINT ") ? /no such savepoint/ : undefined
    const statement = connection.executeUnprepared(sql, params, transformRows)
    return undone === undefined ? statement : Effect.catchIf(statement, (error) => undone.test(rootMessage(error)), () => Effect.succeed([]))
  }
})

/**
 * @effect/sql-sqlite-node's connection, its transactions begun with `BEGIN IMMEDIATE`. Why: another process may
 * write to the same file (an API-only node beside one that runs the batches, `MAX_CONCURRENT_BATCHES=0`), and a
 * transaction begun with `BEGIN` takes the write lock only at its first write, which then fails at once with
 * `SQLITE_BUSY` if the other process wrote since the transaction's first read; `IMMEDIATE` takes the lock first,
 * waiting for the other's commit (up to 5 s, from a timer: `sqliteLocks.ts`). Within one process nothing changes: its one
 * connection already runs one transaction at a time.
 */
const SQLITE_BEGIN = "BEGIN IMMEDIATE"

/**
 * The prepared statements' cache: never expired, only its least used evicted past 200. Effect's `Cache` leaves a
 * key behind each time it finds an entry expired, and trims them only once it holds more than its capacity: with
 * the client's default 10-minute expiry and fewer than 200 statements, each statement in use left keys holding its
 * SQL text every 10 minutes, for as long as the process ran (a soak trial's heap snapshots).
 */
export const STATEMENT_CACHE = { prepareCacheSize: 200, prepareCacheTTL: Duration.infinity } as const

const SqliteLive = (filename: string) =>
  Layer.scoped(
    SqlClient.SqlClient,
    // Opened in the file's own journal mode and switched to WAL once checked: a refused file is left as it was (a
    // copy in rollback-journal mode had its header switched before the check refused it). Both under SQLite's own
    // busy wait (5 s, better-sqlite3's), which another process's first write as the file is made may need.
    Effect.flatMap(Effect.zipRight(refuseHotJournal(filename), SqliteClient.make({ filename, disableWAL: true, ...STATEMENT_CACHE })), (sqlite) =>
      Effect.zipRight(refuseDamagedPages(sqlite, filename).pipe(
        Effect.zipRight(sqlite.unsafe("PRAGMA journal_mode = WAL")),
        Effect.zipRight(sqlite.unsafe(`PRAGMA busy_timeout = ${SQLITE_BUSY_TIMEOUT_MS}`))
      ), Effect.map(SqlClient.make({
        // The connection once no transaction holds it, held for the statement; let go while a statement or a
        // transaction's begin waits for another process's lock (`sqliteLocks.ts`).
        acquirer: Effect.succeed(lockWaitingConnection(sqlite.reserve)),
        transactionAcquirer: Effect.map(lockWaitingTransaction(sqlite.reserve, SQLITE_BEGIN), rollbackWhenBegun),
        compiler: Statement.makeCompilerSqlite(),
        spanAttributes: [["db.system.name", "sqlite"]],
        beginTransaction: SQLITE_BEGIN
      }), (client) =>
        // `reserve` is the transaction acquirer by default: the connection lent with a transaction begun.
        Object.assign(client, { reserve: sqlite.reserve }))))
  ).pipe(Layer.provide(Reactivity.layer))

/** A rollback journal's first bytes while it holds a write to undo (SQLite's file format, "The Rollback Journal"). */
const HOT_JOURNAL_MAGIC = Buffer.from("d9d505f920a163d7", "hex")

/**
 * Whether SQLite takes the journal beside `filename` for a write cut short: no process holds the database's write
 * lock, so a read-only connection would have to roll it back, and says it cannot. A live process's write under way
 * (another node making the database as this one starts: its first transaction empties a new file when undone) is
 * not: its lock says so, and its journal goes with its commit. A busy database is such a live write.
 */
const leftByADeadWriter = (filename: string): boolean => {
  let db: Database.Database | undefined
  try {
    db = new Database(filename, { readonly: true, fileMustExist: true, timeout: 0 })
    db.prepare("SELECT count(*) FROM sqlite_master").get()
    return false
  } catch (error) {
    return (error as { readonly code?: unknown }).code === "SQLITE_READONLY_ROLLBACK"
  } finally {
    db?.close()
  }
}

/**
 * What a rollback journal beside `filename` would make of it, read before SQLite opens the file (which rolls a hot
 * journal back): the database's size once rolled back, by the journal's header (its size in pages before the write,
 * its page size), when that is smaller than the file and no live process is writing it. Undefined when there is no
 * hot journal, or when undoing it leaves the file's size (SQLite's own switch to WAL, cut short, is undone so:
 * harmless).
 */
const shrinkingJournal = (filename: string): { readonly journal: string; readonly bytesAfter: number; readonly bytesNow: number } | undefined => {
  if (isInMemory(filename)) return undefined
  const journal = `${filename}-journal`
  try {
    const header = Buffer.alloc(28)
    const fd = openSync(journal, "r")
    try {
      if (readSync(fd, header, 0, 28, 0) < 28 || !header.subarray(0, 8).equals(HOT_JOURNAL_MAGIC)) return undefined
    } finally {
      closeSync(fd)
    }
    const bytesAfter = header.readUInt32BE(16) * header.readUInt32BE(24)
    const bytesNow = statSync(filename).size
    return bytesAfter < bytesNow && leftByADeadWriter(filename) ? { journal, bytesAfter, bytesNow } : undefined
  } catch {
    return undefined // no journal, or no database: nothing to undo
  }
}

/**
 * Fails, before the file is opened, when a rollback journal beside it would cut the database short. This server's
 * database is in WAL mode: a journal that shrinks it is another program's write cut short, most often a copy
 * stopped midway (`sqlite3`'s `.backup`, killed or never done on a busy database, leaves one that empties the
 * copy). Opened, it was rolled back, and the start said only "New database created": every batch and file looked
 * lost.
 */
const refuseHotJournal = (filename: string) =>
  Effect.suspend(() => {
    const hot = shrinkingJournal(filename)
    if (hot === undefined) return Effect.void
    return Effect.fail(new SqlError({
      message: `${hot.journal} holds an unfinished write of another program that would cut the database from ` +
        `${hot.bytesNow} bytes to ${hot.bytesAfter}, as a copy stopped midway leaves: it was not opened. Put a whole ` +
        'copy in its place (README, "Backup and restore")'
    }))
  })

/** Whether SQLite at `filename` is a database in memory (or a temporary one, `""`), which no later start finds again. */
const isInMemory = (filename: string) => filename === "" || filename === ":memory:" || filename.startsWith("file::memory:")

/**
 * SQLite at `filename` (`:memory:` and `""` work too), migrated; for a file, with the `ReadConnection` of its polled
 * reads too (opened once the migrations have made the file; a database in memory has no file to open again).
 * Its type names only the `SqlClient`: the stores use a `ReadConnection` when there is one.
 */
export const layerSqlite = <E = never, R = never>(filename: string, beforeMigrating: BeforeMigrating<E, R> = Layer.empty) =>
  // A database in memory is always new: nothing to say.
  Layer.merge(
    migrationsAt(isInMemory(filename) ? undefined : { text: filename, setting: "DATA_DIR" }).pipe(Layer.provide(beforeMigrating)),
    SqlitePragmas
  ).pipe(
    Layer.provideMerge(SqliteLive(filename)),
    (migrated) => Layer.provideMerge(sqliteReadConnection, migrated)
  )

/**
 * What is built on a database's client before its migrations run: the locks that say whether this process may use
 * it at all (`StorageLive`: the node's id, the SQLite runner), so that a start they refuse leaves the schema as it
 * was. Migrated first, a new release refused beside a running old one had moved the schema on, and the old one could
 * not start again.
 */
export type BeforeMigrating<E, R> = Layer.Layer<never, E, R | SqlClient.SqlClient>

/** A connection whose statements, once sent, run to their end: an interrupted fiber waits for its statement. */
const runToEnd = (connection: SqlConnection.Connection): SqlConnection.Connection => ({
  execute: (sql, params, transformRows) => Effect.uninterruptible(connection.execute(sql, params, transformRows)),
  executeRaw: (sql, params) => Effect.uninterruptible(connection.executeRaw(sql, params)),
  executeValues: (sql, params) => Effect.uninterruptible(connection.executeValues(sql, params)),
  executeUnprepared: (sql, params, transformRows) =>
    Effect.uninterruptible(connection.executeUnprepared(sql, params, transformRows)),
  executeStream: (sql, params, transformRows) => connection.executeStream(sql, params, transformRows)
})

/**
 * The Postgres `SqlClient`: @effect/sql-pg's client and compiler over our pool (`pgPool.ts`: statements held to
 * `bound`), each statement on a pooled connection held for it (or for its transaction) and never cancelled: a fiber
 * interrupted during one waits for it to end (ours are short, and the bound ends those the server never answers).
 */
const PgLive = (options: PoolOptions, bound: StatementBound) =>
  Layer.scoped(
    SqlClient.SqlClient,
    Effect.flatMap(PgClient.fromPool({ acquire: makePool(options, bound), applicationName: options.applicationName }), (pg) =>
      SqlClient.make({
        // Why: @effect/sql-pg cancels with `pg_cancel_backend(pid)`, which can land after the statement ended and its
        // connection went back to the pool, cancelling another request's statement (issue 12).
        acquirer: Effect.map(Effect.uninterruptible(pg.reserve), runToEnd),
        compiler: PgClient.makeCompiler(),
        spanAttributes: [["db.system.name", "postgresql"]]
      }))
  ).pipe(Layer.provide(Reactivity.layer))

/**
 * How long a new connection may take to be made. Why: without a bound, a server that accepts connections and never
 * answers (hung, or behind a stalled network) holds every request waiting for a connection, and the connections
 * being made, for ever: the node would neither answer nor come back once the server does, nor finish a shutdown.
 */
const PG_CONNECT_TIMEOUT = Duration.seconds(5)

/** A start refused on a PostgreSQL whose sessions a pooler shares (`pgSessions.ts`). */
const OwnSessionsRequired = Layer.effectDiscard(Effect.flatMap(SqlClient.SqlClient, refuseSharedSessionsOf))

/**
 * Postgres at `url`, migrated (several nodes may start at once: they take turns through an advisory lock);
 * `maxConnections` bounds its pool (default 10; at least 3 with `NodeIdLockLive` before the migrations: the lock keeps
 * one, and the migrations take two); once migrated,
 * a statement left unanswered for `statementTimeout` fails and closes its connection (`pgPool.ts`).
 */
export const layerPg = <E = never, R = never>(
  url: Redacted.Redacted,
  options: { readonly maxConnections?: number; readonly statementTimeout?: Duration.Duration } = {},
  beforeMigrating: BeforeMigrating<E, R> = Layer.empty
) => {
  const bound: StatementBound = { ms: 0 } // off while migrating
  const boundOnceMigrated = Layer.effectDiscard(Effect.sync(() => {
    bound.ms = Duration.toMillis(options.statementTimeout ?? defaults.databaseStatementTimeout)
  }))
  return boundOnceMigrated.pipe(
    Layer.provideMerge(migrationsAt({ text: postgresText(Redacted.value(url)), setting: "DATABASE_URL" }).pipe(
      Layer.provide(beforeMigrating),
      Layer.provide(OwnSessionsRequired) // before the locks, which a shared session would keep for others
    )),
    Layer.provideMerge(PgLive({
      url: Redacted.value(url),
      applicationName: "effect-openai-batch",
      connectTimeout: PG_CONNECT_TIMEOUT,
      maxConnections: options.maxConnections
    }, bound))
  )
}

/**
 * The database the configuration asks for: Postgres at `DATABASE_URL`, else `DATA_DIR/batches.sqlite`, with
 * `beforeMigrating` built first (`BeforeMigrating`).
 */
export const sqlLiveWith = <E = never, R = never>(beforeMigrating: BeforeMigrating<E, R> = Layer.empty) => Layer.unwrapEffect(
  Effect.gen(function*() {
    const { dataDir, databaseStatementTimeout, databaseUrl } = yield* AppConfig
    if (Option.isSome(databaseUrl)) return layerPg(databaseUrl.value, { statementTimeout: databaseStatementTimeout }, beforeMigrating)
    // A failure is the database's (a typed error the start reports as such), not a defect with a stack trace.
    yield* Effect.try({
      try: () => makeDirectoriesSync(dataDir),
      catch: (cause) => new SqlError({ cause, message: `Cannot create the data directory ${dataDir}` })
    })
    return layerSqlite(Path.join(dataDir, "batches.sqlite"), beforeMigrating)
  })
)

/** The database the configuration asks for (`sqlLiveWith`, nothing before its migrations). */
export const SqlLive = sqlLiveWith()

/** Now, in whole seconds since the epoch: how the tables store times (`created_at`, `expires_at`, …). */
export const nowSeconds = Effect.map(Clock.currentTimeMillis, (ms) => Math.floor(ms / 1000))

/** The rows a caller with `visibility` may see, as a condition on a table's `project` column. */
export const visibleTo = (sql: SqlClient.SqlClient, visibility: Visibility) =>
  visibility === "all" ? sql`1 = 1` : sql`project = ${visibility.project}`
