/**
 * File bytes as chunks in the SQL database (`FILE_STORAGE=sql`), so that every node of a cluster reads every
 * file. A blob is written under a fresh staging token, a chunk at a time (never the whole file in memory), and
 * published by pointing its key at the token in one transaction.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { type Cause, Chunk, Clock, Duration, Effect, Layer, Option, Queue, Schedule, Stream } from "effect"
import { randomUUID } from "node:crypto"
import { AppConfig } from "../Config.js"
import { BlobGoneWhileRead, BlobStore, ORPHAN_AGE_MS, STALE_STAGING_MS, type StagedBlob, type StagingWriter } from "./BlobStore.js"
import { storageFault } from "./Faults.js"
import { sliceBytes } from "./sliceBytes.js"

/** Bytes per stored chunk: the most an upload or a download holds in memory at a time. */
const CHUNK_BYTES = 512 * 1024
/**
 * Postgres sends `bytea` as hex text: a whole 512 KiB chunk would arrive as a 1 MiB string, which V8 puts in its
 * large-object space where only a full collection frees it (a 200 MB download then peaked ~60 MB higher). A chunk
 * is read as pieces of this size instead, whose strings die young.
 */
const PG_READ_PIECE = 48 * 1024

type ChunkRow = { readonly seq: number | string; readonly data: Uint8Array }

/** Whether a clean-up failed for the database being away or refusing (tried again), not for another reason. */
const isStorageFault = (cause: Cause.Cause<unknown>) => storageFault(cause) !== undefined

/** Tries of a clean-up the database refused: doubling from a second, a minute apart at most, for an hour. */
const UNTIL_THE_DATABASE_ANSWERS = Schedule.exponential(Duration.seconds(1)).pipe(
  Schedule.union(Schedule.spaced(Duration.minutes(1))),
  Schedule.upTo(Duration.hours(1))
)

