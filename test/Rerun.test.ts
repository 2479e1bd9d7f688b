/**
 * Rerunning what did not succeed (an extension): `POST /v1/batches/{id}/retry`, through the official `openai`
 * client's `post`. The rerun holds exactly the original lines of the requests that failed, expired or were cancelled
 * (`only` picks which), byte for byte, in a new listed input file; its metadata names the original (`retry_of`); it
 * runs like any batch. 409 (not retried by the SDKs) when the batch is not finished, nothing ran or nothing needs a
 * rerun; 404 for another project's batch. On SQLite and PostgreSQL.
 */
import { describe, expect, layer } from "@effect/vitest"
import { Duration, Effect, Layer, Stream } from "effect"
import OpenAI from "openai"
import type { Batch } from "openai/resources/batches"
import { AuthTest } from "../src/auth/Auth.js"
import { BatchStore, BatchStoreLive } from "../src/batches/BatchStore.js"
import { make as makeRerun, Rerun, RerunLive } from "../src/batches/Rerun.js"
import { BatchId, BatchRequestId, fileId } from "../src/domain/Ids.js"
import { FileStore, FileStoreLive } from "../src/files/FileStore.js"
import { StorageLive } from "../src/Layers.js"
import { BlobGoneWhileRead } from "../src/storage/BlobStore.js"
import { chatLine, createBatch, failure, newChatBatch, readLines, responseOutcome, sdk, terminal, upload, waitFor } from "./support/Batches.js"
import {
  backends,
  baseUrl,
  configFor,
  eventually,
  storedBlobs,
  TestDatabase,
  TestDataDir,
  testAppWithUpstream,
  Upstream
} from "./support/TestApp.js"

const settings = {
  inferenceRetryBaseDelay: Duration.millis(10),
  inferenceMaxAttempts: 2,
  maxConcurrentBatches: 2,
  maxConcurrentRequestsPerBatch: 8
}

/** `POST /v1/batches/{id}/retry` with `body` (none when undefined). */
const postRetry = (openai: OpenAI, id: string, body?: Record<string, unknown>) =>
  openai.post<Batch>(`/batches/${id}/retry`, body === undefined ? {} : { body })
const retry = (openai: OpenAI, id: string, body?: Record<string, unknown>) => Effect.promise(() => postRetry(openai, id, body))

const fileText = (openai: OpenAI, id: string) => Effect.promise(async () => (await openai.files.content(id)).text())

/** A 409 that tells the SDKs not to retry, with `message` in OpenAI's envelope. */
const conflictOf = (openai: OpenAI, id: string, body?: Record<string, unknown>) =>
  Effect.map(failure(() => postRetry(openai, id, body)), (e) => {
    expect(e.status).toBe(409)
    expect(e.headers.get("x-should-retry")).toBe("false")
    expect(e.error).toMatchObject({ type: "invalid_request_error", param: null })
    return e.error.message as string
  })

/**
 * Input line `i`, written in one of several shapes (spacing, member order, an integer beyond 2^53, non-ASCII text),
 * so that a copy that parsed and printed it again would differ; `tail` goes into the prompt (directives).
 */
const rawLine = (i: number, tail: string) => {
  const prompt = `prompt ${i} ✓ ${tail}`
  switch (i % 3) {
    case 0:
      return chatLine(`req-${i}`, prompt)
    case 1:
      return `{ "custom_id" : "req-${i}", "url": "/v1/chat/completions", "method": "POST", "body": {"seed": 12345678901234567891, "model": "sim-model", "messages": [{"role": "user", "content": ${JSON.stringify(prompt)}}]} }`
    default:
      return `{"custom_id":"req-${i}","method":"POST","url":"/v1/chat/completions","body":{"model":"sim-model","temperature":1.50,"messages":[{"content":"${prompt.replace("✓", "\\u2713")}","role":"user"}]}}`
  }
}

