/**
 * Where the bytes of files live, addressed by key (the file id). Writes are staged and published atomically: a
 * reader never sees a half-written blob, and a crash or an interrupted upload leaves nothing published.
 */
import * as FileSystem from "@effect/platform/FileSystem"
import * as NodeFileSystem from "@effect/platform-node/NodeFileSystem"
import { Context, Effect, Layer, Option, Scope, Stream } from "effect"
import { createHash, randomUUID } from "node:crypto"
import * as Path from "node:path"
import { AppConfig } from "../Config.js"
import { makeDirectoriesIn } from "./makeDirectories.js"

/** Bytes written to the staging area, not yet visible under any key. */
export interface StagedBlob {
  readonly token: string
  readonly bytes: number
}

/** An open staging area being written to. */
export interface StagingWriter {
  readonly write: (chunk: Uint8Array) => Effect.Effect<void>
  /** Flushes to stable storage; the bytes can then be published. */
  readonly finish: Effect.Effect<StagedBlob>
}

export interface BlobStoreShape {
  /**
   * Opens a staging area. Its bytes are removed when the surrounding scope closes, unless they were `publish`ed
   * before: a failure or an interruption while writing leaves nothing behind.
   */
  readonly openStaging: Effect.Effect<StagingWriter, never, Scope.Scope>
  /** Makes staged bytes readable under `key`, atomically. */
  readonly publish: (staged: StagedBlob, key: string) => Effect.Effect<void>
  /**
   * The bytes under `key`, streamed, from byte `offset` on (a `Range`: a resumed download), without reading those
   * before it where the store can.
   */
  readonly read: (key: string, offset?: number) => Stream.Stream<Uint8Array>
  /** Removes the bytes under `key`; removing a missing key is not an error. */
  readonly remove: (key: string) => Effect.Effect<void>
  /**
   * Every published key older than `ORPHAN_AGE_MS` (to find bytes that lost their metadata in a crash; a younger
   * one's row may still be on its way on another node).
   */
  readonly keys: Effect.Effect<ReadonlyArray<string>>
  /**
   * Where bytes no file refers to are moved instead of removed, in a store kept apart from the database (files on
   * disk): a database restored older than its files leaves the newer files' bytes so, and removing them lost those
   * files for good. Without it (bytes in the database, restored with their rows), they are removed.
   */
  readonly setAside?: { readonly dir: string; readonly move: (key: string) => Effect.Effect<void> }
  /**
   * Every published key, however young, in a store kept apart from the database (files on disk): a database
   * restored newer than its files' copy lists files whose bytes are not there (`missingBytes.ts`).
   */
  readonly published?: { readonly dir: string; readonly keys: Effect.Effect<ReadonlySet<string>> }
}

export class BlobStore extends Context.Tag("BlobStore")<BlobStore, BlobStoreShape>() {}

/**
 * The SQL store's fault for bytes removed while they were read (their file deleted, or written again): what was read
 * is not the whole of them. Without it, a file deleted as a batch validated it was read as a shorter file, and
 * the batch ran its first lines only.
 */
export class BlobGoneWhileRead extends Error {
  readonly _tag = "BlobGoneWhileRead"
  constructor(key: string) {
    super(`The bytes of ${key} were removed while they were read`)
  }
}

/**
 * Whether a read's fault is for bytes that are not there: the local store's (a database restored beside older
 * files, a blob removed by hand), or the SQL store's for bytes removed while read (`BlobGoneWhileRead`); the SQL
 * store's bytes missing from the start are an empty stream.
 */
export const isMissingBlob = (fault: unknown) =>
  fault instanceof BlobGoneWhileRead ||
  (fault instanceof Error && (fault as { _tag?: unknown })._tag === "SystemError" &&
    (fault as { reason?: unknown }).reason === "NotFound")

/**
 * Bytes read at a time: each piece makes a round of the response stream's backpressure, so larger pieces stream
 * faster (200 MB download: 1.9 s at 64 KiB, 1.1 s here) at the cost of memory per download (1 MiB: +30 MB peak).
 */
const CHUNK = FileSystem.KiB(256)

/** Writes a whole stream to a new staging area (see `openStaging` for its lifetime). */
export const stageStream = <E>(blobs: BlobStoreShape, content: Stream.Stream<Uint8Array, E>) =>
  Effect.flatMap(blobs.openStaging, (writer) =>
    Effect.zipRight(Stream.runForEach(content, writer.write), writer.finish))

/**
 * A published blob is reported by `keys` (as a candidate orphan) only once it is this old: its file row, written
 * just after publishing, may still be on its way on another node.
 */
export const ORPHAN_AGE_MS = 60_000
/** Staging areas of other nodes older than this belong to uploads that died with their node. */
export const STALE_STAGING_MS = 24 * 60 * 60 * 1000

/**
 * A node's id as a file name (its staging directory, its lock file: `NodeIdLock.ts`): encoded so that no id names
 * another directory (`.`, `..`, a slash) nor a name too long for the file system (a long id by its hash).
 */
export const fileNameOfNodeId = (nodeId: string) => {
  const encoded = encodeURIComponent(nodeId).replace(/\./g, "%2E")
  return encoded.length <= 100 ? encoded : `sha256-${createHash("sha256").update(nodeId).digest("hex")}`
}

/** The key a blob's file name encodes (`encodeURIComponent`); none for a name no key makes (a stray `100%.txt`). */
const keyOfName = (name: string): ReadonlyArray<string> => {
  try {
    return [decodeURIComponent(name)]
  } catch {
    return []
  }
}

