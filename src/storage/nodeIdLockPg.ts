/**
 * A node's id held on PostgreSQL (`NodeIdLock.ts`): a session advisory lock keyed by the schema and the id, taken on a
 * connection of its own that the node keeps for its lifetime. PostgreSQL lets go of it when the session ends (the
 * process stopped, or killed: its socket closes). A session whose process died with its machine lingers until the
 * server's TCP keepalive gives up (two hours by default), so the holder shows it is alive: it runs a statement on
 * the lock's connection every `HEARTBEAT_INTERVAL`, and a node starting under the id ends a holder's session that
 * has been silent for longer than `LEASE_TTL` (by then its leases have lapsed too) and takes the lock. A holder
 * whose session ends under it (the server restarted, or ended it) or stops answering (`pgPool.ts` closes its
 * connection) takes the lock again as soon as it can (ending its own session left behind once that has been silent
 * for `LEASE_TTL`), or says, once a minute, that another process holds its id.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import type * as SqlConnection from "@effect/sql/SqlConnection"
import type { SqlError } from "@effect/sql/SqlError"
import { Cause, Clock, Duration, Effect, Either, ExecutionStrategy, Exit, Option, Schedule, Scope } from "effect"
import type { AppConfigShape } from "../Config.js"
import { makeFailureRun } from "../observability/failureRuns.js"

/** The lock's keys: the schema's and the id's hashes (nodes of another schema on the database are others). */
const KEYS = "hashtext(current_schema()), hashtext($1)"
const TRY_LOCK = `SELECT pg_try_advisory_lock(${KEYS}) AS taken`
/** The session holding the lock of an id, and for how long it has run no statement. */
const HOLDER = `SELECT l.pid, host(a.client_addr) AS client, EXTRACT(EPOCH FROM now() - a.state_change)::float8 AS silent_s
  FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
  WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
    AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
    AND (l.classid, l.objid) = (SELECT k[1]::oid, k[2]::oid FROM (SELECT ARRAY[${KEYS}] AS k) keys)`

/** How often a node waiting for the lock tries again. */
const RETRY_EVERY = Duration.millis(250)
/** How long a lock's release may take when its connection is let go (a stalled server: not for ever). */
const UNLOCK_LIMIT = Duration.seconds(1)

/** The lock on a connection of this node's, and the scope that keeps the connection. */
interface Held {
  readonly connection: SqlConnection.Connection
  readonly scope: Scope.CloseableScope
}

interface Holder {
  readonly pid: number
  readonly client: string | null
  /** Seconds since its last statement; null when this role may not see it. */
  readonly silent_s: number | null
}

/** Who holds the id, said for a person: the session and where it comes from. */
export const describeHolder = (holder: Holder | undefined) =>
  holder === undefined
    ? "a session that let go of it since"
    : `PostgreSQL session ${holder.pid}${holder.client === null ? "" : ` from ${holder.client}`}` +
      (holder.silent_s === null ? "" : `, last active ${Math.round(holder.silent_s)} s ago`)

/**
 * Holds `nodeId` on the PostgreSQL database of `sql` for as long as the scope lasts (see above); fails with what
 * `refused` makes of the holder when another process keeps it past `config`'s patience.
 */
