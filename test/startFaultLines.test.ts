/** The one line a failed start is said in (`src/startFaultLines.ts`), for a migration that failed. */
import { expect, it } from "@effect/vitest"
import * as Migrator from "@effect/sql/Migrator"
import { SqlError } from "@effect/sql/SqlError"
import { Cause, Config, ConfigProvider, Duration, Effect, Option, Redacted } from "effect"
import { AppConfig, appConfig } from "../src/Config.js"
import { configFaultLine, startFaultLine } from "../src/startFaultLines.js"

const migrationFailed = (driver: Error) =>
  Cause.fail(new Migrator.MigrationError({
    reason: "failed",
    message: `Migration "1_files" failed`,
    cause: new SqlError({ message: "Failed to execute statement", cause: driver })
  }))

it.effect("a migration that failed: the migration, what the database said, and what to do when it met another app's table", () =>
  Effect.gen(function*() {
    const clash = yield* startFaultLine(migrationFailed(new Error(`relation "files" already exists`)))
    expect(Option.getOrThrow(clash)).toBe(
      `Cannot use the database (SQLite at /srv/batches.sqlite; see DATA_DIR): Migration "1_files" failed: relation "files" ` +
        "already exists (the schema holds tables of another app: give the service a database or schema of its own)"
    )
    // Cut short by a full disk: said as the full disk it is.
    const full = yield* startFaultLine(migrationFailed(Object.assign(new Error("database or disk is full"), { code: "SQLITE_FULL" })))
    expect(Option.getOrThrow(full)).toBe(
      "Cannot use the database (SQLite at /srv/batches.sqlite; see DATA_DIR): its disk is full (database or disk is full)"
    )
  }).pipe(Effect.provide(AppConfig.layerWith({ dataDir: "/srv" }))))

it.effect("a full disk under an existing file, or beside another failure: said as the full disk, in its own words", () =>
  Effect.gen(function*() {
    // An existing file on a full disk: its first statement fails as SQLite's shared-memory index cannot grow.
    const noRoom = yield* startFaultLine(Cause.fail(new SqlError({
      message: "Failed to prepare statement ",
      cause: Object.assign(new Error("disk I/O error"), { code: "SQLITE_IOERR_SHMSIZE" })
    })))
    expect(Option.getOrThrow(noRoom)).toBe(
      "Cannot use the database (SQLite at /srv/batches.sqlite; see DATA_DIR): its disk is full (disk I/O error)"
    )
    // A statement that failed for another reason beside it: the full disk's words, not the other's.
    const beside = yield* startFaultLine(Cause.parallel(
      Cause.fail(new SqlError({ message: "Failed to execute statement", cause: new Error("database is locked") })),
      Cause.die(Object.assign(new Error("ENOSPC: no space left on device, write"), { code: "ENOSPC" }))
    ))
    expect(Option.getOrThrow(beside)).toBe(
      "Cannot use the database (SQLite at /srv/batches.sqlite; see DATA_DIR): its disk is full (ENOSPC: no space left on device, write)"
    )
  }).pipe(Effect.provide(AppConfig.layerWith({ dataDir: "/srv" }))))

it.effect("a database that stops answering during the start, wherever it is met: one line", () =>
  Effect.gen(function*() {
    const timedOut = Object.assign(new Error("canceling statement due to statement timeout"), { code: "57014" })
    const line = yield* startFaultLine(Cause.die(new SqlError({ message: "Failed to execute statement", cause: timedOut })))
    expect(Option.getOrThrow(line)).toBe(
      "Cannot use the database (SQLite at /srv/batches.sqlite; see DATA_DIR): it does not answer (canceling statement due to statement timeout)"
    )
    expect(yield* startFaultLine(Cause.die(new Error("a bug")))).toEqual(Option.none())
  }).pipe(Effect.provide(AppConfig.layerWith({ dataDir: "/srv" }))))

