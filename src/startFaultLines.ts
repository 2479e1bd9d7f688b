/**
 * The one line a start that failed for a known reason is said in (`main.ts` logs it): a configuration refused, a
 * port in use or refused, another process under the node's id or running the SQLite file's batches, a database that
 * cannot be opened, reached, migrated or written. Anything else is logged with its cause.
 */
import * as Migrator from "@effect/sql/Migrator"
import { Cause, type ConfigError, Effect, Option } from "effect"
import { AppConfig } from "./Config.js"
import { DURATION_EXAMPLES } from "./durationText.js"
import { describeDatabase } from "./observability/Readiness.js"
import { faultWords, privilegeMissing, rootMessage, storageFault } from "./storage/Faults.js"
import { NodeIdInUse } from "./storage/NodeIdLock.js"
import { SessionPoolingRequired, Utf8DatabaseRequired } from "./storage/pgSessions.js"
import { BatchesRunElsewhere } from "./storage/SqliteRunnerLock.js"

/** Why a socket could not listen, for the faults an operator fixes in the configuration (`port`: its variable). */
const LISTEN_FAULTS: Readonly<Record<string, (port: string) => string>> = {
  EADDRINUSE: (port) => `another process listens there; set ${port} to a free port`,
  EACCES: (port) => `not allowed (a port below 1024 needs privileges); set ${port} to another`,
  EADDRNOTAVAIL: () => "no such address on this machine; set HOST to one of its addresses",
  ENOTFOUND: () => "no address by that name; set HOST to an address of this machine or a name it resolves",
  EAI_AGAIN: () => "its name could not be resolved now; set HOST to an address of this machine"
}

/** The variable of the port each listener's failure names: the server's (`ServeError`) or the metrics' own. */
const PORT_VARIABLES: Readonly<Record<string, string>> = { ServeError: "PORT", MetricsListenFailed: "METRICS_PORT" }

/** A listen that failed for a reason in `LISTEN_FAULTS`: one line naming the address, the code and what to change. */
export const listenFaultLine = (cause: Cause.Cause<unknown>): Option.Option<string> =>
  Option.flatMap(Cause.failureOption(cause), (error) => {
    const failure = error as {
      readonly _tag?: unknown
      readonly cause?: { code?: unknown; address?: unknown; port?: unknown; hostname?: unknown }
    }
    const variable = typeof failure._tag === "string" ? PORT_VARIABLES[failure._tag] : undefined
    const code = variable === undefined ? undefined : failure.cause?.code
    if (typeof code !== "string" || !(code in LISTEN_FAULTS)) return Option.none()
    // A name that did not resolve (getaddrinfo's error) has a hostname, and no address nor port.
    const { address, hostname, port } = failure.cause!
    return Option.some(`Cannot listen on ${address ?? hostname}${port === undefined ? "" : `:${port}`}: ${LISTEN_FAULTS[code]!(variable!)} (${code})`)
  })

/** What a first migration meeting a table of its name means. */
const OTHER_TABLES = "the schema holds tables of another app: give the service a database or schema of its own"

/** What PostgreSQL's "no schema has been selected to create in" means at a first start. */
const NO_SCHEMA = "the schemas of the user's search_path do not exist, or the role may not use them: create the one " +
  "DATABASE_URL names first (CREATE SCHEMA), or GRANT USAGE, CREATE ON SCHEMA … TO the role"
/** PostgreSQL's words for a connection refused for their number (a role's, a database's or the server's limit). */
const TOO_MANY_CONNECTIONS = /too many connections|remaining connection slots/
/** What a refused connection needs (the pool's size: `Sql.ts`). */
const CONNECTIONS = "a node keeps up to 10 connections (4 at least to start): raise the role's or the database's " +
  "CONNECTION LIMIT, or the server's max_connections"
/** What a role refused a privilege needs (README, "Several nodes (PostgreSQL)": a least-privilege role). */
const PRIVILEGES = "the role needs SELECT, INSERT, UPDATE and DELETE on the service's tables and USAGE on their " +
  "sequences, and CREATE on the schema while migrations are pending (or run them once as the tables' owner)"
/** What to add to PostgreSQL's words `driver` when they say what a DBA set (else nothing: SQLite's are plain). */
const pgHint = (driver: string) =>
  /no schema has been selected to create in/.test(driver) ? ` (${NO_SCHEMA})`
  : TOO_MANY_CONNECTIONS.test(driver) ? `; ${CONNECTIONS}`
  : /permission denied for database/.test(driver) ? "; the role needs CONNECT on it (GRANT CONNECT ON DATABASE … TO the role)"
  : /permission denied for schema/.test(driver) ? "; the role needs USAGE on it (GRANT USAGE ON SCHEMA … TO the role)"
  : /permission denied for|must be owner of/.test(driver) ? `; ${PRIVILEGES}`
  : ""