export const make = (nodeId: string) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient

    const dropToken = (token: string) =>
      Effect.zipRight(
        sql`DELETE FROM blob_chunks WHERE token = ${token}`,
        sql`DELETE FROM blob_staging WHERE token = ${token}`
      ).pipe(sql.withTransaction, Effect.orDie)

    // Uploads cut short by a crash of this node, and very old ones (of a node that died); another node's live ones
    // are left alone (on SQLite too: an API-only node may share the file).
    const now = yield* Clock.currentTimeMillis
    const stale = yield* sql<{ token: string }>`SELECT token FROM blob_staging
      WHERE owner = ${nodeId} OR created_at < ${now - STALE_STAGING_MS}`.pipe(Effect.orDie)
    yield* Effect.forEach(stale, (r) => dropToken(r.token), { discard: true })

    /** Drops a staged token unless it was published (`publish` deletes its staging row in its transaction). */
    const dropIfUnpublished = (token: string) =>
      Effect.gen(function*() {
        const staged = yield* sql`DELETE FROM blob_staging WHERE token = ${token} RETURNING token`
        if (staged.length > 0) yield* sql`DELETE FROM blob_chunks WHERE token = ${token}`
      }).pipe(sql.withTransaction)

    /** `dropIfUnpublished`, any cause a failure: a ROLLBACK that meets the outage too is a defect of @effect/sql's. */
    const dropStaged = (token: string) => Effect.sandbox(dropIfUnpublished(token))

    /**
     * Tokens whose clean-up met a database outage (the one that cut their upload, often), dropped one at a time by
     * one fiber of the store's scope, each tried until the database answers (an hour at most, then said): an
     * upload cut by an outage kept its 42 MB staged until the node's next start.
     */
    const undropped = yield* Queue.unbounded<string>()
    yield* Effect.addFinalizer(() =>
      Effect.flatMap(Queue.size(undropped), (left) =>
        left === 0 ? Effect.void : Effect.logWarning(`${left} staged uploads' bytes not dropped yet; the next start of this node drops them`)))
    yield* Effect.forkScoped(Effect.forever(Effect.flatMap(Queue.take(undropped), (token) =>
      Effect.retry(dropStaged(token), { schedule: UNTIL_THE_DATABASE_ANSWERS, while: isStorageFault }).pipe(
        Effect.catchAll((cause) =>
          Effect.logWarning(`Staged bytes ${token} could not be dropped; the next start of this node drops them`, cause))
      ))))

    /**
     * `dropIfUnpublished` as a staging's scope closes: bytes staged and then not published (a check that refused
     * them, a quota, a transaction rolled back) stayed for a day. Met by an outage, left to `undropped`.
     */
    const dropUnpublished = (token: string) => Effect.catchAll(dropStaged(token), () => Queue.offer(undropped, token))

    const openStaging = Effect.gen(function*() {
      const token = randomUUID()
      yield* Effect.addFinalizer(() => dropUnpublished(token))
      yield* sql`INSERT INTO blob_staging ${
        sql.insert({ token, owner: nodeId, created_at: yield* Clock.currentTimeMillis })
      }`.pipe(Effect.orDie)
      let buffer = new Uint8Array(CHUNK_BYTES)
      let filled = 0
      let seq = 0
      let bytes = 0
      const insertChunk = (data: Uint8Array) =>
        sql`INSERT INTO blob_chunks ${sql.insert({ token, seq: seq++, data })}`.pipe(Effect.asVoid, Effect.orDie)
      // A full buffer is handed to the driver as it is and replaced by a new one (the driver may still hold it).
      const takeBuffer = () => {
        const data = buffer.subarray(0, filled)
        buffer = new Uint8Array(CHUNK_BYTES)
        filled = 0
        return data
      }
      const flush = Effect.suspend(() => (filled === 0 ? Effect.void : insertChunk(takeBuffer())))
      const write = (chunk: Uint8Array): Effect.Effect<void> =>
        Effect.suspend(() => {
          bytes += chunk.length
          let offset = 0
          const steps: Array<Effect.Effect<void>> = []
          while (offset < chunk.length) {
            const n = Math.min(CHUNK_BYTES - filled, chunk.length - offset)
            buffer.set(chunk.subarray(offset, offset + n), filled)
            filled += n
            offset += n
            if (filled === CHUNK_BYTES) steps.push(insertChunk(takeBuffer()))
          }
          return Effect.all(steps, { discard: true })
        })
      return {
        write,
        finish: Effect.map(flush, (): StagedBlob => ({ token, bytes }))
      } satisfies StagingWriter
    })

    const publish = (staged: StagedBlob, key: string) =>
      Effect.gen(function*() {
        const previous = yield* sql<{ token: string }>`SELECT token FROM blobs WHERE key = ${key}`
        const published_at = yield* Clock.currentTimeMillis
        yield* sql`INSERT INTO blobs ${sql.insert({ key, token: staged.token, published_at })}
          ON CONFLICT (key) DO UPDATE SET token = excluded.token, published_at = excluded.published_at`
        yield* sql`DELETE FROM blob_staging WHERE token = ${staged.token}`
        for (const old of previous) yield* sql`DELETE FROM blob_chunks WHERE token = ${old.token}`
      }).pipe(sql.withTransaction, Effect.orDie)

    /** The chunk after `after` of the blob staged under `token`, as one or more pieces in order. */
    const chunkAfter = (token: string, after: number) =>
      sql.onDialectOrElse({
        pg: () =>
          sql<ChunkRow>`
            SELECT c.seq, substring(c.data from p.i * ${PG_READ_PIECE} + 1 for ${PG_READ_PIECE}) AS data
            FROM (SELECT seq, data FROM blob_chunks WHERE token = ${token} AND seq > ${after} ORDER BY seq LIMIT 1) c
            CROSS JOIN LATERAL generate_series(0, GREATEST(length(c.data) - 1, 0) / ${PG_READ_PIECE}) AS p(i)
            ORDER BY p.i`,
        orElse: () =>
          sql<ChunkRow>`SELECT seq, data FROM blob_chunks WHERE token = ${token} AND seq > ${after} ORDER BY seq LIMIT 1`
      })

    /**
     * Where byte `offset` of the blob under `token` is: the chunk before the one holding it (-1 for the first), and
     * how far into that one. Its chunks' sizes are read, not their bytes.
     */
    const chunkOf = (token: string, offset: number) =>
      Effect.map(
        sql<{ seq: number | string; n: number | string }>`SELECT seq, length(data) AS n FROM blob_chunks WHERE token = ${token} ORDER BY seq`,
        (chunks) => {
          let before = 0
          let after = -1
          for (const chunk of chunks) {
            if (before + Number(chunk.n) > offset) break
            before += Number(chunk.n)
            after = Number(chunk.seq)
          }
          return { after, within: offset - before }
        }
      )

    const read = (key: string, offset = 0): Stream.Stream<Uint8Array> =>
      Stream.unwrap(Effect.flatMap(
        sql<{ token: string }>`SELECT token FROM blobs WHERE key = ${key}`.pipe(Effect.orDie),
        (rows) =>
          rows.length === 0 ? Effect.succeed(Stream.empty) : Effect.map(
            offset === 0 ? Effect.succeed({ after: -1, within: 0 }) : Effect.orDie(chunkOf(rows[0]!.token, offset)),
            ({ after, within }) => fromChunk(key, rows[0]!.token, after, within)
          )
      ))

    /**
     * The chunks of the blob under `token` after `first`, the first of them from byte `within` on. Where they run
     * out, the blob must still be there (its chunks go with its row, in one transaction): else they ran out because
     * it was removed meanwhile, and the read fails (`BlobGoneWhileRead`) rather than end early.
     */
    const fromChunk = (key: string, token: string, first: number, within: number): Stream.Stream<Uint8Array> => {
      const stillThere = sql`SELECT 1 FROM blobs WHERE token = ${token}`.pipe(
        Effect.orDie,
        Effect.flatMap((rows) => (rows.length > 0 ? Effect.void : Effect.die(new BlobGoneWhileRead(key))))
      )
      const chunks = Stream.paginateChunkEffect(first, (after: number) =>
            chunkAfter(token, after).pipe(
              Effect.orDie,
              Effect.tap((pieces) => (pieces.length === 0 ? stillThere : Effect.void)),
              Effect.map((pieces) => [
                Chunk.unsafeFromArray(
                  pieces.map((c) => new Uint8Array(c.data.buffer, c.data.byteOffset, c.data.byteLength))
                ),
                pieces.length === 0 ? Option.none() : Option.some(Number(pieces[0]!.seq))
              ] as const)
            ))
      return within === 0 ? chunks : sliceBytes(chunks, within, Number.MAX_SAFE_INTEGER)
    }

    const remove = (key: string) =>
      Effect.gen(function*() {
        const removed = yield* sql<{ token: string }>`DELETE FROM blobs WHERE key = ${key} RETURNING token`
        for (const r of removed) yield* sql`DELETE FROM blob_chunks WHERE token = ${r.token}`
      }).pipe(sql.withTransaction, Effect.orDie)

    const keys = Effect.flatMap(Clock.currentTimeMillis, (now) =>
      sql<{ key: string }>`SELECT key FROM blobs WHERE published_at < ${now - ORPHAN_AGE_MS}`).pipe(
      Effect.map((rows) => rows.map((r) => r.key)),
      Effect.orDie
    )

    return BlobStore.of({ openStaging, publish, read, remove, keys })
  })

/** SQL blobs in the application's database. */
export const BlobStoreSql: Layer.Layer<BlobStore, never, SqlClient.SqlClient | AppConfig> = Layer.scoped(
  BlobStore,
  Effect.flatMap(AppConfig, ({ nodeId }) => make(nodeId))
)