/**
 * Blobs as files under `root/blobs`, staged in `root/staging/<node id>` (same file system, so publishing is a
 * `rename`). Each node sharing `root` stages in a directory of its own (an API-only node beside the one that runs
 * batches): at start, a node removes what a killed run of it left in its own, and from the others' only what is
 * older than `STALE_STAGING_MS` (left by a node that died for good).
 */
export const makeLocal = (root: string, nodeId = "node") =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const blobs = Path.join(root, "blobs")
    const asideDir = Path.join(root, "orphaned")
    const stagingRoot = Path.join(root, "staging")
    const staging = Path.join(stagingRoot, fileNameOfNodeId(nodeId))
    /** Whether the file at `path` was last written more than `ms` ago (false when it is gone). */
    const olderThan = (path: string, ms: number) =>
      fs.stat(path).pipe(
        // Against the file system's clock, which its times are on (not Effect's `Clock`).
        Effect.map((info) => Option.exists(info.mtime, (at) => at.getTime() < Date.now() - ms)),
        Effect.orElseSucceed(() => false)
      )
    yield* fs.remove(staging, { recursive: true }).pipe(Effect.ignore)
    // Each entry on its own: one that another node removed meanwhile, or none at all (a new `root`), is no fault.
    for (const name of yield* fs.readDirectory(stagingRoot).pipe(Effect.orElseSucceed(() => []))) {
      const path = Path.join(stagingRoot, name)
      yield* Effect.ignore(Effect.gen(function*() {
        // A file right under `staging/` was staged by an earlier version (every node stops for an upgrade).
        if ((yield* fs.stat(path)).type !== "Directory") return yield* fs.remove(path)
        for (const entry of yield* fs.readDirectory(path)) {
          if (yield* olderThan(Path.join(path, entry), STALE_STAGING_MS)) yield* Effect.ignore(fs.remove(Path.join(path, entry)))
        }
      }))
    }
    yield* makeDirectoriesIn(fs, blobs)
    yield* makeDirectoriesIn(fs, staging)

    const blobPath = (key: string) => Path.join(blobs, encodeURIComponent(key))
    const stagingPath = (token: string) => Path.join(staging, token)
    const removeQuietly = (path: string) => fs.remove(path).pipe(Effect.catchTag("SystemError", () => Effect.void))

    const openStaging = Effect.gen(function*() {
      const token = randomUUID()
      const path = stagingPath(token)
      // Registered before the file exists so an interruption at any point removes it; after `publish` the
      // staging path is gone and the removal is a no-op.
      yield* Effect.addFinalizer(() => removeQuietly(path).pipe(Effect.orDie))
      const file = yield* fs.open(path, { flag: "w" }).pipe(Effect.orDie)
      let bytes = 0
      return {
        write: (chunk) => {
          if (chunk.length === 0) return Effect.void // writeAll fails on an empty buffer
          bytes += chunk.length
          return file.writeAll(chunk).pipe(Effect.orDie)
        },
        finish: file.sync.pipe(Effect.orDie, Effect.map((): StagedBlob => ({ token, bytes })))
      } satisfies StagingWriter
    })

    // Stamped with the time of publishing first (a rename keeps the file's times): `keys` tells a blob's age from it.
    const publish = (staged: StagedBlob, key: string) =>
      Effect.suspend(() => {
        const now = new Date()
        const path = stagingPath(staged.token)
        return Effect.zipRight(fs.utimes(path, now, now), fs.rename(path, blobPath(key)))
      }).pipe(Effect.orDie)

    // One piece read ahead, not the platform's 16: a download whose client stopped reading held 4 MiB of its file.
    const read = (key: string, offset = 0) =>
      fs.stream(blobPath(key), { chunkSize: CHUNK, bufferSize: 1, offset }).pipe(Stream.orDie)

    const remove = (key: string) => removeQuietly(blobPath(key)).pipe(Effect.orDie)

    const published = {
      dir: blobs,
      keys: Effect.map(fs.readDirectory(blobs), (names) => new Set(names.flatMap(keyOfName))).pipe(Effect.orDie)
    }

    const keys = Effect.gen(function*() {
      const names = yield* fs.readDirectory(blobs)
      const isOld = (name: string) => olderThan(Path.join(blobs, name), ORPHAN_AGE_MS)
      const old = yield* Effect.filter(names, isOld, { concurrency: 16 })
      return old.flatMap(keyOfName)
    }).pipe(Effect.orDie)

    const setAside = {
      dir: asideDir,
      move: (key: string) =>
        Effect.zipRight(makeDirectoriesIn(fs, asideDir), fs.rename(blobPath(key), Path.join(asideDir, encodeURIComponent(key)))).pipe(
          Effect.catchTag("SystemError", (e) => (e.reason === "NotFound" ? Effect.void : Effect.fail(e))),
          Effect.orDie
        )
    }

    return BlobStore.of({ openStaging, publish, read, remove, keys, setAside, published })
  })

/** Local-disk blobs under `DATA_DIR/files`. */
export const BlobStoreLocal: Layer.Layer<BlobStore, never, AppConfig> = Layer.effect(
  BlobStore,
  Effect.flatMap(AppConfig, ({ dataDir, nodeId }) => makeLocal(Path.join(dataDir, "files"), nodeId)).pipe(Effect.orDie)
).pipe(Layer.provide(NodeFileSystem.layer))
