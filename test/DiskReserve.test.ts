/**
 * The space kept back on SQLite's disk (`storage/DiskReserve.ts`): on a disk full to the last byte, where SQLite
 * refuses even a `DELETE`, a file delete and a batch cancel still go through, and the reserve comes back once there
 * is room. The end-to-end test fills a real file system: a small tmpfs mounted for it (the tests run as root, as CI
 * does; without root it fails saying so).
 */
import { SqlError } from "@effect/sql/SqlError"
import { describe, expect, it, layer } from "@effect/vitest"
import { Effect, Exit, Layer, Option } from "effect"
import { execFileSync } from "node:child_process"
import { closeSync, existsSync, mkdtempSync, openSync, rmSync, statSync, utimesSync, writeFileSync, writeSync } from "node:fs"
import { tmpdir } from "node:os"
import * as Path from "node:path"
import { AppConfig } from "../src/Config.js"
import { DiskReserveLive, makeDiskReserve, RESERVE_NAME, usingReserve } from "../src/storage/DiskReserve.js"
import { chatLine, createBatch, sdk, upload, waitFor } from "./support/Batches.js"
import { baseUrl, eventuallyEffect, testAppWithUpstream } from "./support/TestApp.js"

const capacityFault = () => new SqlError({ cause: Object.assign(new Error("database or disk is full"), { code: "SQLITE_FULL" }) })

describe("the disk reserve", () => {
  it.effect("made when there is room for it twice over, released on a full disk only, made again; released at a start short of room", () =>
    Effect.gen(function*() {
      const dir = mkdtempSync(Path.join(tmpdir(), "reserve-"))
      const path = Path.join(dir, RESERVE_NAME)
      let free = 1000
      const reserve = makeDiskReserve(dir, 400, Effect.sync(() => free))
      yield* reserve.atStart
      expect(statSync(path).size).toBe(400)
      // A full error with room left (a quota, SQLite's page limit): nothing the reserve can help.
      expect(yield* reserve.release("a test")).toBe(false)
      expect(existsSync(path)).toBe(true)
      free = 100
      expect(yield* reserve.release("a test")).toBe(true)
      expect(existsSync(path)).toBe(false)
      expect(yield* reserve.release("a test")).toBe(false)
      free = 700 // not twice its size: not made again
      yield* reserve.restore
      expect(existsSync(path)).toBe(false)
      free = 800
      yield* reserve.restore
      expect(statSync(path).size).toBe(400)
      // Another size configured: made again at that size at start, not later (a node configured otherwise on the
      // same DATA_DIR would remake it each time).
      free = 1000
      yield* makeDiskReserve(dir, 300, Effect.sync(() => free)).restore
      expect(statSync(path).size).toBe(400)
      yield* makeDiskReserve(dir, 300, Effect.sync(() => free)).atStart
      expect(statSync(path).size).toBe(300)
      free = 200 // a start with less free than the reserve: it goes, so the start can write
      yield* makeDiskReserve(dir, 300, Effect.sync(() => free)).atStart
      expect(existsSync(path)).toBe(false)
      rmSync(dir, { recursive: true })
    }))

  it.effect("its live layer: a half-written one a killed run left goes at start; none, and an earlier one removed, when off", () =>
    Effect.gen(function*() {
      const dir = mkdtempSync(Path.join(tmpdir(), "reserve-"))
      const stale = Path.join(dir, `${RESERVE_NAME}.123.456.tmp`)
      writeFileSync(stale, "half")
      utimesSync(stale, new Date(Date.now() - 120_000), new Date(Date.now() - 120_000))
      const fresh = Path.join(dir, `${RESERVE_NAME}.124.457.tmp`) // another node's, being written
      writeFileSync(fresh, "half")
      yield* Effect.scoped(Layer.build(DiskReserveLive.pipe(Layer.provide(AppConfig.layerWith({ dataDir: dir, diskReserveBytes: 4096 })))))
      expect(statSync(Path.join(dir, RESERVE_NAME)).size).toBe(4096)
      expect([existsSync(stale), existsSync(fresh)]).toEqual([false, true])
      yield* Effect.scoped(Layer.build(DiskReserveLive.pipe(Layer.provide(AppConfig.layerWith({ dataDir: dir, diskReserveBytes: 0 })))))
      expect(existsSync(Path.join(dir, RESERVE_NAME))).toBe(false)
      rmSync(dir, { recursive: true })
    }))

  it.effect("usingReserve tries a full-disk failure once more after a release, and nothing else", () =>
    Effect.gen(function*() {
      let released = 0
      const reserve = Option.some({ release: () => Effect.sync(() => ++released === 1), restoreSoon: Effect.void })
      let calls = 0
      const fullOnce = Effect.suspend(() => (++calls === 1 ? Effect.fail(capacityFault()) : Effect.succeed("done")))
      expect(yield* usingReserve(reserve, "a test")(fullOnce)).toBe("done")
      expect([calls, released]).toEqual([2, 1])
      // Released by another call just before: once more all the same; a disk still full fails it.
      calls = 0
      const full = Effect.suspend(() => (++calls, Effect.fail(capacityFault())))
      expect(Exit.isFailure(yield* Effect.exit(usingReserve(reserve, "a test")(full)))).toBe(true)
      expect([calls, released]).toEqual([2, 2])
      // Another fault is not tried again, nor anything without a reserve.
      calls = 0
      const other = Effect.suspend(() => (++calls, Effect.fail(new Error("other"))))
      expect(Exit.isFailure(yield* Effect.exit(usingReserve(reserve, "a test")(other)))).toBe(true)
      expect(calls).toBe(1)
      calls = 0
      expect(Exit.isFailure(yield* Effect.exit(usingReserve(Option.none(), "a test")(full)))).toBe(true)
      expect(calls).toBe(1)
    }))
})

