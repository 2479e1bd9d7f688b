/**
 * Ids drawn from the pooled random source: the right shape, and never the same twice; their brands: distinct types,
 * plain strings on the wire.
 */
import { describe, expect, it } from "@effect/vitest"
import { Schema } from "effect"
import { batchId, batchRequestId, FileId, fileId, requestId, StorableFileId } from "../src/domain/Ids.js"

describe("ids", () => {
  it("have OpenAI's shapes and do not repeat across many pool refills", () => {
    const seen = new Set<string>()
    for (let i = 0; i < 5000; i++) {
      const ids = [batchRequestId(), fileId(), batchId(), requestId()]
      expect(ids[0]).toMatch(/^batch_req_[0-9a-f]{32}$/)
      expect(ids[1]).toMatch(/^file-[0-9A-Za-z]{24}$/)
      expect(ids[2]).toMatch(/^batch_[0-9a-f]{32}$/)
      expect(ids[3]).toMatch(/^req_[0-9a-f]{32}$/)
      for (const id of ids) seen.add(id)
    }
    expect(seen.size).toBe(20_000)
  })

  it("are distinct types, and plain strings when decoded or encoded", () => {
    const takesFileId = (id: FileId) => id
    // @ts-expect-error a batch id is not a file id
    takesFileId(batchId())
    expect(takesFileId(fileId())).toMatch(/^file-/)
    expect(Schema.decodeUnknownSync(StorableFileId)("batch_x")).toBe("batch_x") // an unknown id is still an id
    expect(() => Schema.decodeUnknownSync(StorableFileId)("a\u0000b")).toThrow("must not contain a NUL character")
    expect(Schema.encodeSync(FileId)(FileId.make("file-x"))).toBe("file-x")
  })
})
