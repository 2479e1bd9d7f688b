/**
 * Whether this node should be sent traffic (`GET /v1/ready`), as opposed to whether it runs at all (`/v1/health`):
 * its database answers a trivial query within 2 s, and it is not shutting down. Its migrations have run: the
 * service is built after the database layer, which migrates, and the server listens only once every service is up.
 *
 * On SIGINT/SIGTERM the server's shutdown (`Lifecycle.ts`) calls `drain` before anything else, so readiness turns
 * 503 first; then the node drains as before (`SHUTDOWN_DELAY`, if set, is how long it keeps serving meanwhile).
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { SqlError } from "@effect/sql/SqlError"
import { Cause, Context, Duration, Effect, Layer, Option, Redacted, Ref } from "effect"
import * as Path from "node:path"
import { Auth } from "../auth/Auth.js"
import { AppConfig, type AppConfigShape } from "../Config.js"
import { NotReady, type NotReadyReason } from "../domain/Health.js"
import { postgresText } from "./urlText.js"

/** How long the database gets to answer a readiness query. */
const DATABASE_TIMEOUT = Duration.seconds(2)
/** How long one answer of the database check is shared. */
const CHECK_TTL = Duration.seconds(1)

export interface ReadinessShape {
  /** Succeeds when the node is ready; else fails with what is wrong. */
  readonly check: Effect.Effect<void, NotReady>
  /** The node is shutting down: not ready from now on. */
  readonly drain: Effect.Effect<void>
  /**
   * The database it checks, in words (`describeDatabase`), and its kind, for the listening line; none: the
   * configuration's.
   */
  readonly database?: { readonly text: string; readonly backend: "postgresql" | "sqlite" | "sql" } | undefined
}

/**
 * Whether the services' storage is an app's own (`makeServices({ storage })`): the configuration does not say where
 * its database is then, and the lines that name it say whose it is instead.
 */
export class StorageOfTheApp extends Context.Reference<StorageOfTheApp>()("StorageOfTheApp", {
  defaultValue: () => false
}) {}

/** The database of `sql` in words, when the configuration does not say which it is (`StorageOfTheApp`). */
const describeAppStorage = (sql: SqlClient.SqlClient) => {
  const backend = sql.onDialectOrElse({ pg: () => "postgresql" as const, sqlite: () => "sqlite" as const, orElse: () => "sql" as const })
  const kind = backend === "postgresql" ? "PostgreSQL" : backend === "sqlite" ? "SQLite" : "SQL"
  return { text: `${kind} of the app's own storage`, backend }
}

export class Readiness extends Context.Tag("Readiness")<Readiness, ReadinessShape>() {}

const draining: NotReadyReason = {
  code: "draining",
  message: "This node is shutting down: it finishes its open requests and takes no new ones."
}

/** Ready until drained, with no database to ask (tests, apps that check their storage themselves). */
export const ReadinessTest: Layer.Layer<Readiness> = Layer.effect(
  Readiness,
  Effect.map(Ref.make(false), (drained) => ({
    check: Effect.flatMap(Ref.get(drained), (d) => (d ? Effect.fail(new NotReady({ reasons: [draining] })) : Effect.void)),
    drain: Ref.set(drained, true)
  }))
)

/** The database in words, never with its credentials: `SQLite at ./.data/batches.sqlite`, `PostgreSQL at host:5432/db`. */
export const describeDatabase = (config: Pick<AppConfigShape, "databaseUrl" | "dataDir">): string =>
  Option.match(config.databaseUrl, {
    onNone: () => `SQLite at ${Path.join(config.dataDir, "batches.sqlite")}`,
    onSome: (url) => postgresText(Redacted.value(url))
  })

/**
 * `describeDatabase`, with the PostgreSQL schema in use as the server says it (a pooler may drop the URL's `options`,
 * and a user's default `search_path` picks one the URL does not name): the URL's words when it does not say.
 */