for (const backend of backends) describe(`rerun (${backend})`, () => {
  layer(testAppWithUpstream(settings, {}, backend), { excludeTestServices: true })("rerun", (it) => {
    it.effect("a batch of 100 with 30 failures: the rerun holds exactly those 30 lines, byte for byte, and completes", () =>
      Effect.gen(function*() {
        const openai = sdk(yield* baseUrl)
        // 30 requests fail once with a 400 (final: not retried), then succeed: the rerun runs them all.
        const failing = (i: number) => i % 10 < 3
        const lines = Array.from({ length: 100 }, (_, i) => rawLine(i, failing(i) ? `[flaky:400x1] ${i}` : ""))
        // Blank lines shift the line numbers away from the request positions.
        const text = lines.map((l, i) => (i % 25 === 24 ? `${l}\n` : l)).join("\n") + "\n"
        const file = yield* Effect.promise(async () =>
          openai.files.create({ file: new File([text], "hundred.jsonl"), purpose: "batch", expires_after: { anchor: "created_at", seconds: 7 * 86400 } }))
        const original = yield* createBatch(openai, file.id, { metadata: { team: "search", run: "7" } })
        const done = yield* waitFor(openai, original.id, terminal)
        expect(done.status).toBe("completed")
        expect(done.request_counts).toEqual({ total: 100, completed: 70, failed: 30 })

        const rerun = yield* retry(openai, original.id)
        expect(rerun).toMatchObject({
          object: "batch",
          status: "validating",
          endpoint: "/v1/chat/completions",
          completion_window: "24h",
          metadata: { team: "search", run: "7", retry_of: original.id },
          request_counts: { total: 0, completed: 0, failed: 0 }
        })
        expect(rerun.id).not.toBe(original.id)
        expect(rerun.created_at).toBeGreaterThanOrEqual(done.created_at)
        expect(rerun.expires_at).toBe(rerun.created_at + 86400)

        // The new input file is an ordinary one: listed, downloadable, the 30 original lines exactly.
        expect(rerun.input_file_id).not.toBe(file.id)
        const input = yield* Effect.promise(() => openai.files.retrieve(rerun.input_file_id))
        expect(input).toMatchObject({ purpose: "batch", filename: `${rerun.id}_retry.jsonl` })
        // A copy of the prompts: it expires with the file it copies, not later (it was kept for good), though it
        // outlives the rerun's window (24 h: the rerun must be able to run).
        expect(Math.abs(input.expires_at! - file.expires_at!)).toBeLessThanOrEqual(1)
        const failed = lines.filter((_, i) => failing(i))
        expect(failed).toHaveLength(30)
        const rerunText = yield* fileText(openai, rerun.input_file_id)
        expect(rerunText).toBe(failed.join("\n") + "\n")
        expect(input.bytes).toBe(Buffer.byteLength(rerunText))
        const listed = yield* Effect.promise(() => openai.files.list({ purpose: "batch" }))
        expect(listed.data.map((f) => f.id)).toContain(rerun.input_file_id)

        const rerunDone = yield* waitFor(openai, rerun.id, terminal)
        expect(rerunDone.status).toBe("completed")
        expect(rerunDone.request_counts).toEqual({ total: 30, completed: 30, failed: 0 })
        expect((yield* readLines(openai, rerunDone.output_file_id)).map((l) => l.custom_id))
          .toEqual(Array.from({ length: 100 }, (_, i) => i).filter(failing).map((i) => `req-${i}`))
        // Every request of it succeeded: a rerun of the rerun has nothing to do.
        expect(yield* conflictOf(openai, rerun.id)).toBe(
          `No request of batch ${rerun.id} failed, expired or was cancelled: there is nothing to rerun.`
        )
      }))

    it.effect("a cancelled batch: `only` picks the failed or the cancelled requests, both by default, in line order", () =>
      Effect.gen(function*() {
        const openai = sdk(yield* baseUrl)
        const sim = yield* Upstream
        const kinds = ["ok", "fail", "hang", "ok", "hang", "fail", "ok", "hang"]
        const lines = kinds.map((kind, i) =>
          chatLine(`${kind}-${i}`, `only ${i} ${kind === "fail" ? "[fail:422]" : kind === "hang" ? "[hang]" : ""}`))
        const file = yield* upload(openai, lines)
        const batch = yield* createBatch(openai, file.id)
        yield* waitFor(openai, batch.id, (b) => b.request_counts!.completed + b.request_counts!.failed === 5)
        yield* eventually(() => expect(sim.stats.inFlight).toBeGreaterThanOrEqual(3))

        // Not finished yet: a 409, and nothing is created.
        expect(yield* conflictOf(openai, batch.id)).toBe(
          `Batch ${batch.id} is in_progress: only a finished batch (completed, failed, expired or cancelled) can be rerun.`
        )
        yield* Effect.promise(() => openai.batches.cancel(batch.id))
        const cancelled = yield* waitFor(openai, batch.id, terminal)
        expect(cancelled.status).toBe("cancelled")
        expect(cancelled.request_counts).toEqual({ total: 8, completed: 3, failed: 5 })

        // Each rerun's input file; the rerun is cancelled (its [hang] requests would hold the batch slots).
        const pick = (only?: ReadonlyArray<string>) =>
          Effect.gen(function*() {
            const rerun = yield* retry(openai, batch.id, only === undefined ? undefined : { only })
            yield* Effect.promise(() => openai.batches.cancel(rerun.id))
            return yield* fileText(openai, rerun.input_file_id)
          })
        const at = (...positions: Array<number>) => positions.map((i) => lines[i]).join("\n") + "\n"
        expect(yield* pick(["cancelled"])).toBe(at(2, 4, 7))
        expect(yield* pick(["error"])).toBe(at(1, 5))
        expect(yield* pick(["error", "cancelled"])).toBe(at(1, 2, 4, 5, 7))
        expect(yield* pick()).toBe(at(1, 2, 4, 5, 7))
        expect(yield* conflictOf(openai, batch.id, { only: ["expired"] })).toBe(
          `No request of batch ${batch.id} expired: there is nothing to rerun.`
        )
        const empty = yield* failure(() => postRetry(openai, batch.id, { only: [] }))
        expect([empty.status, empty.error.param]).toEqual([400, "only"])
        const unknown = yield* failure(() => postRetry(openai, batch.id, { only: ["timeout"] }))
        expect([unknown.status, unknown.error.param]).toEqual([400, "only[0]"])
        // Every value allowed, not the first alone as if it were the only one.
        expect(unknown.error.message).toBe(`Invalid value for 'only[0]': Expected one of "error", "expired", "cancelled", actual "timeout"`)
      }))

    it.effect("nothing to rerun: a batch that failed validation, whose requests all succeeded, or whose input is gone", () =>
      Effect.gen(function*() {
        const openai = sdk(yield* baseUrl)
        const invalid = yield* createBatch(openai, (yield* upload(openai, ["not json"])).id)
        yield* waitFor(openai, invalid.id, terminal)
        expect(yield* conflictOf(openai, invalid.id)).toBe(
          `Batch ${invalid.id} failed validation (its errors say why, with the lines), so none of its requests ran and ` +
            "there is nothing to rerun: fix its input and create a new batch."
        )

        const fine = yield* createBatch(openai, (yield* upload(openai, [chatLine("a", "fine")])).id)
        yield* waitFor(openai, fine.id, terminal)
        expect(yield* conflictOf(openai, fine.id)).toContain("there is nothing to rerun")

        const file = yield* upload(openai, [chatLine("a", "gone [fail:400]")])
        const gone = yield* createBatch(openai, file.id)
        yield* waitFor(openai, gone.id, terminal)
        yield* Effect.promise(() => openai.files.delete(file.id))
        expect(yield* conflictOf(openai, gone.id)).toBe(
          `Batch ${gone.id}'s input file ${file.id} no longer exists (deleted or expired): its lines cannot be rerun.`
        )
        const unknown = yield* failure(() => postRetry(openai, "batch_00000000000000000000000000000000"))
        expect([unknown.status, unknown.error.code]).toEqual([404, "not_found"])
      }))

    it.effect("metadata: 16 keys leave no room for retry_of (a 400 saying what to send); an idempotency key replays", () =>
      Effect.gen(function*() {
        const openai = sdk(yield* baseUrl)
        const full = Object.fromEntries(Array.from({ length: 16 }, (_, i) => [`k${i}`, `v${i}`]))
        const file = yield* upload(openai, [chatLine("a", "meta [fail:400]"), chatLine("b", "meta ok")])
        const batch = yield* createBatch(openai, file.id, { metadata: full })
        yield* waitFor(openai, batch.id, terminal)

        const refused = yield* failure(() => postRetry(openai, batch.id))
        expect(refused.status).toBe(400)
        expect(refused.error).toEqual({
          message: `Batch ${batch.id}'s metadata has 16 keys, the most allowed, and the rerun's adds 'retry_of': ` +
            "send 'metadata' with at most 15 keys for the rerun instead.",
          type: "invalid_request_error",
          param: "metadata",
          code: "invalid_value"
        })
        const tooMany = yield* failure(() => postRetry(openai, batch.id, { metadata: full }))
        expect([tooMany.status, tooMany.error.param]).toEqual([400, "metadata"])

        const files = Effect.map(Effect.promise(() => openai.files.list({ purpose: "batch" })), (page) => page.data.length)
        const before = yield* files
        const body = { metadata: { k0: "v0", retry_of: "replaced" }, idempotency_key: "rerun-once" }
        const first = yield* retry(openai, batch.id, body)
        expect(first.metadata).toEqual({ k0: "v0", retry_of: batch.id })
        const again = yield* retry(openai, batch.id, body)
        expect(again.id).toBe(first.id)
        expect(yield* files).toBe(before + 1) // the replay wrote no second input file
        const other = yield* failure(() => postRetry(openai, batch.id, { ...body, only: ["error"] }))
        expect([other.status, other.error.param]).toEqual([409, "idempotency_key"])
        expect(yield* fileText(openai, first.input_file_id)).toBe(chatLine("a", "meta [fail:400]") + "\n")
      }))
  })
})

