/**
 * The space of the file system holding a directory, read with `statfs` (for `/metrics` and the disk reserve).
 */
import { Duration, Effect } from "effect"
import { statfs } from "node:fs/promises"
import type { DiskSpace } from "../observability/Metrics.js"

/** How long a reading may take: a hung mount answers never. */
const READ_TIMEOUT = Duration.seconds(5)

/**
 * The space of the file system holding `dir`; `undefined` when it cannot be read in time (a hung mount, no dir), or
 * while an earlier reading still hangs: each `statfs` holds one of libuv's four threads until it returns, and
 * readings piling them up would leave none for DNS lookups and file work.
 */
export const makeDiskSpace = (dir: string): Effect.Effect<DiskSpace | undefined> => {
  let reading = false
  const read = Effect.tryPromise(() => {
    reading = true
    return statfs(dir).finally(() => (reading = false))
  }).pipe(
    // Answered at the timeout even where the caller cannot be interrupted; the reading ends in the background.
    Effect.disconnect,
    Effect.map((fs): DiskSpace | undefined => ({ path: dir, available: fs.bavail * fs.bsize, size: fs.blocks * fs.bsize })),
    Effect.timeout(READ_TIMEOUT),
    Effect.orElseSucceed(() => undefined)
  )
  return Effect.suspend(() => (reading ? Effect.succeed(undefined) : read))
}