const describeConfigured = (sql: SqlClient.SqlClient, config: Pick<AppConfigShape, "databaseUrl" | "dataDir">) =>
  Option.match(config.databaseUrl, {
    onNone: () => Effect.succeed(describeDatabase(config)),
    onSome: (url) =>
      sql<{ readonly schema: string | null }>`SELECT current_schema() AS schema`.pipe(
        Effect.map((rows) => postgresText(Redacted.value(url), rows[0]?.schema ?? undefined)),
        Effect.orElseSucceed(() => describeDatabase(config))
      )
  })

/** The parts of `DATABASE_URL` that must never reach a log or an answer: the URL itself and its password. */
const databaseSecrets = (config: Pick<AppConfigShape, "databaseUrl">): ReadonlyArray<string> =>
  Option.match(config.databaseUrl, {
    onNone: () => [],
    onSome: (url) => {
      const text = Redacted.value(url)
      const password = URL.canParse(text) ? new URL(text).password : ""
      return [text, password, password === "" ? "" : decodeURIComponent(password)].filter((s) => s.length >= 3)
    }
  })

/**
 * The first line of what a failed query says, without secrets: the driver's own error (a `SqlError` wraps it),
 * whatever part of `DATABASE_URL` it might repeat replaced by `***`, at most 300 characters.
 */
export const faultLine = (cause: Cause.Cause<unknown>, secrets: ReadonlyArray<string>): string => {
  const error = Cause.squash(cause)
  const inner = error instanceof SqlError && error.cause !== undefined ? error.cause : error
  let line = String(inner instanceof Error ? inner.message : inner).split("\n")[0]!
  for (const secret of secrets) line = line.replaceAll(secret, "***")
  return line.slice(0, 300)
}

/** Readiness on the configured database (`SELECT 1`, 2 s), with its changes logged (database lost, back). */
export const ReadinessLive: Layer.Layer<Readiness, never, SqlClient.SqlClient | AppConfig | Auth> = Layer.effect(
  Readiness,
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const config = yield* AppConfig
    const own = (yield* StorageOfTheApp) ? describeAppStorage(sql) : undefined
    const database = own?.text ?? (yield* describeConfigured(sql, config))
    const secrets = databaseSecrets(config)
    const exposed = (yield* Auth).required
    const drained = yield* Ref.make(false)
    const databaseDown = yield* Ref.make(false)

    // Disconnected: a Postgres statement is never interrupted (`storage/Sql.ts`), so the probe answers at the
    // timeout while the query ends in the background.
    const ask = sql`SELECT 1`.pipe(
      Effect.withTracerEnabled(false), // a probe's, every second or so: not a trace each
      Effect.disconnect,
      Effect.timeoutFail({
        duration: DATABASE_TIMEOUT,
        onTimeout: () => new Error(`no answer within ${Duration.format(DATABASE_TIMEOUT)}`)
      })
    )

    const checkDatabase = Effect.gen(function*() {
      const exit = yield* Effect.exit(ask)
      const down = exit._tag === "Failure"
      const was = yield* Ref.getAndSet(databaseDown, down)
      if (!down) {
        if (was) yield* Effect.logInfo(`Ready again: ${database} answers`)
        return
      }
      const detail = `${database} does not answer: ${faultLine(exit.cause, secrets)}`
      if (!was) yield* Effect.logWarning(`Not ready: ${detail}`)
      // Anyone may ask (no key): where the database is and what it says stay in the log once keys guard the rest.
      const message = exposed ? "The database does not answer (the server's log says why)." : detail
      return yield* new NotReady({ reasons: [{ code: "database_unreachable", message }] })
    })
    // One query at a time, its answer shared for a second: probes from anyone cannot pile queries on the database.
    const sharedCheck = yield* Effect.cachedWithTTL(Effect.either(checkDatabase), CHECK_TTL)

    return Readiness.of({
      check: Effect.flatMap(Ref.get(drained), (d) => (d ? Effect.fail(new NotReady({ reasons: [draining] })) : Effect.flatten(sharedCheck))),
      drain: Ref.set(drained, true),
      database: own ?? (Option.isSome(config.databaseUrl) ? { text: database, backend: "postgresql" } : undefined)
    })
  })
)