export const holdOnPostgres = <E>(
  sql: SqlClient.SqlClient,
  config: AppConfigShape,
  patience: Duration.Duration,
  messages: { readonly waiting: string; readonly refused: (holder: string) => E }
): Effect.Effect<void, E, Scope.Scope> =>
  Effect.gen(function*() {
    const nodeId = config.nodeId
    const layerScope = yield* Effect.scope
    const holderNow = Effect.map(sql.unsafe<Holder>(HOLDER, [nodeId]), (rows) => rows[0])

    /** The lock on a connection of its own, kept open in a scope of its own; none when another session has it. */
    const tryTake: Effect.Effect<Option.Option<Held>, SqlError> = Effect.gen(function*() {
      const scope = yield* Scope.fork(layerScope, ExecutionStrategy.sequential)
      const taken = yield* Effect.exit(Effect.gen(function*() {
        const connection = yield* Scope.extend(sql.reserve, scope)
        const [row] = yield* connection.execute(TRY_LOCK, [nodeId], undefined)
        return row?.taken === true ? Option.some(connection) : Option.none()
      }))
      if (Exit.isSuccess(taken) && Option.isSome(taken.value)) {
        const connection = taken.value.value
        // Let go of on a connection going back to the pool (the session lives on there); within a bound, as the server
        // may not answer.
        yield* Scope.addFinalizer(scope, unlock(connection))
        return Option.some<Held>({ connection, scope })
      }
      yield* Scope.close(scope, Exit.void)
      return yield* Exit.as(taken, Option.none<Held>())
    })

    /**
     * One try: the lock; else, when its holder has been silent for longer than `LEASE_TTL` (its process taken for
     * gone: a machine that died, or this node's own session left behind by a network that stopped carrying it), that
     * session ended (the lock is free once it has gone); else the holder (none: it let go since).
     */
    const attempt = Effect.gen(function*() {
      const held = yield* tryTake
      if (Option.isSome(held)) return { _tag: "Taken", held: held.value } as const
      const holder = yield* holderNow
      if (holder === undefined || holder.silent_s === null || holder.silent_s <= Duration.toSeconds(config.leaseTtl)) {
        return { _tag: "HeldBy", holder } as const
      }
      // A session of another role may not be ended by this one: it is waited for as a live one.
      const ended = yield* Effect.either(sql.unsafe(`SELECT pg_terminate_backend($1)`, [holder.pid]))
      if (Either.isLeft(ended)) return { _tag: "HeldBy", holder } as const
      yield* Effect.logWarning(
        `NODE_ID '${nodeId}' was held by a session silent for longer than LEASE_TTL (${describeHolder(holder)}): ` +
          "its process was taken for gone, its session ended, and the id is taken over"
      )
      return { _tag: "Ended" } as const
    })

    // At start: the lock, or a wait for its holder to stop.
    const deadline = (yield* Clock.currentTimeMillis) + Duration.toMillis(patience)
    let first: Held | undefined
    for (let n = 0; first === undefined; n++) {
      const tried = yield* Effect.orDie(attempt)
      if (tried._tag === "Taken") first = tried.held
      else if (tried._tag === "HeldBy") {
        if ((yield* Clock.currentTimeMillis) >= deadline) return yield* Effect.fail(messages.refused(describeHolder(tried.holder)))
        if (n === 0) yield* Effect.logWarning(messages.waiting)
        yield* Effect.sleep(RETRY_EVERY)
      } else yield* Effect.sleep(RETRY_EVERY)
    }

    // Held: shown alive every heartbeat (a statement that does not come back is not waited for at shutdown; the
    // statement bound of `pgPool.ts` ends it); taken again when the session ends under it.
    const lost = makeFailureRun(`Holding NODE_ID '${nodeId}'`)
    const hold = ({ connection, scope }: Held) =>
      Effect.disconnect(connection.execute("SELECT 1", [], undefined)).pipe(
        Effect.repeat(Schedule.spaced(config.heartbeatInterval)),
        Effect.ignore,
        Effect.zipRight(Scope.close(scope, Exit.void)),
        Effect.zipRight(Effect.logWarning(
          `This node lost its hold on NODE_ID '${nodeId}' (its database session ended or stopped answering); taking it again`
        ))
      )
    const takeAgain = Effect.gen(function*() {
      yield* Effect.sleep(config.heartbeatInterval)
      const tried = yield* Effect.either(attempt)
      if (Either.isLeft(tried)) return // the database is away: readiness says so
      if (tried.right._tag === "Taken") {
        yield* lost.succeeded
        yield* Effect.logInfo(`This node holds its NODE_ID '${nodeId}' again`)
        return yield* hold(tried.right.held)
      }
      if (tried.right._tag === "HeldBy") {
        yield* lost.failed(Cause.fail(
          `another process holds it (${describeHolder(tried.right.holder)}): it started under this node's id while ` +
            "this node was cut off from the database; stop one of them"
        ))
      }
    })
    yield* hold(first).pipe(
      Effect.zipRight(Effect.forever(takeAgain)),
      Effect.withTracerEnabled(false), // a statement every heartbeat: not a trace each
      Effect.interruptible,
      Effect.forkIn(layerScope)
    )
  })

/** Lets go of the lock on `connection`, within `UNLOCK_LIMIT` (without waiting for a statement that never ends). */
const unlock = (connection: SqlConnection.Connection) =>
  Effect.ignore(Effect.timeout(Effect.disconnect(connection.execute("SELECT pg_advisory_unlock_all()", [], undefined)), UNLOCK_LIMIT))