/** SQLite's words for a file that is no database, or a damaged one (`SQLITE_NOTADB`, `SQLITE_CORRUPT`). */
const DAMAGED = /database disk image is malformed|file is not a database/

/** SQLite's words for a file it cannot open or make (`SQLITE_CANTOPEN`: a `DATA_DIR` this user cannot write to). */
const CANNOT_OPEN = /unable to open database file/

/** The driver's message of a failure or defect of `cause` that `words` match, if one does. */
const driverSaying = (cause: Cause.Cause<unknown>, words: RegExp): string | undefined =>
  [...Cause.failures(cause), ...Cause.defects(cause)].map(rootMessage).find((message) => words.test(message))

/**
 * A start that failed for a reason said in one line: another process under the node's id or running the batches of
 * the SQLite file (their messages say what to do), or a database that cannot be opened, reached or written, or
 * stops answering.
 */
export const startFaultLine = (cause: Cause.Cause<unknown>) =>
  Effect.map(AppConfig, (config) => {
    const withHint = (driver: string) => (Option.isSome(config.databaseUrl) ? pgHint(driver) : "")
    const cannotUse = (said: string) =>
      `Cannot use the database (${describeDatabase(config)}; see ${Option.isSome(config.databaseUrl) ? "DATABASE_URL" : "DATA_DIR"}): ${said}`
    // Said before anything else it failed: a truncated or half-copied file (a restore gone wrong) was a stack trace.
    const damaged = driverSaying(cause, DAMAGED)
    if (damaged !== undefined) {
      return Option.some(cannotUse(`its file is damaged (${damaged}): put a whole copy in its place (README, "Backup and restore")`))
    }
    // A DATA_DIR that is there but not this user's to write (a container's user, a volume mounted read-only) was a
    // stack trace: the file, its `-wal` and `-shm` are made there.
    const unopened = driverSaying(cause, CANNOT_OPEN)
    if (unopened !== undefined) {
      return Option.some(cannotUse(`its file cannot be opened or made (${unopened}): is DATA_DIR a directory this user can write to, its batches.sqlite a file?`))
    }
    const fault = storageFault(cause)
    const failed = Option.flatMap(Cause.failureOption(cause), (error): Option.Option<string> => {
      if (error instanceof NodeIdInUse || error instanceof BatchesRunElsewhere) return Option.some(error.message)
      if (error instanceof Migrator.MigrationError && error.reason === "bad-state") return Option.some(cannotUse(error.message))
      if (error instanceof SessionPoolingRequired || error instanceof Utf8DatabaseRequired) return Option.some(cannotUse(error.message))
      // A migration, or a first statement, cut short by a full disk is said as the full disk it is (below): an existing
      // file's first statement on a full disk says "disk I/O error" (SQLite's shared-memory index could not grow).
      if (fault === "capacity") return Option.none()
      if (error instanceof Migrator.MigrationError && error.reason === "failed") {
        const driver = rootMessage(error.cause)
        return Option.some(cannotUse(`${error.message}: ${driver}${/already exists/.test(driver) ? ` (${OTHER_TABLES})` : withHint(driver)}`))
      }
      if ((error as { readonly _tag?: unknown })._tag !== "SqlError") return Option.none()
      const driver = rootMessage(error)
      const said = (error as Error).message === driver ? driver : `${(error as Error).message}: ${driver}`
      return Option.some(cannotUse(`${said}${withHint(driver)}`))
    })
    // A full disk fails a new database's first statement (a defect, or a migration) or an existing one's, and a
    // database that stops answering fails whichever comes first (a stack dump of the bundle said it): said as plainly.
    const driver = faultWords(fault, cause)
    if (Option.isNone(failed) && privilegeMissing(cause)) return Option.some(cannotUse(`it takes no write (${driver})${withHint(driver)}`))
    if (Option.isSome(failed) || fault === undefined) return failed
    return Option.some(cannotUse(
      fault === "capacity" ? `its disk is full (${driver})`
      : fault === "refused" ? `it takes no write (${driver})${withHint(driver)}`
      : TOO_MANY_CONNECTIONS.test(driver) ? `it refuses more connections (${driver}); ${CONNECTIONS}`
      : `it does not answer (${driver})`
    ))
  })

/**
 * The line of a configuration refused at start: Effect's message, with how a duration is written when one was not
 * (`ten seconds` got "Expected a duration but received \"ten seconds\"", with no example); not when a duration was
 * read and a rule refused it (`HEARTBEAT_INTERVAL` not shorter than `LEASE_TTL`).
 */
export const configFaultLine = (error: ConfigError.ConfigError): string => {
  const text = String(error)
  const hint = text.includes("Expected a duration but received") ? ` (a duration is written as ${DURATION_EXAMPLES})` : ""
  return `Invalid configuration: ${text}${hint}`
}