/** A tmpfs of `size` mounted on a new directory, unmounted when the test file ends. */
const mountTmpfs = (size: string) => {
  if (process.getuid?.() !== 0) throw new Error("test/DiskReserve.test.ts mounts a tmpfs: run the tests as root (CI does)")
  const dir = mkdtempSync(Path.join(tmpdir(), "full-disk-"))
  execFileSync("mount", ["-t", "tmpfs", "-o", `size=${size}`, "tmpfs", dir])
  return dir
}

/** Writes a file in `dir` until the disk is full to the last byte. */
const fillUp = (dir: string) => {
  const fd = openSync(Path.join(dir, "filler"), "w")
  const chunk = Buffer.alloc(64 * 1024, 1)
  try {
    for (let size = chunk.length; size >= 1; size = Math.floor(size / 2)) {
      try {
        for (;;) writeSync(fd, chunk, 0, size)
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== "ENOSPC") throw e
      }
    }
  } finally {
    closeSync(fd)
  }
}

const disk = mountTmpfs("12m")
const app = testAppWithUpstream({ dataDir: disk, diskReserveBytes: 1024 * 1024, maxConcurrentBatches: 2 }).pipe(
  Layer.merge(Layer.scopedDiscard(Effect.addFinalizer(() =>
    Effect.sync(() => {
      execFileSync("umount", ["-l", disk])
      rmSync(disk, { recursive: true, force: true })
    })
  )))
)

layer(app, { excludeTestServices: true, timeout: 60_000 })("a disk full to the last byte, on SQLite", (it) => {
  it.effect("a file delete and a batch cancel still go through, and the reserve is kept again once there is room", () =>
    Effect.gen(function*() {
      const openai = sdk(yield* baseUrl)
      const reserve = Path.join(disk, RESERVE_NAME)
      expect(statSync(reserve).size).toBe(1024 * 1024)
      const running = yield* createBatch(openai, (yield* upload(openai, [chatLine("slow", "wait [sleep:60000]")])).id)
      yield* waitFor(openai, running.id, (b) => b.status === "in_progress")
      const files = yield* Effect.forEach([1, 2], (n) => upload(openai, Array.from({ length: 500 }, (_, i) => chatLine(`f${n}-${i}`, "x".repeat(500)))))

      // Without the reserve, SQLite refused these (507): its write-ahead log had no room.
      fillUp(disk)
      const cancelled = yield* Effect.promise(() => openai.batches.cancel(running.id))
      expect(cancelled.status).toBe("cancelling")
      expect(existsSync(reserve)).toBe(false)
      // Room again: made again after the next delete (and every 10 s otherwise).
      rmSync(Path.join(disk, "filler"))
      yield* Effect.promise(() => openai.files.delete(files[0]!.id))
      yield* eventuallyEffect(Effect.sync(() => expect(existsSync(reserve) && statSync(reserve).size).toBe(1024 * 1024)), 5_000)

      fillUp(disk)
      yield* Effect.promise(() => openai.files.delete(files[1]!.id))
      expect(existsSync(reserve)).toBe(false)
      rmSync(Path.join(disk, "filler"))
      expect((yield* waitFor(openai, running.id, (b) => b.status === "cancelled")).status).toBe("cancelled")
    }))
})
