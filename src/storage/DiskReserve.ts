/**
 * Space kept back on the SQLite database's disk for what frees space or stops work. On a disk gone full, SQLite
 * refuses even a `DELETE` (its write-ahead log needs pages): no file delete or batch cancel could free room, and a
 * restart failed as well. So a file of `DISK_RESERVE_BYTES` is kept in `DATA_DIR` while there is room for it: a
 * file delete or a batch cancel that meets a full disk releases it and tries once more, a start on a disk with less
 * free than the reserve releases it first, and a delete that leaves room for it twice over makes it again.
 * PostgreSQL keeps its own disk: with `DATABASE_URL` there is no reserve.
 */
import { Context, Duration, Effect, Layer, Option } from "effect"
import { randomBytes } from "node:crypto"
import { rename, rm, stat, statfs, writeFile } from "node:fs/promises"
import * as Path from "node:path"
import { promisify } from "node:util"
import { AppConfig } from "../Config.js"
import { isCapacityFault } from "./Faults.js"
import { makeDirectories } from "./makeDirectories.js"

/** The reserve's name in `DATA_DIR`. */
export const RESERVE_NAME = "disk-reserve"

export class DiskReserve extends Context.Tag("DiskReserve")<DiskReserve, {
  /** Frees the reserve for `what` (named in the log line); whether there was one to free. */
  readonly release: (what: string) => Effect.Effect<boolean>
  /** Makes the reserve again when it is missing and the disk has room for it twice over. */
  readonly restore: Effect.Effect<void>
}>() {}

const none = DiskReserve.of({ release: () => Effect.succeed(false), restore: Effect.void })

/** No reserve: nothing to release. */
export const DiskReserveNone = Layer.succeed(DiskReserve, none)

const mib = (bytes: number) => `${Math.round((bytes / 1024 / 1024) * 10) / 10} MiB`

/** Bytes free to this process on `dir`'s file system; undefined when it does not say within 5 s. */
const freeBytes = (dir: string) =>
  Effect.tryPromise(() => statfs(dir)).pipe(
    Effect.map((s) => s.bavail * s.bsize),
    Effect.timeout(Duration.seconds(5)),
    Effect.orElseSucceed(() => undefined)
  )

/** The reserve of `bytes` at `dir`/`RESERVE_NAME`; `free` reads the bytes free on its disk (a test gives its own). */
export const makeDiskReserve = (dir: string, bytes: number, free: Effect.Effect<number | undefined> = freeBytes(dir)) => {
  const path = Path.join(dir, RESERVE_NAME)
  let restoring = false
  const exists = Effect.promise(() => stat(path).then(() => true, () => false))
  const release = (what: string) =>
    Effect.promise(() => rm(path).then(() => true, () => false)).pipe(
      Effect.tap((freed) =>
        freed
          ? Effect.annotateLogs(
            Effect.logWarning(`Disk full: released the ${mib(bytes)} kept in reserve (${path}) for ${what}; delete files to make room, it is kept again once there is`),
            "event",
            "disk.reserve_released"
          )
          : Effect.void
      )
    )
  const restore = Effect.suspend(() => {
    if (restoring) return Effect.void
    restoring = true
    return Effect.gen(function*() {
      if (yield* exists) return
      const room = yield* free
      if (room === undefined || room < 2 * bytes) return
      const temp = `${path}.${process.pid}.tmp`
      // Random bytes: a file system that compresses or skips zeros would keep no space for a file of zeros.
      const made = yield* Effect.tryPromise(async () => {
        await writeFile(temp, await promisify(randomBytes)(bytes))
        await rename(temp, path)
      }).pipe(
        Effect.as(true),
        Effect.catchAll(() => Effect.as(Effect.promise(() => rm(temp, { force: true }).catch(() => undefined)), false))
      )
      if (made) yield* Effect.logInfo(`Disk reserve of ${mib(bytes)} kept (${path})`)
    }).pipe(Effect.ensuring(Effect.sync(() => (restoring = false))))
  })
  /** At start: released when the disk has less free than the reserve (so the start can write), else made if missing. */
  const atStart = Effect.gen(function*() {
    const room = yield* free
    if (room !== undefined && room < bytes && (yield* exists)) yield* release("the start")
    else yield* restore
  })
  return { service: DiskReserve.of({ release, restore }), atStart }
}

/** The reserve in `DATA_DIR` on SQLite, of `DISK_RESERVE_BYTES` (none when 0, or on PostgreSQL). */
export const DiskReserveLive = Layer.effect(
  DiskReserve,
  Effect.gen(function*() {
    const { dataDir, databaseUrl, diskReserveBytes } = yield* AppConfig
    if (Option.isSome(databaseUrl) || diskReserveBytes === 0) return none
    yield* Effect.promise(() => makeDirectories(dataDir).catch(() => undefined)) // the database's start says why if not
    const { atStart, service } = makeDiskReserve(dataDir, diskReserveBytes)
    yield* atStart
    return service
  })
)

/**
 * `effect`, tried once more after the reserve (if any) is released when it meets a full disk: for what frees space
 * or stops work.
 */
export const usingReserve = (reserve: Option.Option<DiskReserve["Type"]>, what: string) =>
<A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
  Option.match(reserve, {
    onNone: () => effect,
    onSome: ({ release }) =>
      Effect.catchAllCause(effect, (cause) =>
        isCapacityFault(cause)
          ? Effect.flatMap(release(what), (freed) => (freed ? effect : Effect.failCause(cause)))
          : Effect.failCause(cause))
  })