layer(testAppWithUpstream({ ...settings, completionWindow: Duration.seconds(2) }), { excludeTestServices: true })("rerun of an expired batch", (it) => {
  it.effect("the expired requests are rerun in a fresh window", () =>
    Effect.gen(function*() {
      const openai = sdk(yield* baseUrl)
      const lines = [chatLine("done", "in time"), chatLine("late-1", "late [hang]"), chatLine("late-2", "late [hang] 2")]
      const batch = yield* createBatch(openai, (yield* upload(openai, lines)).id)
      const expired = yield* waitFor(openai, batch.id, terminal, 6000)
      expect(expired.status).toBe("expired")
      const rerun = yield* retry(openai, batch.id, { only: ["expired"] })
      expect(rerun.expires_at).toBe(rerun.created_at + 2)
      expect(rerun.created_at).toBeGreaterThanOrEqual(expired.expired_at!)
      expect(yield* fileText(openai, rerun.input_file_id)).toBe(`${lines[1]}\n${lines[2]}\n`)
      expect(yield* conflictOf(openai, batch.id, { only: ["error", "cancelled"] })).toContain("nothing to rerun")
    }))
})

const KEYS = { a: "sk-rerun-a-5e1c", b: "sk-rerun-b-90d2" }
layer(
  testAppWithUpstream(settings, {}, "sqlite", { auth: AuthTest({ apiKeys: [`${KEYS.a}:projA`, `${KEYS.b}:projB`] }) }),
  { excludeTestServices: true }
)("rerun across projects", (it) => {
  it.effect("another project's batch is a 404 exactly like an unknown one; the rerun is its caller's project's", () =>
    Effect.gen(function*() {
      const base = yield* baseUrl
      const client = (apiKey: string) => new OpenAI({ baseURL: `${base}/v1`, apiKey, maxRetries: 0 })
      const a = client(KEYS.a)
      const b = client(KEYS.b)
      const batch = yield* createBatch(a, (yield* upload(a, [chatLine("x", "projects [fail:400]")])).id)
      yield* waitFor(a, batch.id, terminal)

      const unknownId = "batch_00000000000000000000000000000000"
      const other = yield* failure(() => postRetry(b, batch.id))
      const unknown = yield* failure(() => postRetry(b, unknownId))
      expect(other.status).toBe(404)
      expect(JSON.stringify(other.error)).toBe(JSON.stringify(unknown.error).replaceAll(unknownId, batch.id))

      const rerun = yield* retry(a, batch.id)
      expect((yield* Effect.promise(() => a.batches.retrieve(rerun.id))).id).toBe(rerun.id)
      expect((yield* Effect.promise(() => a.files.retrieve(rerun.input_file_id))).id).toBe(rerun.input_file_id)
      expect((yield* failure(() => b.batches.retrieve(rerun.id))).status).toBe(404)
      expect((yield* failure(() => b.files.retrieve(rerun.input_file_id))).status).toBe(404)
    }))
})

