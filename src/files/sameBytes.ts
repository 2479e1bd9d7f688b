/**
 * Whether two stored files hold the same bytes (an idempotent create's check that an input file is another upload
 * of the one its key was first used with): their sizes first, then a digest of each, streamed side by side.
 */
import { Effect, Option, Stream } from "effect"
import { createHash } from "node:crypto"
import type { FileId } from "../domain/Ids.js"
import type { Visibility } from "../domain/Projects.js"
import { isMissingBlob } from "../storage/BlobStore.js"
import type { FileStoreShape } from "./FileStore.js"

/**
 * `same` or `other` bytes (the second file unknown: other); `gone` when the first cannot be read whole (deleted,
 * expired, its bytes missing).
 */
export type Comparison = "same" | "other" | "gone"

/** The digest of `stream`, or undefined when it held other than `size` bytes (a blob missing or cut short). */
const digestOf = (stream: Stream.Stream<Uint8Array>, size: number) =>
  Effect.suspend(() => {
    const hash = createHash("sha256")
    let read = 0
    return Effect.map(
      Stream.runForEach(stream, (chunk) =>
        Effect.sync(() => {
          hash.update(chunk)
          read += chunk.length
        })),
      () => (read === size ? hash.digest("hex") : undefined)
    )
  })

export const sameBytes = (
  files: Pick<FileStoreShape, "content">,
  [a, b]: readonly [FileId, FileId],
  visibility: Visibility
): Effect.Effect<Comparison> =>
  Effect.all([Effect.option(files.content(a, visibility)), Effect.option(files.content(b, visibility))]).pipe(
    Effect.flatMap(([first, second]): Effect.Effect<Comparison> => {
      if (first._tag === "None") return Effect.succeed("gone")
      if (second._tag === "None") return Effect.succeed("other")
      const [x, y] = [first.value, second.value]
      const size = Number(x.file.bytes)
      if (size !== Number(y.file.bytes)) return Effect.succeed("other")
      return Effect.map(
        Effect.all([digestOf(x.stream, size), digestOf(y.stream, size)], { concurrency: 2 }),
        ([dx, dy]) => (dx === undefined || dy === undefined ? "gone" : dx === dy ? "same" : "other")
      )
    }),
    // Deleted as it was read, or its bytes missing on disk: it cannot be compared. Any other fault (the database
    // gone a moment) is the server's 500, which a client may try again, not a 409 for good.
    Effect.catchSomeDefect((fault) => (isMissingBlob(fault) ? Option.some(Effect.succeed("gone" as const)) : Option.none()))
  )
