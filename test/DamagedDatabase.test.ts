/**
 * A restore gone wrong, at start: a SQLite file that is no database (a copy cut short, another file in its place)
 * stops the start with one line saying so, not a stack trace; a file beside an unfinished write of another program
 * (the `-journal` a backup copy stopped midway leaves) is not opened, so that SQLite does not roll it back to an empty
 * database the start would then call new.
 */
import { describe, expect, it } from "@effect/vitest"
import Database from "better-sqlite3"
import { Effect } from "effect"
import { randomBytes } from "node:crypto"
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import * as Path from "node:path"
import { freePort, runServerToExit } from "./support/ServerProcess.js"

const errorLines = (output: string) =>
  output.split("\n").filter((l) => l.startsWith("{")).map((l) => JSON.parse(l)).filter((l) => l.level === "ERROR")

describe("a damaged SQLite database at start", () => {
  it.live("a file that is no database: one line naming it and what to do, exit 1", () =>
    Effect.promise(async () => {
      const dataDir = mkdtempSync(Path.join(tmpdir(), "damaged-"))
      try {
        const file = Path.join(dataDir, "batches.sqlite")
        writeFileSync(file, randomBytes(8192))
        const run = await runServerToExit({ DATA_DIR: dataDir, PORT: String(await freePort()), LOG_FORMAT: "json" }, 30_000)
        expect(run.code).toBe(1)
        expect(errorLines(run.output)).toEqual([expect.objectContaining({
          event: "server.start_failed",
          message: `Cannot use the database (SQLite at ${file}; see DATA_DIR): its file is damaged (file is not a database): ` +
            `put a whole copy in its place (README, "Backup and restore")`
        })])
      } finally {
        rmSync(dataDir, { recursive: true, force: true })
      }
    }), { timeout: 40_000 })

  it.live("a file with another program's unfinished write beside it is not opened: nothing rolled back, one line", () =>
    Effect.promise(async () => {
      const dataDir = mkdtempSync(Path.join(tmpdir(), "hot-journal-"))
      try {
        const file = Path.join(dataDir, "batches.sqlite")
        const db = new Database(file)
        db.exec("CREATE TABLE t (x BLOB)")
        db.prepare("INSERT INTO t VALUES (?)").run(randomBytes(50_000))
        db.close()
        const journal = `${file}-journal`
        writeFileSync(journal, randomBytes(4096))
        const before = [readFileSync(file), readFileSync(journal)]
        const run = await runServerToExit({ DATA_DIR: dataDir, PORT: String(await freePort()), LOG_FORMAT: "json" }, 30_000)
        expect(run.code).toBe(1)
        expect(errorLines(run.output)).toEqual([expect.objectContaining({
          event: "server.start_failed",
          message: `Cannot use the database (SQLite at ${file}; see DATA_DIR): ${journal} holds an unfinished write of another ` +
            "program (4096 bytes; this server writes a -wal, never a -journal), as a copy stopped midway leaves: opening " +
            "the database would roll it back, most often to an empty one. It was not opened: put a whole copy in its " +
            'place (README, "Backup and restore")'
        })])
        expect([readFileSync(file), readFileSync(journal)]).toEqual(before)
      } finally {
        rmSync(dataDir, { recursive: true, force: true })
      }
    }), { timeout: 40_000 })
})
