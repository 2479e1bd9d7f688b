/** Helpers for batch tests driven through the official `openai` client. */
import { Effect } from "effect"
import OpenAI, { toFile } from "openai"
import type { Batch } from "openai/resources/batches"
import { BatchStore, type BatchStoreShape, type NewBatch, type RequestOutcome, type RequestRow } from "../../src/batches/BatchStore.js"
import { zeroUsage } from "../../src/batches/usage.js"
import { BatchId, BatchRequestId, FileId } from "../../src/domain/Ids.js"

export const sdk = (baseUrl: string) => new OpenAI({ baseURL: `${baseUrl}/v1`, apiKey: "sk-test", maxRetries: 0 })

/** One input line for a chat completion whose prompt is `prompt` (simulator directives go in there). */
export const chatLine = (customId: string, prompt: string, model = "sim-model") =>
  JSON.stringify({
    custom_id: customId,
    method: "POST",
    url: "/v1/chat/completions",
    body: { model, messages: [{ role: "user", content: prompt }] }
  })

export const upload = (openai: OpenAI, lines: ReadonlyArray<string>, name = "input.jsonl") =>
  Effect.promise(async () =>
    openai.files.create({ file: await toFile(Buffer.from(lines.join("\n") + "\n"), name), purpose: "batch" })
  )

export const createBatch = (openai: OpenAI, fileId: string, extra: Partial<OpenAI.BatchCreateParams> = {}) =>
  Effect.promise(() =>
    openai.batches.create({ input_file_id: fileId, endpoint: "/v1/chat/completions", completion_window: "24h", ...extra })
  )

/**
 * Polls until the batch satisfies `done` (real time), every 25 ms at first and less often as the wait goes on, to
 * 200 ms: polled at 40 a second, the waits of a whole run made a large part of its CPU time.
 */
export const waitFor = (openai: OpenAI, id: string, done: (b: Batch) => boolean, timeoutMs = 20_000) =>
  Effect.promise(async () => {
    const deadline = Date.now() + timeoutMs
    for (let pause = 25; ; pause = Math.min(pause * 1.5, 200)) {
      const batch = await openai.batches.retrieve(id)
      if (done(batch)) return batch
      if (Date.now() > deadline) throw new Error(`batch ${id} stuck in ${batch.status}: ${JSON.stringify(batch)}`)
      await new Promise((r) => setTimeout(r, pause))
    }
  })

export const terminal = (b: Batch) => ["completed", "failed", "expired", "cancelled"].includes(b.status)

/** The lines of a result file, parsed; none when the id is null. */
export const readLines = (openai: OpenAI, fileId: string | null | undefined) =>
  Effect.promise(async (): Promise<Array<any>> => {
    if (!fileId) return []
    const text = await (await openai.files.content(fileId)).text()
    return text.split("\n").filter((l) => l !== "").map((l) => JSON.parse(l))
  })

/** Resolves with the SDK error a call rejects with. */
export const failure = (call: () => Promise<unknown>) =>
  Effect.promise(() => call().then(() => { throw new Error("expected the call to fail") }, (e) => e as any))

/** A chat-completions batch `id` over `inputFileId` with every option left out, for `BatchStore.create`. */
export const newChatBatch = (id: BatchId, inputFileId: FileId): NewBatch => ({
  id,
  project: "default",
  endpoint: "/v1/chat/completions",
  inputFileId,
  completionWindow: "24h",
  expiresAfterSeconds: 86400,
  metadata: null,
  outputExpiresAfterSeconds: null,
  idempotencyKey: null,
  requestHash: null
})

/** The lines the store gives for a batch's output (`succeeded`) or error file, parsed. */
export const storedLines = (store: BatchStoreShape, id: BatchId, kind: "succeeded" | "failed", limit = 1000) =>
  Effect.map(store.resultLines(id, kind, 0, limit), (page): Array<any> =>
    new TextDecoder().decode(page.bytes).split("\n").filter((line) => line !== "").map((line) => JSON.parse(line)))

/** Request rows for lines 1…`count` (custom ids `c1`…, result ids `r1`…, empty bodies), for `BatchStore.insertRequests`. */
export const requestRows = (count: number): Array<RequestRow> =>
  Array.from({ length: count }, (_, i) => ({ line: i + 1, customId: `c${i + 1}`, resultId: BatchRequestId.make(`r${i + 1}`), body: "{}" }))

let batches = 0
/** A new batch in `validating` with `lines` request rows (the state validation leaves before `startRunning`); its id. */
export const validatingBatch = (lines: number) =>
  Effect.gen(function*() {
    const store = yield* BatchStore
    const id = BatchId.make(`batch_${process.pid}_${++batches}_${Math.random().toString(16).slice(2)}`)
    yield* store.create(newChatBatch(id, FileId.make("file-x")))
    yield* store.insertRequests(id, requestRows(lines))
    return id
  })

type ResponseOutcome = Extract<RequestOutcome, { _tag: "Response" }>

/** An answer to `line` as the runner stores it (custom id `c{line}`, result id `r{line}`): a 200 of `{}` unless `fields` say. */
export const responseOutcome = (line: number, fields: Partial<Omit<ResponseOutcome, "_tag" | "line">> = {}): RequestOutcome => ({
  _tag: "Response",
  line,
  customId: `c${line}`,
  resultId: BatchRequestId.make(`r${line}`),
  statusCode: 200,
  body: "{}",
  requestId: `req_${line}`,
  usage: zeroUsage,
  ...fields
})
