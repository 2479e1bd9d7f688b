/**
 * A node's id held on PostgreSQL (`NodeIdLock.ts`): a session advisory lock keyed by the schema and the id, taken on a
 * connection of its own that the node keeps for its lifetime. PostgreSQL lets go of it when the session ends (the
 * process stopped, or killed: its socket closes). A session whose process died with its machine lingers until the
 * server's TCP keepalive gives up (two hours by default), so:
 *
 * - the holder shows it is alive: a statement on the lock's connection every `HEARTBEAT_INTERVAL`. One unanswered
 *   for a third of `LEASE_TTL` (that one connection stuck while the others work) moves the hold to a new session:
 *   it waits for the lock there, in the queue, then ends its old session;
 * - a node starting under a held id ends the holder's session only when it has been silent for longer than
 *   `LEASE_TTL` and no lease of that id is live (a node that works renews its leases every heartbeat), then takes
 *   the lock; otherwise it waits as long as a predecessor's orderly stop takes, and is refused;
 * - a holder whose session ends under it (the server restarted, or an operator ended it) takes the lock again as soon
 *   as it can (ending its own session left behind, if that still holds it). Another process holding its id by then
 *   started under it while this node was cut off (for longer than `LEASE_TTL`): `takenOver` is told, once, and this
 *   node says once a minute that another process holds its id.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import type * as SqlConnection from "@effect/sql/SqlConnection"
import type { SqlError } from "@effect/sql/SqlError"
import { Cause, Clock, Duration, Effect, Either, ExecutionStrategy, Exit, Fiber, Option, Scope } from "effect"
import type { AppConfigShape } from "../Config.js"
import { makeFailureRun } from "../observability/failureRuns.js"
import { LOCK_RETRY_EVERY } from "./fileLock.js"
import { PG_NOW_MS } from "./databaseClock.js"
import { wallClock } from "./wallClock.js"

/** The lock's keys: the schema's and the id's hashes (nodes of another schema on the database are others). */
const KEYS = "hashtext(current_schema()), hashtext($1)"
const TRY_LOCK = `SELECT pg_try_advisory_lock(${KEYS}) AS taken, pg_backend_pid() AS pid`
/** Waits for the lock (in PostgreSQL's queue: first in line when its holder lets go). */
const WAIT_FOR_LOCK = `SELECT pg_advisory_lock(${KEYS}), true AS taken, pg_backend_pid() AS pid`
/** Whether the session `$1` waits for an advisory lock (is in a lock's queue). */
const QUEUED = `SELECT EXISTS (SELECT 1 FROM pg_locks WHERE pid = $1 AND locktype = 'advisory' AND NOT granted) AS queued`
/** How often `QUEUED` is asked while a moved hold's wait reaches the queue. */
const QUEUE_CHECK_EVERY = Duration.millis(20)
/** The session holding the lock of an id, and for how long it has run no statement. */
const HOLDER = `SELECT l.pid, host(a.client_addr) AS client, EXTRACT(EPOCH FROM now() - a.state_change)::float8 AS silent_s
  FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
  WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
    AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
    AND (l.classid, l.objid) = (SELECT k[1]::oid, k[2]::oid FROM (SELECT ARRAY[${KEYS}] AS k) keys)`
/**
 * Whether the node under an id holds a live lease (`batches/WorkLeases.ts`: epoch milliseconds of PostgreSQL's
 * clock, which nodes write them by: `databaseClock.ts`, not yet installed this early in a start).
 */
const LIVE_LEASES = `SELECT (EXISTS (SELECT 1 FROM batches WHERE lease_owner = $1 AND lease_until > now_ms)
  OR EXISTS (SELECT 1 FROM batch_slices WHERE owner = $1 AND lease_until > now_ms)) AS live
  FROM (SELECT ${PG_NOW_MS} AS now_ms) clock`

/** How long a lock's release may take when its connection is let go (a stalled server: not for ever). */
const UNLOCK_LIMIT = Duration.seconds(1)

/** The lock on a connection of this node's, the scope that keeps the connection, and its session. */
interface Held {
  readonly connection: SqlConnection.Connection
  readonly scope: Scope.CloseableScope
  readonly pid: number
}

interface Holder {
  readonly pid: number
  readonly client: string | null
  /** Seconds since its last statement; null when this role may not see it. */
  readonly silent_s: number | null
}

/** Who holds the id, said for a person: the session and where it comes from. */
export const describeHolder = (holder: Holder) =>
  `PostgreSQL session ${holder.pid}${holder.client === null ? "" : ` from ${holder.client}`}` +
  (holder.silent_s === null ? "" : `, last active ${Math.round(holder.silent_s)} s ago`)

/** What one try for the lock gave. */
type Attempt =
  | { readonly _tag: "Taken"; readonly held: Held }
  | { readonly _tag: "HeldBy"; readonly holder: Holder }
  | { readonly _tag: "Free" } // let go of between the try and the look: try again
  | { readonly _tag: "Ended" } // its silent holder's session ended: try again

