/**
 * The `pg` pool under @effect/sql-pg, made here (`PgClient.fromPool`) rather than by `PgClient.make` for one reason:
 * a statement the server never answers (a server that hangs, or a network that stops carrying an open connection's
 * packets while the far end still acknowledges them) would hold its request and its connection until TCP gives up,
 * many minutes later, and shutdowns and interrupted requests wait for their statements (`Sql.ts`: never
 * cancelled). Here a statement left unanswered for `DATABASE_STATEMENT_TIMEOUT` closes its connection: it fails as
 * a statement timeout (`57014`: waited out and retried like a database that is down), the pool drops the connection
 * instead of lending it again, and the server process behind it is ended when the server can be reached (its
 * statement does not go on, nor commit). Migrations are exempt (one may rightly take long on a
 * large database): the bound is set once they are done. New connections are bounded by `connectionTimeoutMillis`.
 * The server holds its end to the same bound (`idle_in_transaction_session_timeout`): a session cut off within a
 * transaction, that no one could end, would otherwise keep its row locks until the server's TCP keepalive gives up
 * (two hours by default), and every node's lease renewals and takeovers of those batches would wait on them.
 */
import { SqlError } from "@effect/sql/SqlError"
import { Duration, Effect, type Scope } from "effect"
import * as Pg from "pg"

/** The time a statement may wait for its answer, in milliseconds; 0 while it is off. */
export interface StatementBound {
  ms: number
}

type Callback = (error: Error | null, result: unknown) => void

/** The `idle_in_transaction_session_timeout` each session was given, in milliseconds. */
const idleBounds = new WeakMap<Pg.Client, number>()

/**
 * Each connection's server process, asked with its bound. Why: the `processID` the server announces is a pooler's
 * own key behind PgBouncer, and `pg_terminate_backend` of it ended nothing (the statements a timeout gave up on went
 * on waiting, five at once, each able to commit).
 */
const serverProcesses = new WeakMap<Pg.Client, number>()
const askedProcess = new WeakSet<Pg.Client>()

/**
 * A `pg` client whose statements (those given a callback, as @effect/sql-pg gives them) are held to `bound`. One
 * left unanswered fails with code `57014` (a statement timed out: the stores wait and retry, as for a database
 * that is down) and its connection is closed; `endSession` then ends its server process, through another
 * connection, when the server can be reached: a statement waiting for a lock would otherwise go on there, keep its
 * connection slot, and could still commit.
 */
const boundedClient = (bound: StatementBound, endSession: (pid: number) => void): typeof Pg.Client => {
  const query = Pg.Client.prototype.query as (this: Pg.Client, ...args: Array<unknown>) => unknown
  class BoundedClient extends Pg.Client {}
  Object.defineProperty(BoundedClient.prototype, "query", {
    value: function(this: Pg.Client, ...args: Array<unknown>) {
      const callback = args[args.length - 1]
      const ms = bound.ms
      // Set between transactions only: within one, a rollback would undo it. Sent ahead of the statement, on its turn;
      // a statement, not a startup parameter, which PgBouncer refuses unless told to ignore it. The connection's
      // server process is asked in the same query, once: the statements it may have to end come after it (a second
      // query ahead, one more queued, made pg warn that it will refuse that).
      const first = !askedProcess.has(this)
      const bounding = ms > 0 && idleBounds.get(this) !== ms
      if ((first || bounding) && this.getTransactionStatus() === "I") {
        if (bounding) idleBounds.set(this, ms)
        askedProcess.add(this)
        // Read committed, whatever the role's or database's default, from the first statement on (the migrations'
        // and the node's lock's too): the service's transactions are written for it (under `serializable` they
        // failed with "could not serialize access", each a batch's fault and retry).
        const once = "SET default_transaction_isolation = 'read committed'; SELECT pg_backend_pid() AS pid"
        const ahead = [bounding ? `SET idle_in_transaction_session_timeout = ${ms}` : "", first ? once : ""].filter((s) => s !== "").join("; ")
        // A broken connection fails the next statement.
        query.call(this, ahead, (error: Error | null, result?: unknown) => {
          const last = (Array.isArray(result) ? result.at(-1) : result) as { rows?: Array<{ pid?: unknown }> } | undefined
          const pid = last?.rows?.[0]?.pid
          if (first && error === null && typeof pid === "number") serverProcesses.set(this, pid)
        })
      }
      if (ms <= 0 || typeof callback !== "function") return query.apply(this, args)
      const timer = setTimeout(() => {
        // Closing the socket fails the statement, and the client with it (the pool then drops it).
        const client = this as unknown as {
          readonly processID?: number
          readonly connection: { readonly stream: { destroy: (e: Error) => void } }
        }
        const error = Object.assign(
          new Error(`PostgreSQL did not answer a statement within ${ms} ms; its connection is closed`),
          { code: "57014" }
        )
        client.connection.stream.destroy(error)
        const process = serverProcesses.get(this) ?? client.processID
        if (process !== undefined) endSession(process)
      }, ms)
      args[args.length - 1] = ((error, result) => {
        clearTimeout(timer)
        ;(callback as Callback)(error, result)
      }) satisfies Callback
      return query.apply(this, args)
    }
  })
  return BoundedClient
}

export interface PoolOptions {
  readonly url: string
  readonly applicationName: string
  readonly connectTimeout: Duration.Duration
  readonly maxConnections?: number | undefined
}

/**
 * A pool whose statements are held to `bound`, ended with the scope; fails unless the server answers a first
 * statement within `connectTimeout` (as `PgClient.make` does).
 */
export const makePool = (options: PoolOptions, bound: StatementBound): Effect.Effect<Pg.Pool, SqlError, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.sync(() => {
      // Best effort, and bounded like any statement: the server may be the one that does not answer.
      const endSession = (pid: number) => void pool.query("SELECT pg_terminate_backend($1)", [pid], () => {})
      const pool: Pg.Pool = new Pg.Pool({
        connectionString: options.url,
        application_name: options.applicationName,
        connectionTimeoutMillis: Duration.toMillis(options.connectTimeout),
        max: options.maxConnections,
        Client: boundedClient(bound, endSession)
      })
      pool.on("error", () => {}) // an idle connection lost: the pool drops it, the next statement opens another
      return pool
    }),
    (pool) => Effect.promise(() => pool.end()).pipe(Effect.interruptible, Effect.timeoutOption(Duration.seconds(1)))
  ).pipe(
    Effect.tap((pool) =>
      Effect.tryPromise({
        try: () => pool.query("SELECT 1"),
        catch: (cause) => new SqlError({ cause, message: "PgClient: Failed to connect" })
      }).pipe(Effect.timeoutFail({
        duration: options.connectTimeout,
        onTimeout: () => new SqlError({ cause: new Error("Connection timed out"), message: "PgClient: Connection timed out" })
      }))
    )
  )
