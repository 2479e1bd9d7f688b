/**
 * Space kept back on the SQLite database's disk for what frees space or stops work. On a disk gone full, SQLite
 * refuses even a `DELETE` (its write-ahead log needs pages): no file delete or batch cancel could free room, and a
 * restart failed as well. So a file of `DISK_RESERVE_BYTES` is kept in `DATA_DIR` while there is room for it: a
 * file delete or a batch cancel that meets a full disk releases it and tries once more, a start on a disk with less
 * free than the reserve releases it first, and it is made again, checked every `RESTORE_EVERY`, once the disk has
 * room for it twice over (however the room came: deletes, expiry sweeps, an operator). PostgreSQL keeps its own
 * disk: with `DATABASE_URL` there is no reserve.
 */
import { Context, Duration, Effect, Layer, Option, Schedule } from "effect"
import { randomBytes } from "node:crypto"
import { open, readdir, rename, rm, stat } from "node:fs/promises"
import * as Path from "node:path"
import { promisify } from "node:util"
import { AppConfig } from "../Config.js"
import { makeDiskSpace } from "./diskSpace.js"
import { isCapacityFault } from "./Faults.js"
import { makeDirectories } from "./makeDirectories.js"

/** The reserve's name in `DATA_DIR`. */
export const RESERVE_NAME = "disk-reserve"
/** How often a missing reserve is looked at, to be made again once there is room. */
export const RESTORE_EVERY = Duration.seconds(10)
/** Written a piece at a time: a large reserve is never held in memory whole. */
const PIECE_BYTES = 1024 * 1024

export class DiskReserve extends Context.Tag("DiskReserve")<DiskReserve, {
  /**
   * Frees the reserve for `what` (named in the log line) when the disk has less free than it; whether there was
   * one to free.
   */
  readonly release: (what: string) => Effect.Effect<boolean>
  /** Looks, in the background, whether the reserve can be made again (after a delete: it may have made room). */
  readonly restoreSoon: Effect.Effect<void>
}>() {}

const none = DiskReserve.of({ release: () => Effect.succeed(false), restoreSoon: Effect.void })

const mib = (bytes: number) => `${Math.round((bytes / 1024 / 1024) * 10) / 10} MiB`

/**
 * `bytes` of random bytes (a file system that compresses or skips zeros keeps no space for zeros) at `path`; given
 * up between pieces once `signal` aborts (the server stops).
 */
const writeRandom = async (path: string, bytes: number, signal: AbortSignal) => {
  const file = await open(path, "w")
  try {
    for (let written = 0; written < bytes; written += PIECE_BYTES) {
      signal.throwIfAborted()
      await file.write(await promisify(randomBytes)(Math.min(PIECE_BYTES, bytes - written)))
    }
    await file.sync()
  } finally {
    await file.close()
  }
}