it.effect("PostgreSQL refusing a connection or a privilege: what the role needs; SQLite's permission problems get no word of roles", () =>
  Effect.gen(function*() {
    const pgError = (message: string, code: string) =>
      Cause.die(new SqlError({ message: "Failed to execute statement", cause: Object.assign(new Error(message), { code }) }))
    const onPostgres = AppConfig.layerWith({ databaseUrl: Option.some(Redacted.make("postgres://app@db:5432/batches")) })
    const crowded = yield* startFaultLine(pgError(`too many connections for role "app"`, "53300")).pipe(Effect.provide(onPostgres))
    expect(Option.getOrThrow(crowded)).toBe(
      "Cannot use the database (PostgreSQL at db:5432/batches; see DATABASE_URL): it refuses more connections (too many " +
        `connections for role "app"); a node keeps up to 10 connections (4 at least to start): raise the role's or the ` +
        "database's CONNECTION LIMIT, or the server's max_connections"
    )
    const denied = yield* startFaultLine(pgError("permission denied for table upload_parts", "42501")).pipe(Effect.provide(onPostgres))
    expect(Option.getOrThrow(denied)).toMatch(/it takes no write \(permission denied for table upload_parts\); the role needs SELECT, INSERT, UPDATE and DELETE on the service's tables/)
    const noConnect = yield* startFaultLine(Cause.fail(new SqlError({ message: "PgClient: Failed to connect", cause: Object.assign(new Error(`permission denied for database "batches"`), { code: "42501" }) })))
      .pipe(Effect.provide(onPostgres))
    expect(Option.getOrThrow(noConnect)).toMatch(/permission denied for database "batches"; the role needs CONNECT on it \(GRANT CONNECT ON DATABASE … TO the role\)$/)
    const sqliteDenied = yield* startFaultLine(Cause.die(Object.assign(new Error("EACCES: permission denied, open '/srv/x'"), { code: "EACCES" })))
      .pipe(Effect.provide(AppConfig.layerWith({ dataDir: "/srv" })))
    expect(Option.getOrThrow(sqliteDenied)).toBe("Cannot use the database (SQLite at /srv/batches.sqlite; see DATA_DIR): it takes no write (EACCES: permission denied, open '/srv/x')")
  }))

it.effect("a duration is read in Effect's words or the short form; one refused says how one is written, one a rule refused does not", () =>
  Effect.gen(function*() {
    const read = (env: Record<string, string>) => appConfig.pipe(Effect.withConfigProvider(ConfigProvider.fromJson(env)))
    const config = yield* read({ INFERENCE_TIMEOUT: "10s", LEASE_TTL: "1m30s", HEARTBEAT_INTERVAL: "500ms", SHUTDOWN_DELAY: "0s", SHUTDOWN_TIMEOUT: "2 seconds" })
    expect([config.inferenceTimeout, config.leaseTtl, config.heartbeatInterval, config.shutdownDelay, config.shutdownTimeout].map(Duration.toMillis))
      .toEqual([10_000, 90_000, 500, 0, 2_000])
    const refused = yield* Effect.flip(read({ INFERENCE_TIMEOUT: "ten seconds" }))
    expect(configFaultLine(refused)).toMatch(/^Invalid configuration: .*INFERENCE_TIMEOUT.*"ten seconds".* \(a duration is written as `10 seconds`, `10s`, `5 minutes`, `1m30s` or `500ms`\)$/)
    const ruled = yield* Effect.flip(read({ HEARTBEAT_INTERVAL: "20 seconds", LEASE_TTL: "15s" }))
    expect(configFaultLine(ruled)).toContain("HEARTBEAT_INTERVAL")
    expect(configFaultLine(ruled)).not.toContain("a duration is written")
    const other = yield* Effect.flip(Config.integer("PORT").pipe(Effect.withConfigProvider(ConfigProvider.fromJson({ PORT: "x" }))))
    expect(configFaultLine(other)).not.toContain("a duration")
  }))
