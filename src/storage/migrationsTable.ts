/**
 * Where the service records the migrations it ran: a table of its own, not @effect/sql's default
 * `effect_sql_migrations`. The migrator skips every migration whose number is not above the highest one recorded, so
 * an app embedding the service on the same schema with a migrator of its own (on the default table) would make the
 * second of the two to migrate skip its migrations, without a word.
 */
import * as Migrator from "@effect/sql/Migrator"
import * as SqlClient from "@effect/sql/SqlClient"
import { Effect, Option } from "effect"

export const MIGRATIONS_TABLE = "effect_openai_batch_migrations"
/** Where releases before migration 0012 recorded theirs. */
const SHARED_MIGRATIONS_TABLE = "effect_sql_migrations"

/** A migration's number in its key (`NNNN_name`). */
const migrationId = (key: string) => Number(key.slice(0, key.indexOf("_")))

const tableExists = (sql: SqlClient.SqlClient, name: string) =>
  sql.onDialectOrElse({
    pg: () => Effect.map(sql<{ found: boolean }>`SELECT to_regclass(${name}) IS NOT NULL AS found`, (rows) => rows[0]?.found === true),
    orElse: () => Effect.map(sql`SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ${name}`, (rows) => rows.length > 0)
  })

/**
 * A database migrated by an earlier release has the service's migrations in the shared table: once, before its own
 * table exists, the rows there that are the service's (same number and name, its tables present) are copied to it,
 * so that they do not run again. The shared table is left as it is (an app's rows there are the app's).
 */
const adoptSharedRecords = (names: ReadonlyArray<string>) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    if (yield* tableExists(sql, MIGRATIONS_TABLE)) return
    if (!(yield* tableExists(sql, SHARED_MIGRATIONS_TABLE)) || !(yield* tableExists(sql, "batch_requests"))) return
    const ours = names.map((key) => ({ key, id: migrationId(key), name: key.slice(key.indexOf("_") + 1) }))
    const recorded = yield* sql<{ migration_id: number | string; name: string }>`
      SELECT migration_id, name FROM ${sql(SHARED_MIGRATIONS_TABLE)}`
    const adopted = ours.filter((mine) => recorded.some((row) => Number(row.migration_id) === mine.id && row.name === mine.name))
    if (adopted.length === 0) return
    // A number an app's migration held there was skipped by the service's migrator: the later ones ran without it,
    // and taken up as they are, it would never run. Said, and the start stopped, rather than run on a schema it lacks.
    const last = Math.max(...adopted.map((mine) => mine.id))
    const skipped = ours.filter((mine) => mine.id <= last && !adopted.includes(mine)).map((mine) => mine.key)
    if (skipped.length > 0) {
      return yield* new Migrator.MigrationError({
        reason: "bad-state",
        message: `Migrations ${skipped.join(", ")} never ran on this schema: another migrator's rows held their numbers in ` +
          `${SHARED_MIGRATIONS_TABLE}. Give the service a schema of its own, or run them by hand and record them in ${MIGRATIONS_TABLE}.`
      })
    }
    // The migrator's own columns; not made by the migrator, whose check for its table on PostgreSQL is a failing
    // statement, which would abort this transaction.
    yield* sql`CREATE TABLE ${sql(MIGRATIONS_TABLE)} (
      migration_id INTEGER PRIMARY KEY NOT NULL,
      created_at ${sql.literal(sql.onDialectOrElse({ pg: () => "TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT now()", orElse: () => "DATETIME NOT NULL DEFAULT current_timestamp" }))},
      name TEXT NOT NULL
    )`
    yield* sql`INSERT INTO ${sql(MIGRATIONS_TABLE)} ${
      sql.insert(adopted.map((mine) => ({ migration_id: mine.id, name: mine.name })))
    }`
    yield* Effect.logInfo(`Migrations: ${adopted.length} recorded in ${SHARED_MIGRATIONS_TABLE} by an earlier release, now in ${MIGRATIONS_TABLE}`)
  })

/**
 * Whether every migration of `names` is already recorded (one at this release's last or above: the migrator's own
 * rule), read in one query of the table. Then the migrator does not run. Why: it locks its table (ACCESS EXCLUSIVE)
 * whatever it finds, so a start waited without a word for a backup's `pg_dump` to end, and a role's `lock_timeout`
 * failed it; and the service's role needed to write that table though nothing was to be migrated.
 *
 * A schema a later release migrated (a migration recorded above this release's last) is refused: this release would
 * run on tables it does not know, failing its batches one by one (an older release on a newer schema answered its
 * uploads, then failed each batch on a missing column).
 */
const allRecorded = (names: ReadonlyArray<string>) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    if (!(yield* tableExists(sql, MIGRATIONS_TABLE))) return false
    const known = Math.max(...names.map(migrationId))
    const latest = yield* sql<{ migration_id: number | string; name: string }>`
      SELECT migration_id, name FROM ${sql(MIGRATIONS_TABLE)} WHERE migration_id >= ${known} ORDER BY migration_id`
    const newer = latest.filter((row) => Number(row.migration_id) > known)
    if (newer.length === 0) return latest.length > 0
    return yield* new Migrator.MigrationError({
      reason: "bad-state",
      message: `A later release migrated this database (${newer.map((row) => `${row.migration_id}_${row.name}`).join(", ")}); ` +
        `this one knows migrations up to ${known} only. Run that release (or a later one), or restore a backup taken before it.`
    })
  })

/** Where a database is, for the line that says it was made new: its place in words, and the setting that chose it. */
export interface DatabasePlace {
  readonly text: string
  readonly setting: "DATA_DIR" | "DATABASE_URL"
}

/**
 * Said when the migrations found nothing applied before. Why: a mistyped or forgotten `DATA_DIR` made a new, empty
 * database without a word, and after a move every batch looked lost.
 */
export const newDatabaseLine = (place: DatabasePlace) =>
  `New database created at ${place.text} (no earlier data here: if you expected some, check ${place.setting})`

/**
 * Applies the pending ones of `record` (named `NNNN_name`), recorded in the service's own table; says which ran (an
 * upgrade's, at info), and, given its `place`, that a database was new.
 */
export const runMigrations = (record: Record<string, Effect.Effect<void, unknown, SqlClient.SqlClient>>, place?: DatabasePlace) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    yield* sql.withTransaction(adoptSharedRecords(Object.keys(record)))
    if (yield* allRecorded(Object.keys(record))) return
    // A migration that fails is a defect of the migrator's: made the typed failure it is, for `catchTag` and the
    // start's one line (a schema with another app's `files` table).
    const applied = yield* Migrator.make({})({ loader: Migrator.fromRecord(record), table: MIGRATIONS_TABLE }).pipe(
      Effect.catchSomeDefect((defect) => defect instanceof Migrator.MigrationError ? Option.some(Effect.fail(defect)) : Option.none())
    )
    if (applied.length === 0) return
    const line = `Migrations applied: ${applied.map(([id, name]) => `${String(id).padStart(4, "0")}_${name}`).join(", ")}`
    // An upgrade is news; a new database's tables are not (the line below says it is new).
    const isNew = applied.some(([id]) => id === 1)
    yield* (isNew ? Effect.logDebug(line) : Effect.logInfo(line)).pipe(Effect.annotateLogs("event", "database.migrated"))
    if (isNew && place !== undefined) {
      yield* Effect.logInfo(newDatabaseLine(place)).pipe(Effect.annotateLogs("event", "database.created"))
    }
  })