/**
 * Holds `nodeId` on the PostgreSQL database of `sql` for as long as the scope lasts (see above); fails with what
 * `refused` makes of the holder when another process keeps it past `patience`.
 */
export const holdOnPostgres = <E>(
  sql: SqlClient.SqlClient,
  config: AppConfigShape,
  patience: Duration.Duration,
  messages: {
    readonly waiting: string
    readonly refused: (holder: string) => E
    /** Run once, when another process is found holding the id this node held (see `OnNodeIdTakenOver`). */
    readonly takenOver: (holder: string) => Effect.Effect<void>
  }
): Effect.Effect<void, E, Scope.Scope> =>
  Effect.gen(function*() {
    const nodeId = config.nodeId
    const layerScope = yield* Effect.scope
    const pingLimit = Duration.millis(Math.max(100, Duration.toMillis(config.leaseTtl) / 3))

    /**
     * `take` (a try for the lock, or a wait for it) on a connection of its own, kept in a scope of its own when it took
     * the lock.
     */
    const lockOn = (
      take: (connection: SqlConnection.Connection) => Effect.Effect<ReadonlyArray<Record<string, unknown>>, SqlError>
    ): Effect.Effect<Option.Option<Held>, SqlError> =>
      Effect.gen(function*() {
        const scope = yield* Scope.fork(layerScope, ExecutionStrategy.sequential)
        const taken = yield* Effect.exit(Effect.gen(function*() {
          const connection = yield* Scope.extend(sql.reserve, scope)
          const [row] = yield* take(connection)
          return row?.taken === true ? Option.some<Held>({ connection, scope, pid: Number(row.pid) }) : Option.none()
        }))
        if (Exit.isSuccess(taken) && Option.isSome(taken.value)) {
          // Let go of on a connection going back to the pool (its session lives on there).
          yield* Scope.addFinalizer(scope, unlock(taken.value.value.connection))
          return taken.value
        }
        yield* Scope.close(scope, Exit.void)
        return yield* taken
      })

    /** Ends the database session `pid` (its lock let go of once it has gone). */
    const endSession = (pid: number) => sql.unsafe(`SELECT pg_terminate_backend($1)`, [pid])

    /**
     * This node's own sessions it moved its hold off but could not end (the database was away): one found holding
     * the lock is ended whatever its silence and leases (its node is this one, and works on).
     */
    const abandoned = new Set<number>()

    const attempt: Effect.Effect<Attempt, SqlError> = Effect.gen(function*() {
      const held = yield* lockOn((connection) => connection.execute(TRY_LOCK, [nodeId], undefined))
      if (Option.isSome(held)) {
        abandoned.clear()
        return { _tag: "Taken", held: held.value }
      }
      const [holder] = yield* sql.unsafe<Holder>(HOLDER, [nodeId])
      if (holder === undefined) return { _tag: "Free" }
      if (!abandoned.has(holder.pid)) {
        if (holder.silent_s === null || holder.silent_s <= Duration.toSeconds(config.leaseTtl)) return { _tag: "HeldBy", holder }
        // Asked before the migrations (`BeforeMigrating` in `Sql.ts`): on a new database the tables are not there yet,
        // and a holder that cannot be told idle is waited for as a live one.
        const leases = yield* Effect.orElseSucceed(
          Effect.map(sql.unsafe<{ live: boolean }>(LIVE_LEASES, [nodeId]), ([row]) => row?.live === true),
          () => true
        )
        if (leases) return { _tag: "HeldBy", holder }
      }
      // A session of another role may not be ended by this one: it is waited for as a live one.
      if (Either.isLeft(yield* Effect.either(endSession(holder.pid)))) {
        return { _tag: "HeldBy", holder }
      }
      yield* Effect.logWarning(
        abandoned.has(holder.pid)
          ? `NODE_ID '${nodeId}' was still held by this node's session left behind (${describeHolder(holder)}): ended`
          : `NODE_ID '${nodeId}' was held by a session silent for longer than LEASE_TTL, with no live lease ` +
            `(${describeHolder(holder)}): its process was taken for gone, its session ended, and the id is taken over`
      )
      return { _tag: "Ended" }
    })

    // At start: the lock, or a wait for its holder to stop.
    const deadline = (yield* Clock.currentTimeMillis) + Duration.toMillis(patience)
    let first: Held | undefined
    for (let waited = false; first === undefined;) {
      const tried = yield* Effect.orDie(attempt)
      if (tried._tag === "Taken") first = tried.held
      else {
        if (tried._tag === "HeldBy") {
          if ((yield* Clock.currentTimeMillis) >= deadline) return yield* Effect.fail(messages.refused(describeHolder(tried.holder)))
          if (!waited) yield* Effect.logWarning(messages.waiting)
          waited = true
        }
        yield* Effect.sleep(LOCK_RETRY_EVERY)
      }
    }

    /** Until the session `pid` waits in a lock's queue (at most `pingLimit`: then it is taken to be there). */
    const queued = (pid: number) =>
      Effect.gen(function*() {
        const until = (yield* Clock.currentTimeMillis) + Duration.toMillis(pingLimit)
        while ((yield* Clock.currentTimeMillis) < until) {
          const [row] = yield* sql.unsafe<{ queued: boolean }>(QUEUED, [pid])
          if (row?.queued === true) return
          yield* Effect.sleep(QUEUE_CHECK_EVERY)
        }
      })

    /**
     * Moves the hold off a session that stopped answering: waits for the lock on a new connection, and once that wait
     * is in the lock's queue (first in line), ends the old session, which lets go of it. Ended before, the lock was
     * free for a moment, and a node starting under the id meanwhile took it from this one, which works on. The old
     * connection is let go of once its statement is over (`pgPool.ts` ends it): lent again before, it would hold up
     * the next statement.
     */
    const moveHold = (old: Held, stuck: Fiber.Fiber<unknown, unknown>) =>
      Effect.gen(function*() {
        abandoned.add(old.pid)
        yield* Effect.forkDaemon(Effect.zipRight(Fiber.await(stuck), Scope.close(old.scope, Exit.void)))
        const waitThenEnd = (connection: SqlConnection.Connection) =>
          Effect.gen(function*() {
            const [own] = yield* connection.execute("SELECT pg_backend_pid() AS pid", [], undefined)
            const waiting = yield* Effect.fork(connection.execute(WAIT_FOR_LOCK, [nodeId], undefined))
            yield* Effect.ignore(queued(Number(own?.pid))) // the database away: ending the old session fails too
            yield* Effect.ignore(endSession(old.pid))
            return yield* Fiber.join(waiting) // a wait that does not end: DATABASE_STATEMENT_TIMEOUT
          })
        const moving = yield* Effect.forkDaemon(lockOn(waitThenEnd)) // not waited for by a shutdown either
        const moved = yield* Effect.flatten(Fiber.join(moving))
        abandoned.delete(old.pid) // it let go: it is over
        return moved
      })

    /** Holds on `held`, shown alive every heartbeat, for as long as it can (its session lost: a warning, and it ends). */
    const hold = (start: Held) =>
      Effect.gen(function*() {
        let held = start
        for (;;) {
          // A daemon: a statement that does not come back holds up neither the hold nor a shutdown.
          const ping = yield* Effect.forkDaemon(held.connection.execute("SELECT 1", [], undefined))
          const answered = yield* Effect.either(Effect.timeout(Fiber.join(ping), pingLimit))
          if (Either.isRight(answered)) {
            yield* Effect.sleep(config.heartbeatInterval)
            continue
          }
          if (answered.left._tag === "TimeoutException") {
            yield* Effect.logWarning(
              `The database session holding NODE_ID '${nodeId}' did not answer within ${Duration.format(pingLimit)}; ` +
                "moving the hold to a new one"
            )
            const moved = yield* Effect.either(moveHold(held, ping))
            if (Either.isRight(moved)) {
              held = moved.right
              continue
            }
          } else yield* Scope.close(held.scope, Exit.void)
          return yield* Effect.annotateLogs(
            Effect.logWarning(`This node lost its hold on NODE_ID '${nodeId}' (its database session ended); taking it again`),
            "event",
            "node_id.lost"
          )
        }
      })

    const lost = makeFailureRun(`Holding NODE_ID '${nodeId}'`)
    let toldTakenOver = false
    const takeAgain = Effect.gen(function*() {
      yield* Effect.sleep(config.heartbeatInterval)
      const tried = yield* Effect.either(attempt)
      if (Either.isLeft(tried)) return // the database is away: readiness says so
      if (tried.right._tag === "Taken") {
        yield* lost.succeeded
        yield* Effect.annotateLogs(Effect.logInfo(`This node holds its NODE_ID '${nodeId}' again`), "event", "node_id.regained")
        return yield* hold(tried.right.held)
      }
      if (tried.right._tag === "HeldBy") {
        if (!toldTakenOver) {
          toldTakenOver = true
          yield* messages.takenOver(describeHolder(tried.right.holder))
        }
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
  }).pipe(Effect.withClock(wallClock)) // beats and silences are the database's, in real time

/**
 * Lets go of the lock on `connection`, within `UNLOCK_LIMIT`. Interruptible: it runs as a finalizer, and a statement
 * that never ends would otherwise hold a shutdown up.
 */
const unlock = (connection: SqlConnection.Connection) =>
  Effect.ignore(Effect.timeout(
    Effect.interruptible(Effect.disconnect(connection.execute("SELECT pg_advisory_unlock_all()", [], undefined))),
    UNLOCK_LIMIT
  ))
