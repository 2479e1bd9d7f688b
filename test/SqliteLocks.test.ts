/**
 * Another process holding the SQLite file's write lock (an operator's `sqlite3` session, a node beside this one, a
 * restore): the node waits for it from a timer, its event loop free meanwhile (better-sqlite3's own wait is
 * synchronous: `/v1/health` took 4–9 s), and the write goes through once the lock is let go. The other process is a
 * connection of the test's own to the same file: SQLite's locks hold between connections of one process too.
 */
import { expect, layer } from "@effect/vitest"
import Database from "better-sqlite3"
import { Effect, LogLevel } from "effect"
import * as Path from "node:path"
import { toFile } from "openai"
import { chatLine, sdk, upload } from "./support/Batches.js"
import { baseUrl, TestDataDir, testApp } from "./support/TestApp.js"

const HELD_MS = 1500

layer(testApp({}, "sqlite", { logLevel: LogLevel.Error }), { excludeTestServices: true })("a write lock another process holds on the SQLite file", (it) => {
  it.effect("the event loop keeps turning and the server answering; an upload and a delete wait for the lock, then are done", () =>
    Effect.gen(function*() {
      const { path } = yield* TestDataDir
      const url = yield* baseUrl
      const openai = sdk(url)
      const before = yield* upload(openai, [chatLine("a", "hello")], "before.jsonl")
      const other = new Database(Path.join(path, "batches.sqlite"))
      const outcome = yield* Effect.promise(async () => {
        other.exec("BEGIN IMMEDIATE")
        let released = false
        let ticks = 0
        const timer = setInterval(() => ticks++, 20)
        const uploading = openai.files.create({ file: await toFile(Buffer.from(`${chatLine("b", "hi")}\n`), "during.jsonl"), purpose: "batch" })
          .then((file) => ({ file, whileHeld: !released }), (error) => ({ error: String(error), whileHeld: !released }))
        // A delete is a transaction: its begin waits for the lock too.
        const deleting = openai.files.delete(before.id).then((d) => ({ deleted: d.deleted, whileHeld: !released }))
        const health = fetch(`${url}/v1/health`).then((res) => ({ status: res.status, whileHeld: !released }))
        // Readiness asks the database: the upload's wait for the lock leaves it the connection meanwhile.
        await new Promise((resolve) => setTimeout(resolve, 300))
        const ready = fetch(`${url}/v1/ready`).then((res) => ({ status: res.status, whileHeld: !released }))
        await new Promise((resolve) => setTimeout(resolve, HELD_MS))
        const ticksWhileHeld = ticks
        other.exec("COMMIT")
        released = true
        const result = { uploaded: await uploading, deleted: await deleting, health: await health, ready: await ready, ticksWhileHeld }
        clearInterval(timer)
        return result
      }).pipe(Effect.ensuring(Effect.sync(() => other.close())))
      // Blocked, the loop turned 0–1 times in 1.5 s, and the upload failed (503) after SQLite's 5 s.
      expect(outcome.ticksWhileHeld).toBeGreaterThan(HELD_MS / 20 / 3)
      expect(outcome.health).toEqual({ status: 200, whileHeld: true })
      expect(outcome.ready).toEqual({ status: 200, whileHeld: true })
      expect(outcome.uploaded).toMatchObject({ file: { object: "file", filename: "during.jsonl" }, whileHeld: false })
      expect(outcome.deleted).toEqual({ deleted: true, whileHeld: false })
      const listed = yield* Effect.promise(() => openai.files.list())
      expect(listed.data.map((f) => f.filename)).toEqual(["during.jsonl"])
      expect(before.status).toBe("processed")
    }), 30_000)
})
