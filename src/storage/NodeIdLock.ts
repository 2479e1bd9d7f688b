/**
 * One process per node id. A node starting frees what an earlier run under its `NODE_ID` left (its staged upload
 * bytes and upload completions cut short; as the node that runs batches on SQLite, every lease and webhook claim),
 * so a second process started with the id of one that runs would take those from it while it works: an upload under
 * way losing its bytes. On a SQLite file every node therefore holds an exclusive lock on
 * `<database file>.node-<id>.lock` (`fileLock.ts`: a restart never finds it stale) before anything else is built on
 * the database; a second process with the same id waits for it as long as a predecessor may take to stop, then fails
 * to start and says why. An in-memory database needs none (no other process can open it); on PostgreSQL nodes are
 * told apart by their ids alone (see the README's "Several nodes").
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { Data, Duration, Effect, Layer } from "effect"
import { AppConfig } from "../Config.js"
import { fileNameOfNodeId } from "./BlobStore.js"
import { holdFileLock, patienceFor, sqliteFileOf } from "./fileLock.js"

/** Another process runs under this node's id on this SQLite database. */
export class NodeIdInUse extends Data.TaggedError("NodeIdInUse")<{ readonly nodeId: string; readonly database: string }> {
  override get message() {
    return `Another process runs as NODE_ID '${this.nodeId}' on the SQLite database ${this.database} (it holds ` +
      `${nodeLockFileOf(this.database, this.nodeId)}). Each process needs a NODE_ID of its own: a second one under ` +
      "the same id would take the first's uploads under way and work from it. Set NODE_ID (by default <hostname>:<PORT>)."
  }
}

/** The lock file of `nodeId` on a SQLite database file. */
export const nodeLockFileOf = (database: string, nodeId: string) => `${database}.node-${fileNameOfNodeId(nodeId)}.lock`

/** Takes this node's id on a SQLite file for the layer's lifetime (see above). */
export const NodeIdLockLive: Layer.Layer<never, NodeIdInUse, SqlClient.SqlClient | AppConfig> = Layer.scopedDiscard(
  Effect.gen(function*() {
    const config = yield* AppConfig
    const database = yield* sqliteFileOf(yield* SqlClient.SqlClient)
    if (database === undefined) return
    const patience = patienceFor(config)
    yield* holdFileLock(nodeLockFileOf(database, config.nodeId), patience, {
      waiting: `Another process runs as NODE_ID '${config.nodeId}' on ${database}; waiting up to ` +
        `${Duration.format(patience)} for it to stop`,
      refused: () => new NodeIdInUse({ nodeId: config.nodeId, database })
    })
  })
)