/** The reserve of `bytes` at `dir`/`RESERVE_NAME`; `free` reads the bytes free on its disk (a test gives its own). */
export const makeDiskReserve = (
  dir: string,
  bytes: number,
  free: Effect.Effect<number | undefined> = Effect.map(makeDiskSpace(dir), (space) => space?.available)
) => {
  const path = Path.join(dir, RESERVE_NAME)
  /** Whether this process released it: its return is news then (a first start's making of it is not). */
  let released = false
  /** Whether the last try to make it failed: said once, until one succeeds. */
  let failedBefore = false
  const sizeOnDisk = Effect.promise(() => stat(path).then((s) => s.size, () => undefined))
  const remove = Effect.promise(() => rm(path).then(() => true, () => false))

  const release = (what: string) =>
    Effect.gen(function*() {
      // A full error with room on the disk (SQLite's own page limit) is not one the reserve can help. A user's quota
      // is not told apart either (statfs shows the disk's room): the reserve stays then.
      const room = yield* free
      if (room !== undefined && room >= bytes) return false
      const freed = yield* remove
      if (freed) {
        released = true
        yield* Effect.annotateLogs(
          Effect.logWarning(`Disk full: released the ${mib(bytes)} kept in reserve (${path}) for ${what}; ` +
            `delete files to make room: it is kept again once the disk has ${mib(2 * bytes)} free`),
          "event",
          "disk.reserve_released"
        )
      }
      return freed
    })

  /**
   * Makes the reserve when it is missing (or, at start, of another size: later, a node configured otherwise on the
   * same `DATA_DIR` would remake it each time) and the disk has room for it twice over.
   */
  const makeAgain = (resize: boolean) => Effect.gen(function*() {
    const size = yield* sizeOnDisk
    if (size === bytes || (size !== undefined && !resize)) return
    const room = yield* free
    if (room === undefined || room + (size ?? 0) < 2 * bytes) return
    if (size !== undefined) yield* remove
    // A name of its own (nodes on one DATA_DIR may both make it); one a killed run left goes at a later start.
    const temp = `${path}.${process.pid}.${Date.now()}.tmp`
    // The temp file goes in every case: renamed already, written in part, or cut by the server's stop.
    const made = yield* Effect.tryPromise(async (signal) => {
      await writeRandom(temp, bytes, signal)
      await rename(temp, path)
    }).pipe(Effect.either, Effect.ensuring(Effect.promise(() => rm(temp, { force: true }).catch(() => undefined))))
    if (made._tag === "Left") {
      const line = `The disk reserve (${path}) could not be made: ${String(made.left.error)}`
      yield* failedBefore ? Effect.logDebug(line) : Effect.logWarning(line)
      failedBefore = true
      return
    }
    failedBefore = false
    yield* (released ? Effect.logInfo : Effect.logDebug)(`Disk reserve of ${mib(bytes)} kept (${path})`)
  })
  // One at a time: a look asked for while one runs is that one.
  const lock = Effect.unsafeMakeSemaphore(1)
  const restore = Effect.asVoid(lock.withPermitsIfAvailable(1)(makeAgain(false)))

  /** Half-written reserves of runs killed while writing them (older than a minute: not another node's, being written). */
  const removeStaleTemps = Effect.promise(async () => {
    const names = await readdir(dir).catch(() => [])
    for (const name of names.filter((n) => n.startsWith(`${RESERVE_NAME}.`) && n.endsWith(".tmp"))) {
      const file = Path.join(dir, name)
      const old = await stat(file).then((s) => Date.now() - s.mtimeMs > 60_000, () => false)
      if (old) await rm(file, { force: true }).catch(() => undefined)
    }
  })

  /** At start: released when the disk has less free than the reserve (so the start can write), else made. */
  const atStart = Effect.gen(function*() {
    yield* removeStaleTemps
    const room = yield* free
    if (room !== undefined && room < bytes && (yield* sizeOnDisk) !== undefined) yield* release("the start")
    else yield* makeAgain(true)
  })
  return { release, restore, atStart, remove }
}

/**
 * The reserve in `DATA_DIR` on SQLite, of `DISK_RESERVE_BYTES`; none on PostgreSQL or when 0 (and one an earlier
 * run left is removed).
 */
export const DiskReserveLive = Layer.scoped(
  DiskReserve,
  Effect.gen(function*() {
    const { dataDir, databaseUrl, diskReserveBytes } = yield* AppConfig
    const reserve = makeDiskReserve(dataDir, diskReserveBytes)
    if (Option.isSome(databaseUrl) || diskReserveBytes === 0) {
      yield* reserve.remove
      return none
    }
    yield* Effect.promise(() => makeDirectories(dataDir).catch(() => undefined)) // the database's start says why if not
    yield* reserve.atStart
    yield* Effect.forkScoped(Effect.schedule(reserve.restore, Schedule.spaced(RESTORE_EVERY)))
    const scope = yield* Effect.scope
    // Interruptible even when asked for from an uninterruptible delete: a stop does not wait for its write.
    return DiskReserve.of({ release: reserve.release, restoreSoon: Effect.asVoid(Effect.forkIn(Effect.interruptible(reserve.restore), scope)) })
  })
)

/**
 * `effect`, tried once more after the reserve (if any) is released when it meets a full disk: for what frees space
 * or stops work, and may be repeated. Once more even when another call released it just before: that room serves it
 * too.
 */
export const usingReserve = (reserve: Option.Option<DiskReserve["Type"]>, what: string) =>
<A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
  Option.match(reserve, {
    onNone: () => effect,
    onSome: ({ release }) =>
      Effect.catchAllCause(effect, (cause) => (isCapacityFault(cause) ? Effect.zipRight(release(what), effect) : Effect.failCause(cause)))
  })
