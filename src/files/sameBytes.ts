/**
 * Whether two stored files hold the same bytes (an idempotent create's check that an input file is another upload
 * of the one its key was first used with): their sizes first, then a digest of each, streamed.
 */
import { Effect, Stream } from "effect"
import { createHash } from "node:crypto"
import type { FileId } from "../domain/Ids.js"
import type { Visibility } from "../domain/Projects.js"
import type { FileStoreShape } from "./FileStore.js"

const digestOf = (stream: Stream.Stream<Uint8Array>) =>
  Effect.suspend(() => {
    const hash = createHash("sha256")
    return Effect.map(Stream.runForEach(stream, (chunk) => Effect.sync(() => hash.update(chunk))), () => hash.digest("hex"))
  })

/** False when either is gone or not `visibility`'s. */
export const sameBytes = (
  files: Pick<FileStoreShape, "content">,
  [a, b]: readonly [FileId, FileId],
  visibility: Visibility
): Effect.Effect<boolean> =>
  Effect.all([files.content(a, visibility), files.content(b, visibility)]).pipe(
    Effect.flatMap(([x, y]) =>
      Number(x.file.bytes) !== Number(y.file.bytes)
        ? Effect.succeed(false)
        : Effect.zipWith(digestOf(x.stream), digestOf(y.stream), (dx, dy) => dx === dy)
    ),
    Effect.catchTag("FileNotFound", () => Effect.succeed(false))
  )
