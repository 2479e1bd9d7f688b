/**
 * The assembly of a claimed upload (`Uploads.complete`): the named parts checked, then streamed, in order, into a
 * new file through `FileStore` (never whole in memory), published together with the upload's move to `completed`,
 * which only the claim's holder makes (a node whose claim another took over leaves no file behind).
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { Data, Effect, Exit, Stream } from "effect"
import { createHash } from "node:crypto"
import type { FileObject } from "../domain/Files.js"
import { AppConfig } from "../Config.js"
import { fileId, type UploadId, type UploadPartId } from "../domain/Ids.js"
import { echo } from "../domain/Text.js"
import { BlobStore } from "../storage/BlobStore.js"
import { FileStore } from "./FileStore.js"
import type { UploadRow } from "./uploadRows.js"

/** The parts a complete names do not make the upload; `param` names what is wrong. */
export class PartsMismatch extends Data.TaggedError("PartsMismatch")<{
  readonly message: string
  readonly param: "part_ids" | "md5"
}> {}

/**
 * This node's claim on the upload lapsed (it did not renew it in time) and another node took it over: the upload
 * is that node's to complete, and this node's file is not made.
 */
export class CompletionTakenOver extends Data.TaggedError("CompletionTakenOver")<{ readonly id: UploadId }> {}

/** What identifies a complete's request: its part ids, in order (stored with the claim, kept once completed). */
export const partIdsDigest = (partIds: ReadonlyArray<string>): string =>
  createHash("sha256").update(JSON.stringify(partIds)).digest("hex")

/** Assembles an upload this node claimed (`status = 'completing'`) into a File, and marks it completed. */
export const makeAssembly = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  const blobs = yield* BlobStore
  const files = yield* FileStore
  const { nodeId } = yield* AppConfig

  /** The named parts, checked: each the upload's, none twice, adding up to its bytes. */
  const namedParts = (row: UploadRow, partIds: ReadonlyArray<string>) =>
    Effect.gen(function*() {
      const stored = yield* sql<{ id: UploadPartId; bytes: number | string }>`
        SELECT id, bytes FROM upload_parts WHERE upload_id = ${row.id}`.pipe(Effect.orDie)
      const sizes = new Map(stored.map((p) => [p.id as string, Number(p.bytes)]))
      const seen = new Set<string>()
      let total = 0
      for (const partId of partIds) {
        const size = sizes.get(partId)
        if (size === undefined) {
          return yield* new PartsMismatch({ message: `Upload ${row.id} has no part '${echo(partId)}'.`, param: "part_ids" })
        }
        if (seen.has(partId)) {
          return yield* new PartsMismatch({ message: `Part '${echo(partId)}' is named more than once.`, param: "part_ids" })
        }
        seen.add(partId)
        total += size
      }
      if (total !== Number(row.bytes)) {
        return yield* new PartsMismatch({
          message: `The parts add up to ${total} bytes, but upload ${row.id} was created with bytes ${row.bytes}.`,
          param: "part_ids"
        })
      }
      return partIds as ReadonlyArray<UploadPartId>
    })

  /** Streams the parts into a new file's staging area, then publishes it and marks the upload completed, together. */
  const assemble = (row: UploadRow, partIds: ReadonlyArray<UploadPartId>, md5: string | undefined) =>
    Effect.scoped(Effect.gen(function*() {
      const writer = yield* files.openUpload
      const hash = createHash("md5")
      for (const partId of partIds) {
        yield* Stream.runForEach(blobs.read(partId), (chunk) => {
          hash.update(chunk)
          return writer.write(chunk)
        })
      }
      const staged = yield* writer.finish
      const digest = hash.digest("hex")
      if (md5 !== undefined && digest !== md5.toLowerCase()) {
        return yield* new PartsMismatch({
          message: `The MD5 of the parts (${digest}) does not match the md5 given (${echo(md5)}).`,
          param: "md5"
        })
      }
      const id = fileId()
      // One transaction, not cut short: the file is listed exactly when the upload says it is completed. Its
      // rollback does not unpublish the bytes (a rename, or a blob row rolled back to staging that nothing drops
      // any more): publishing them again, on their own, and removing them leaves nothing behind.
      return yield* Effect.gen(function*() {
        const file = yield* files.commit(staged, {
          id,
          filename: row.filename,
          purpose: row.purpose,
          project: row.project,
          expiresAfterSeconds: row.file_expires_after === null ? undefined : Number(row.file_expires_after)
        })
        const done = yield* sql`UPDATE uploads SET status = 'completed', file_id = ${file.id}, completing_owner = NULL,
          completing_until = NULL WHERE id = ${row.id} AND status = 'completing' AND completing_owner = ${nodeId} RETURNING id`
        if (done.length === 0) return yield* new CompletionTakenOver({ id: row.id })
        return file
      }).pipe(
        sql.withTransaction,
        Effect.catchTag("SqlError", Effect.die),
        Effect.onExit((exit) =>
          Exit.isSuccess(exit) ? Effect.void : Effect.zipRight(Effect.exit(blobs.publish(staged, id)), blobs.remove(id))),
        Effect.uninterruptible
      )
    }))

  return (
    row: UploadRow,
    partIds: ReadonlyArray<string>,
    md5: string | undefined
  ): Effect.Effect<FileObject, PartsMismatch | CompletionTakenOver> =>
    Effect.flatMap(namedParts(row, partIds), (parts) => assemble(row, parts, md5))
})
