/**
 * Projects hold across nodes: two server processes on one PostgreSQL schema, with the same keys; what a project
 * creates through one node, the other project cannot see through either, and an operator key sees it all.
 */
import { expect, it } from "@effect/vitest"
import { Context, Effect, Layer, Option, Redacted } from "effect"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import * as Path from "node:path"
import OpenAI from "openai"
import { startSimulator } from "../scripts/simulator.js"
import { chatLine, terminal, waitFor } from "./support/Batches.js"
import { startServer } from "./support/ServerProcess.js"
import { TestDatabase } from "./support/TestApp.js"

const client = (url: string, apiKey: string) => new OpenAI({ baseURL: `${url}/v1`, apiKey, maxRetries: 0 })

it.live("two nodes on PostgreSQL: each project sees only its own files and batches on both nodes; the admin sees all", () =>
  Effect.gen(function*() {
    const sim = yield* Effect.acquireRelease(Effect.promise(() => startSimulator()), (s) => Effect.promise(() => s.close()))
    const database = Context.get(yield* Layer.build(TestDatabase.layer("postgres")), TestDatabase)
    const node = (name: string) =>
      Effect.acquireRelease(
        Effect.gen(function*() {
          const dataDir = mkdtempSync(Path.join(tmpdir(), "projects-node-"))
          const server = yield* Effect.promise(() =>
            startServer({
              DATA_DIR: dataDir,
              NODE_ID: name,
              INFERENCE_BASE_URL: sim.url,
              API_KEYS: "key-a:projA,key-b:projB",
              ADMIN_API_KEYS: "key-admin",
              DATABASE_URL: Redacted.value(Option.getOrThrow(database.url))
            })
          )
          return { server, dataDir }
        }),
        ({ dataDir, server }) => Effect.promise(() => server.stop()).pipe(Effect.zipRight(Effect.sync(() => rmSync(dataDir, { recursive: true, force: true }))))
      )
    const [one, two] = yield* Effect.all([node("node-1"), node("node-2")], { concurrency: 2 })
    const a1 = client(one.server.url, "key-a")
    const b2 = client(two.server.url, "key-b")

    const fileA = yield* Effect.promise(() => a1.files.create({ file: new File([chatLine("a", "hi")], "a.jsonl"), purpose: "batch" }))
    const fileB = yield* Effect.promise(() => b2.files.create({ file: new File([chatLine("b", "hi")], "b.jsonl"), purpose: "batch" }))
    const batchA = yield* Effect.promise(() => a1.batches.create({ input_file_id: fileA.id, endpoint: "/v1/chat/completions", completion_window: "24h" }))
    yield* waitFor(a1, batchA.id, terminal)

    for (const url of [one.server.url, two.server.url]) {
      const a = client(url, "key-a")
      const b = client(url, "key-b")
      const filesOfA = yield* Effect.promise(async () => (await a.files.list()).data.map((f) => f.id))
      expect(filesOfA).toContain(fileA.id)
      expect(filesOfA).not.toContain(fileB.id)
      const filesOfB = yield* Effect.promise(async () => (await b.files.list()).data.map((f) => f.id))
      expect(filesOfB).toEqual([fileB.id])
      expect((yield* Effect.promise(async () => (await b.batches.list()).data))).toEqual([])
      const hidden = yield* Effect.promise(() => b.batches.retrieve(batchA.id).then(() => 200, (e) => e.status))
      expect(hidden).toBe(404)
      expect(yield* Effect.promise(() => b.files.retrieve(fileA.id).then(() => 200, (e) => e.status))).toBe(404)
      const admin = client(url, "key-admin")
      const all = yield* Effect.promise(async () => (await admin.files.list()).data.map((f) => f.id))
      expect(all).toEqual(expect.arrayContaining([fileA.id, fileB.id]))
    }
  }).pipe(Effect.scoped), 60_000)
