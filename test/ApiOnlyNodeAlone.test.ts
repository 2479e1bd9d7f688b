/**
 * An API-only node (`MAX_CONCURRENT_BATCHES=0`) on a SQLite file that no process runs batches on warns at start: its
 * batches would sit unfinished without a word. Beside a node that runs them (holding the runner lock), it says
 * nothing, and its look at the lock takes nothing from that node; it never makes the lock file.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, HashMap, Layer, Logger, Option } from "effect"
import { existsSync } from "node:fs"
import * as Path from "node:path"
import { SqlLive } from "../src/storage/Sql.js"
import { runnerHoldsLock, SqliteRunnerLockLive } from "../src/storage/SqliteRunnerLock.js"
import { configFor, TestDatabase, TestDataDir } from "./support/TestApp.js"

/** The start of a node's runner lock on the test's SQLite file, `maxConcurrentBatches` as given. */
const node = (maxConcurrentBatches: number) =>
  Layer.build(SqliteRunnerLockLive.pipe(Layer.provide(SqlLive), Layer.provide(configFor({ maxConcurrentBatches }))))

describe("an API-only node on SQLite", () => {
  it.scoped("warns when no process runs batches on its file, and not beside one that does", () => {
    const warnings: Array<string> = []
    const logger = Logger.make(({ annotations, message }) => {
      if (Option.contains(HashMap.get(annotations, "event"), "server.no_batch_runner")) warnings.push(String(message))
    })
    return Effect.gen(function*() {
      const { path } = yield* TestDataDir
      const database = Path.join(path, "batches.sqlite")
      yield* Effect.scoped(node(0))
      expect(warnings).toEqual([
        `No process runs batches on ${database} now (none holds ${database}.runner-lock): batches created here wait ` +
        "until one starts on it with MAX_CONCURRENT_BATCHES of 1 or more"
      ])
      // Made by the node that runs batches, not by this one (of another user, it could keep that node out).
      expect(existsSync(`${database}.runner-lock`)).toBe(false)

      yield* node(1) // a node that runs batches, holding the lock for the rest of the test
      yield* Effect.scoped(node(0))
      expect(warnings).toHaveLength(1)
      expect(yield* runnerHoldsLock(database)).toBe(true) // the API-only node's look left it held
    }).pipe(
      Effect.provide(Layer.merge(TestDataDir.Default, TestDatabase.layer("sqlite"))),
      Effect.provide(Logger.replace(Logger.defaultLogger, logger))
    )
  })
})
