/**
 * One process per node id. A node starting frees what an earlier run under its `NODE_ID` left (its staged upload
 * bytes and upload completions cut short, its leases and webhook claims), so a second process started under the id
 * of one that runs would take those from it while it works: an upload under way losing its bytes, requests sent
 * twice. On a SQLite file every node therefore holds an exclusive lock on
 * `<database file>.node-<id>.lock` (`fileLock.ts`: a restart never finds it stale) before anything else is built on
 * the database; a second process with the same id waits for it as long as a predecessor's orderly stop takes, then fails
 * to start and says why. On PostgreSQL, a node holds an advisory lock on its id instead (`nodeIdLockPg.ts`); on an
 * in-memory database it needs none (no other process can open it).
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { SqlError } from "@effect/sql/SqlError"
import { Context, Data, Duration, Effect, Layer } from "effect"
import { AppConfig } from "../Config.js"
import { fileNameOfNodeId } from "./BlobStore.js"
import { holdFileLock, patienceFor, sqliteFileOf } from "./fileLock.js"
import { holdOnPostgres } from "./nodeIdLockPg.js"

/** Another process (or another app built in this one) runs under this node's id on its database. */
export class NodeIdInUse extends Data.TaggedError("NodeIdInUse")<{ readonly nodeId: string; readonly where: string }> {
  override get message() {
    return `Another process (or another app in this one) runs as NODE_ID '${this.nodeId}' on ${this.where}. ` +
      "Each needs a NODE_ID of its own: a second one under the same id would take the first's uploads under way and " +
      "work from it. Set NODE_ID (by default <hostname>:<PORT>; in code, AppConfig's nodeId)."
  }
}

/** Another process took this node's id while the node was cut off from its PostgreSQL database for a while. */
export class NodeIdTakenOver extends Data.TaggedError("NodeIdTakenOver")<{ readonly nodeId: string; readonly holder: string }> {
  override get message() {
    return `Another process took NODE_ID '${this.nodeId}' (held by ${this.holder}) while this node was cut off from ` +
      "the database for longer than LEASE_TTL: two processes under one id would work on the same requests. Each " +
      "process needs a NODE_ID of its own."
  }
}

/**
 * What a node does once it finds its id taken over (`NodeIdTakenOver`), besides an error logged once a minute. The
 * server (`main.ts`) stops: its work goes on in the other process. By default nothing more, for an app embedding the
 * service to decide (provide this reference to stop it, as `main.ts` does).
 */
export class OnNodeIdTakenOver extends Context.Reference<OnNodeIdTakenOver>()("NodeIdLock/OnNodeIdTakenOver", {
  defaultValue: () => (_: NodeIdTakenOver): Effect.Effect<void> => Effect.void
}) {}

/** The lock file of `nodeId` on a SQLite database file. */
export const nodeLockFileOf = (database: string, nodeId: string) => `${database}.node-${fileNameOfNodeId(nodeId)}.lock`

/**
 * Fails as PostgreSQL fails a first migration when the user's search_path names no schema that exists: the lock's
 * key is the schema's, and there is none (taken before the migrations: `BeforeMigrating` in `Sql.ts`; without this,
 * the lock was tried for ever, and the start hung without a word).
 */
const schemaSelected = (sql: SqlClient.SqlClient) =>
  Effect.flatMap(sql<{ schema: string | null }>`SELECT current_schema() AS schema`, ([row]) =>
    row?.schema != null
      ? Effect.void
      : Effect.fail(new SqlError({ cause: new Error("no schema has been selected to create in"), message: "Failed to take NODE_ID's lock" })))

/** Takes this node's id on its database for the layer's lifetime (see above). */
export const NodeIdLockLive: Layer.Layer<never, NodeIdInUse | SqlError, SqlClient.SqlClient | AppConfig> = Layer.scopedDiscard(
  Effect.gen(function*() {
    const config = yield* AppConfig
    const { nodeId } = config
    const sql = yield* SqlClient.SqlClient
    const patience = patienceFor(config)
    const waiting = (where: string) =>
      `Another process (or another app in this one) runs as NODE_ID '${nodeId}' on ${where}; ` +
      `waiting up to ${Duration.format(patience)} for it to stop`
    if (sql.onDialectOrElse({ pg: () => true, orElse: () => false })) {
      yield* schemaSelected(sql)
      const onTakenOver = yield* OnNodeIdTakenOver
      return yield* holdOnPostgres(sql, config, patience, {
        waiting: waiting("this PostgreSQL database"),
        refused: (holder) => new NodeIdInUse({ nodeId, where: `this PostgreSQL database and schema (held by ${holder})` }),
        takenOver: (holder) => onTakenOver(new NodeIdTakenOver({ nodeId, holder }))
      })
    }
    const database = yield* sqliteFileOf(sql)
    if (database === undefined) return
    const file = nodeLockFileOf(database, nodeId)
    yield* holdFileLock(file, patience, {
      waiting: waiting(database),
      refused: () => new NodeIdInUse({ nodeId, where: `the SQLite database ${database} (it holds ${file})` })
    })
  })
)
