/**
 * A restore gone wrong, at start: a SQLite file that is no database (a copy cut short, another file in its place),
 * or one with a damaged page (a copy taken while the server wrote), stops the start with one line saying so, not a
 * stack trace, and before the start's orphan check could set real files' bytes aside (pages that only belong to
 * nothing, the data whole, are said, not refused); a file beside an unfinished write of another program
 * that would cut it short (the `-journal` a backup copy stopped midway leaves) is not opened, so that SQLite does not
 * roll it back to an empty database the start would then call new; a journal that leaves it whole is no obstacle, nor
 * is one of another process's write under way.
 */
import { describe, expect, it } from "@effect/vitest"
import Database from "better-sqlite3"
import { Effect } from "effect"
import { randomBytes } from "node:crypto"
import { readFileSync, statSync, writeFileSync } from "node:fs"
import * as Path from "node:path"
import { freePort, runServerToExit, startServer } from "./support/ServerProcess.js"
import { scratchDir, storedByAnApp } from "./support/TestApp.js"

const errorLines = (output: string) =>
  output.split("\n").filter((l) => l.startsWith("{")).map((l) => JSON.parse(l)).filter((l) => l.level === "ERROR")

describe("a damaged SQLite database at start", () => {
  it.live("a file that is no database: one line naming it and what to do, exit 1", () =>
    Effect.scoped(Effect.flatMap(scratchDir, (dataDir) =>
      Effect.promise(async () => {
        const file = Path.join(dataDir, "batches.sqlite")
        writeFileSync(file, randomBytes(8192))
        const run = await runServerToExit({ DATA_DIR: dataDir, PORT: String(await freePort()), LOG_FORMAT: "json" }, 30_000)
        expect(run.code).toBe(1)
        expect(errorLines(run.output)).toEqual([expect.objectContaining({
          event: "server.start_failed",
          message: `Cannot use the database (SQLite at ${file}; see DATA_DIR): its file is damaged (file is not a database): ` +
            `put a whole copy in its place (README, "Backup and restore")`
        })])
      }))), { timeout: 40_000 })

  it.live("a file whose header opens but one of its pages is damaged (a copy taken while the server wrote): refused at start, left as it was", () =>
    Effect.scoped(Effect.flatMap(scratchDir, (dataDir) =>
      Effect.promise(async () => {
        const env = { DATA_DIR: dataDir, LOG_FORMAT: "json" }
        // The app's database and a stored file, then a table of the copy's own whose pages fill its middle.
        await storedByAnApp(dataDir)
        const file = Path.join(dataDir, "batches.sqlite")
        const db = new Database(file)
        db.exec("CREATE TABLE filler (x BLOB)")
        const insert = db.prepare("INSERT INTO filler VALUES (?)")
        for (let i = 0; i < 400; i++) insert.run(randomBytes(3000))
        const pageSize = Number(db.pragma("page_size", { simple: true }))
        // In rollback-journal mode, as a `VACUUM INTO` copy is: the refusal must not switch its header to WAL.
        db.pragma("journal_mode = DELETE")
        db.close()
        // One page in the middle zeroed: a b-tree page of that table, which no statement of a start reads.
        const bytes = readFileSync(file)
        const page = Math.floor(bytes.length / pageSize / 2)
        bytes.fill(0, page * pageSize, (page + 1) * pageSize)
        writeFileSync(file, bytes)

        const run = await runServerToExit({ ...env, PORT: String(await freePort()) }, 30_000)
        expect(run.code).toBe(1)
        expect(errorLines(run.output)).toEqual([expect.objectContaining({
          event: "server.start_failed",
          message: expect.stringMatching(
            new RegExp(`^Cannot use the database \\(SQLite at ${file.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}; see DATA_DIR\\): its file is damaged \\(database disk image is malformed.*\\): put a whole copy in its place`)
          )
        })])
        expect(readFileSync(file).equals(bytes)).toBe(true)
      }))), { timeout: 60_000 })

  /** Two pages past the end of the SQLite file, counted in its header's size: used by no table, index or free list. */
  const leakTwoPages = (file: string) => {
    const bytes = readFileSync(file)
    const grown = Buffer.concat([bytes, Buffer.alloc(2 * bytes.readUInt16BE(16))])
    grown.writeUInt32BE(bytes.readUInt32BE(28) + 2, 28)
    writeFileSync(file, grown)
  }

  it.live("leaked pages and indexes of another moment (a torn copy's): refused, though quick_check alone sees only the leak", () =>
    Effect.scoped(Effect.flatMap(scratchDir, (dataDir) =>
      Effect.promise(async () => {
        const env = { DATA_DIR: dataDir, LOG_FORMAT: "json" }
        await storedByAnApp(dataDir, 0)
        // Two indexes whose entries are each other's: every row missing from both, which only integrity_check reads.
        const file = Path.join(dataDir, "batches.sqlite")
        const db = new Database(file)
        db.exec("CREATE TABLE pairs (a TEXT, b TEXT); CREATE INDEX pairs_a ON pairs(a); CREATE INDEX pairs_b ON pairs(b)")
        const insert = db.prepare("INSERT INTO pairs VALUES (?, ?)")
        for (let i = 0; i < 50; i++) insert.run(`a${i}`, `b${49 - i}`)
        const roots = new Map(db.prepare("SELECT name, rootpage FROM sqlite_master WHERE name IN ('pairs_a', 'pairs_b')").all()
          .map((row) => [(row as { name: string }).name, (row as { rootpage: number }).rootpage]))
        db.unsafeMode(true)
        db.pragma("writable_schema = ON")
        db.prepare("UPDATE sqlite_master SET rootpage = ? WHERE name = 'pairs_a'").run(roots.get("pairs_b"))
        db.prepare("UPDATE sqlite_master SET rootpage = ? WHERE name = 'pairs_b'").run(roots.get("pairs_a"))
        db.close()
        leakTwoPages(file)

        const run = await runServerToExit({ ...env, PORT: String(await freePort()) }, 30_000)
        expect(run.code).toBe(1)
        expect(errorLines(run.output)).toEqual([expect.objectContaining({
          event: "server.start_failed",
          message: expect.stringContaining("its file is damaged (database disk image is malformed (SQLite's check: row 1 missing from index pairs_")
        })])
      }))), { timeout: 60_000 })

  it.live("a file with pages that belong to nothing (leaked by such a copy, its data whole) starts, and says how to give them back", () =>
    Effect.scoped(Effect.flatMap(scratchDir, (dataDir) =>
      Effect.promise(async () => {
        const env = { DATA_DIR: dataDir, LOG_FORMAT: "json" }
        const [stored] = await storedByAnApp(dataDir)
        leakTwoPages(Path.join(dataDir, "batches.sqlite"))

        const server = await startServer(env)
        try {
          const content = await fetch(`${server.url}/v1/files/${stored.id}/content`)
          expect([content.status, (await content.text()).length]).toEqual([200, stored.bytes])
          const warnings = server.stdout().split("\n").filter((l) => l.includes('"event":"database.leaked_pages"')).map((l) => JSON.parse(l))
          expect(warnings).toEqual([expect.objectContaining({
            level: "WARN",
            message: "The database file has 2 page(s) that belong to nothing (its data is whole: a copy taken while a server wrote leaves them); `sqlite3 batches.sqlite VACUUM`, the server stopped, gives the space back."
          })])
        } finally {
          await server.stop()
        }
      }))), { timeout: 60_000 })

  /**
   * A rollback journal's header as SQLite writes it (magic, records, nonce, the database's size in pages before the
   * write, sector and page sizes), padded to a sector: what `sqlite3 src.db ".backup copy.db"` killed on a busy
   * database left beside its copy (before: 0 pages).
   */
  const journalHeader = (pagesBefore: number) => {
    const header = Buffer.alloc(512)
    Buffer.from("d9d505f920a163d7", "hex").copy(header, 0)
    header.writeUInt32BE(0, 8)
    header.writeUInt32BE(0xe3daea77, 12)
    header.writeUInt32BE(pagesBefore, 16)
    header.writeUInt32BE(512, 20)
    header.writeUInt32BE(4096, 24)
    return header
  }

  it.live("a file beside another program's unfinished write that would empty it is not opened: nothing rolled back, one line", () =>
    Effect.scoped(Effect.flatMap(scratchDir, (dataDir) =>
      Effect.promise(async () => {
        const file = Path.join(dataDir, "batches.sqlite")
        const db = new Database(file)
        db.exec("CREATE TABLE t (x BLOB)")
        db.prepare("INSERT INTO t VALUES (?)").run(randomBytes(50_000))
        db.close()
        const journal = `${file}-journal`
        writeFileSync(journal, journalHeader(0))
        const before = [readFileSync(file), readFileSync(journal)]
        const run = await runServerToExit({ DATA_DIR: dataDir, PORT: String(await freePort()), LOG_FORMAT: "json" }, 30_000)
        expect(run.code).toBe(1)
        expect(errorLines(run.output)).toEqual([expect.objectContaining({
          event: "server.start_failed",
          message: `Cannot use the database (SQLite at ${file}; see DATA_DIR): ${journal} holds an unfinished write of another ` +
            `program that would cut the database from ${before[0]!.length} bytes to 0, as a copy stopped midway leaves: it ` +
            'was not opened. Put a whole copy in its place (README, "Backup and restore")'
        })])
        expect([readFileSync(file), readFileSync(journal)]).toEqual(before)
      }))), { timeout: 40_000 })

  it.live("a journal whose undoing leaves the file whole (SQLite's own switch to WAL, cut short) does not stop the start", () =>
    Effect.scoped(Effect.flatMap(scratchDir, (dataDir) =>
      Effect.promise(async () => {
        const file = Path.join(dataDir, "batches.sqlite")
        const db = new Database(file)
        db.exec("CREATE TABLE t (x BLOB)")
        db.close()
        writeFileSync(`${file}-journal`, journalHeader(readFileSync(file).length / 4096))
        const server = await startServer({ DATA_DIR: dataDir, LOG_FORMAT: "json" })
        const tables = await (await fetch(`${server.url}/v1/batches`)).json()
        expect(await server.stop()).toBe(0)
        expect(tables).toMatchObject({ object: "list", data: [] })
        expect(errorLines(server.output())).toEqual([])
      }))), { timeout: 40_000 })

  // Two nodes started at once on a new file (an API-only node beside the one that runs batches): one saw the other's
  // first write under way, a journal that empties the file, and refused to start (CI, once).
  it.live("another process's write under way, whose journal would empty the file, is waited for, not refused", () =>
    Effect.scoped(Effect.flatMap(scratchDir, (dataDir) =>
      Effect.promise(async () => {
        const file = Path.join(dataDir, "batches.sqlite")
        const writer = new Database(file)
        writer.pragma("journal_mode = DELETE")
        writer.pragma("cache_size = 1") // its pages spill into the file before the commit
        writer.exec("BEGIN IMMEDIATE; CREATE TABLE t (x BLOB)")
        for (let i = 0; i < 20; i++) writer.prepare("INSERT INTO t VALUES (?)").run(randomBytes(8192))
        const header = readFileSync(`${file}-journal`).subarray(0, 28)
        // A journal that would empty the file, as the refused start read it (the file's size by stat: a descriptor of
        // it opened and closed here would drop the writer's locks, POSIX's).
        expect(header.readUInt32BE(16) * header.readUInt32BE(24) < statSync(file).size).toBe(true)
        const starting = startServer({ DATA_DIR: dataDir, LOG_FORMAT: "json" })
        await new Promise((resolve) => setTimeout(resolve, 1000))
        writer.exec("COMMIT")
        writer.close()
        const server = await starting
        expect(await server.stop()).toBe(0)
        expect(errorLines(server.output())).toEqual([])
      }))), { timeout: 40_000 })
})