/** The `Rerun` service on its own, over the stores it reads. */
const rerunServices = (backend: "sqlite" | "postgres") =>
  Layer.merge(BatchStoreLive, RerunLive.pipe(Layer.provideMerge(FileStoreLive))).pipe(
    Layer.provideMerge(StorageLive),
    Layer.provideMerge(configFor()),
    Layer.provideMerge(Layer.merge(TestDataDir.Default, TestDatabase.layer(backend)))
  )

for (const backend of backends) {
  layer(rerunServices(backend), { excludeTestServices: true })(`Rerun service (${backend})`, (it) => {
    it.effect("a batch failed by a fault: its requests without an outcome are errors too; pages of line numbers join up", () =>
      Effect.gen(function*() {
        const files = yield* FileStore
        const store = yield* BatchStore
        const rerun = yield* Rerun
        const count = 2500
        const lines = Array.from({ length: count }, (_, i) => chatLine(`c${i + 1}`, `store ${i + 1}`))
        const input = yield* files.create(
          { filename: "in.jsonl", purpose: "batch", project: "default" },
          Stream.make(new TextEncoder().encode(lines.join("\n") + "\n"))
        )
        const id = BatchId.make(`batch_rerun_${backend}_${Date.now()}`)
        yield* store.create(newChatBatch(id, input.id))
        yield* store.insertRequests(id, lines.map((_, i) => ({
          line: i + 1,
          customId: `c${i + 1}`,
          resultId: BatchRequestId.make(`r${i + 1}`),
          body: "{}"
        })))
        expect(yield* store.startRunning(id, { model: "sim-model", total: count }, [{ firstLine: 1, lastLine: count }])).toBe(true)
        // Every third request succeeded, line 2 got a 500; the rest had no outcome when a fault failed the batch.
        const outcome = (line: number, statusCode: number) => responseOutcome(line, { statusCode })
        const succeeded = lines.map((_, i) => i + 1).filter((line) => line % 3 === 0)
        yield* store.recordOutcomes(id, [outcome(2, 500), ...succeeded.map((line) => outcome(line, 200))])
        yield* store.transition(id, "fault", { errors: [{ code: "internal_error", message: "x", param: null, line: null }] })
        const record = yield* store.get(id, "all")
        expect(record.batch.status).toBe("failed")

        const rerunLines = lines.filter((_, i) => (i + 1) % 3 !== 0)
        expect(rerunLines.length).toBeGreaterThan(1000) // more than a page of line numbers
        expect(yield* rerun.count(id, ["error"])).toBe(rerunLines.length)
        expect(yield* rerun.count(id, ["expired", "cancelled"])).toBe(0)
        const target = { id: fileId(), filename: "rerun.jsonl", project: "default", maxBytes: Infinity }
        const file = yield* rerun.writeInput(record, ["error"], target)
        const text = yield* files.content(file.id, "all").pipe(
          Effect.flatMap(({ stream }) => Stream.runCollect(Stream.decodeText(stream))),
          Effect.map((chunks) => [...chunks].join(""))
        )
        expect(text).toBe(rerunLines.join("\n") + "\n")
        expect(file).toMatchObject({ purpose: "batch", filename: "rerun.jsonl", bytes: Buffer.byteLength(text) })

        // Larger than the room left: refused, and no bytes stay behind.
        const before = yield* storedBlobs
        const tooLarge = yield* Effect.flip(rerun.writeInput(record, ["error"], { ...target, id: fileId(), maxBytes: 10_000 }))
        expect(tooLarge._tag).toBe("InputTooLarge")
        expect(yield* storedBlobs).toEqual(before)

        // Its input deleted as the copy read it (its bytes gone mid-read): gone, not a shorter copy.
        const deletedMidRead = FileStore.of({
          ...files,
          content: (fileId, visibility) =>
            Effect.map(files.content(fileId, visibility), (content) => ({
              ...content,
              stream: Stream.concat(Stream.take(content.stream, 1), Stream.die(new BlobGoneWhileRead(fileId)))
            }))
        })
        const reading = yield* makeRerun.pipe(Effect.provideService(FileStore, deletedMidRead))
        const gone = yield* Effect.flip(reading.writeInput(record, ["error"], { ...target, id: fileId() }))
        expect(gone._tag).toBe("InputFileGone")
        expect(yield* storedBlobs).toEqual(before)
      }))
  })
}
