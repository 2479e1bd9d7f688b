/**
 * The reads clients poll send their objects without the endpoint's encoder (`http/StoredResponse.ts`): their bytes
 * must be exactly what the encoder writes, or an SDK would see a changed shape.
 */
import { describe, expect, it } from "@effect/vitest"
import * as HttpServerRequest from "@effect/platform/HttpServerRequest"
import { Duration, Effect, Exit, Schema, Scope } from "effect"
import { Batch, BatchList } from "../src/domain/Batches.js"
import { FileList, FileObject } from "../src/domain/Files.js"
import { LIST_PAGE_BYTES, listPage, trusted } from "../src/domain/List.js"
import { Budget } from "../src/http/holding.js"
import { listAnswer, type StoredPage, storedJson, storedPageBytes } from "../src/http/StoredResponse.js"

const batch = (id: string, full: boolean) =>
  new Batch({
    id: id as Batch["id"],
    object: "batch",
    endpoint: "/v1/chat/completions",
    model: full ? "m" : null,
    errors: full ? { object: "list", data: [{ code: "invalid_json", message: "Line 3 is not JSON.", param: null, line: 3 }] } : null,
    input_file_id: "file-in" as Batch["input_file_id"],
    completion_window: "24h",
    status: full ? "completed" : "validating",
    output_file_id: full ? "file-out" as Batch["input_file_id"] : null,
    error_file_id: null,
    created_at: 1_700_000_000,
    in_progress_at: full ? 1_700_000_001 : null,
    expires_at: 1_700_086_400,
    finalizing_at: full ? 1_700_000_002 : null,
    completed_at: full ? 1_700_000_003 : null,
    failed_at: null,
    expired_at: null,
    cancelling_at: null,
    cancelled_at: null,
    request_counts: { total: 3, completed: 2, failed: 1 },
    usage: {
      input_tokens: 10,
      input_tokens_details: { cached_tokens: 4 },
      output_tokens: 5,
      output_tokens_details: { reasoning_tokens: 1 },
      total_tokens: 15
    },
    metadata: full ? { team: "a", "k\"ey": "v\n" } : null
  }, trusted)

const file = (id: string) =>
  new FileObject({
    id: id as FileObject["id"],
    object: "file",
    bytes: 12,
    created_at: 1_700_000_000,
    expires_at: null,
    filename: "in.jsonl",
    purpose: "batch",
    status: "processed",
    status_details: null
  }, trusted)

describe("stored objects sent as they are", () => {
  it("a batch, a batch list, a file and a file list give the encoder's bytes", () => {
    const cases: ReadonlyArray<readonly [unknown, Schema.Schema<any, any>]> = [
      [batch("batch_a", true), Batch],
      [batch("batch_b", false), Batch],
      [new BatchList(listPage([batch("batch_a", true), batch("batch_b", false)], true), trusted), BatchList],
      [file("file-a"), FileObject],
      [new FileList(listPage([file("file-a"), file("file-b")], false), trusted), FileList],
      [new FileList(listPage([], false), trusted), FileList]
    ]
    for (const [value, schema] of cases) {
      expect(JSON.stringify(value)).toBe(JSON.stringify(Schema.encodeSync(schema)(value)))
    }
  })

  it("a source's JSON is written once: a poll repeated before any commit gets the same bytes (the store gave the same object)", () => {
    const page = { data: [file("file-a")], hasMore: false }
    const first = storedPageBytes(page)
    expect(storedPageBytes(page)).toBe(first)
    expect(new TextDecoder().decode(first)).toBe(JSON.stringify(new FileList(listPage(page.data, page.hasMore), trusted)))
    const one = file("file-b")
    const response = storedJson(one)
    const bytes = (r: typeof response) => (r.body as { readonly body: Uint8Array }).body
    expect([response.body._tag, response.body.contentType]).toEqual(["Uint8Array", "application/json"])
    expect(bytes(storedJson(one))).toBe(bytes(response))
    expect(new TextDecoder().decode(bytes(response))).toBe(JSON.stringify(one))
  })

  it("a list page is the list class's encoding, ended before LIST_PAGE_BYTES with has_more (one object at least)", () => {
    const decode = (page: Parameters<typeof storedPageBytes>[0]) => new TextDecoder().decode(storedPageBytes(page))
    const batches = [batch("batch_a", true), batch("batch_b", false)]
    for (const hasMore of [false, true]) {
      expect(decode({ data: batches, hasMore })).toBe(JSON.stringify(Schema.encodeSync(BatchList)(new BatchList(listPage(batches, hasMore), trusted))))
    }
    expect(decode({ data: [], hasMore: false })).toBe(JSON.stringify(new FileList(listPage([], false), trusted)))
    // Objects of ~300 KB: three fit, the fourth would pass the bound.
    const large = Array.from({ length: 6 }, (_, i) => Object.assign(batch(`batch_${i}`, true), { metadata: { pad: "x".repeat(300 * 1024) } }))
    const cut = JSON.parse(decode({ data: large, hasMore: false }))
    expect(cut.data.map((b: { id: string }) => b.id)).toEqual(["batch_0", "batch_1", "batch_2"])
    expect([cut.first_id, cut.last_id, cut.has_more]).toEqual(["batch_0", "batch_2", true])
    expect(storedPageBytes({ data: large, hasMore: false }).length).toBeLessThanOrEqual(LIST_PAGE_BYTES)
    // One object larger than the bound is still sent, alone.
    const huge = [Object.assign(batch("batch_h", true), { metadata: { pad: "x".repeat(LIST_PAGE_BYTES) } }), batch("batch_z", false)]
    expect(JSON.parse(decode({ data: huge, hasMore: false }))).toMatchObject({ first_id: "batch_h", last_id: "batch_h", has_more: true })
  })

  it.scoped("a page over a piece holds one of its list's pages until answered: one more is a 503, a project past its share a 429", () =>
    Effect.gen(function*() {
      const large = { data: Array.from({ length: 2 }, (_, i) => Object.assign(batch(`batch_${i}`, true), { metadata: { pad: "x".repeat(40 * 1024) } })), hasMore: false }
      const small = { data: [batch("batch_s", false)], hasMore: false }
      const pages = new Budget(1)
      const answer = (page: StoredPage, holder?: { project: string; enforce: boolean }) =>
        listAnswer(pages, Duration.seconds(30), Effect.succeed(holder))(page).pipe(
          Effect.provideService(HttpServerRequest.HttpServerRequest, HttpServerRequest.fromWeb(new Request("http://localhost/v1/batches")))
        )
      const scope = yield* Scope.make()
      const first = yield* Scope.extend(answer(large), scope)
      expect([first.status, first.body._tag]).toEqual([200, "Stream"])
      expect((yield* answer(large)).status).toBe(503) // held until the first has left
      expect((yield* answer(small)).status).toBe(200) // a small page is sent at once, holding nothing
      yield* Scope.close(scope, Exit.void)
      expect((yield* answer(large)).status).toBe(200)
      const shared = new Budget(4)
      const byProject = (holder: { project: string; enforce: boolean }) =>
        listAnswer(shared, Duration.seconds(30), Effect.succeed(holder))(large).pipe(
          Effect.provideService(HttpServerRequest.HttpServerRequest, HttpServerRequest.fromWeb(new Request("http://localhost/v1/batches")))
        )
      const a = { project: "a", enforce: true }
      expect((yield* byProject(a)).status).toBe(200)
      expect((yield* byProject(a)).status).toBe(200)
      expect((yield* byProject(a)).status).toBe(429) // half of the four
    }))
})
