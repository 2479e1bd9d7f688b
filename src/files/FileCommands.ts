/**
 * Files changed as the API changes them, for an embedding app's own code: `upload` is `POST /v1/files` without HTTP,
 * with the same checks (the name, `purpose`, `expires_after`, `MAX_UPLOAD_BYTES`, the project's
 * `MAX_FILE_BYTES_PER_PROJECT`) and the same errors; `FileStore.create` stores what it is given, unchecked. The count
 * of a project's uploads under way, which the quota holds them to together, is this service's: `POST /v1/files`
 * counts its uploads through it too (`startUpload`).
 */
import { Context, Effect, Either, Layer, Option, type Scope, Stream } from "effect"
import type { Caller } from "../auth/Auth.js"
import { AppConfig } from "../Config.js"
import { type ApiError, overQuota, payloadTooLarge } from "../domain/Errors.js"
import type { FileObject } from "../domain/Files.js"
import { FileStore } from "./FileStore.js"
import { parseUploadForm, uploadFilename } from "./uploadChecks.js"
import { UploadsInFlight } from "./uploadsInFlight.js"

/** What `POST /v1/files` takes beside the file's bytes, as the SDKs name it. */
export interface UploadRequest {
  readonly filename: string
  /** `batch`, `fine-tune`, `assistants`, `vision`, `user_data` or `evals`. */
  readonly purpose: string
  readonly expires_after?: { readonly anchor: string; readonly seconds: number } | undefined
}

/** One upload's place in its project's quota, from its start until it is stored or fails (its scope closes). */
export interface UploadQuota {
  /** The upload has received `bytes` in all: the 413 when that passes what the quota leaves, else undefined. */
  readonly received: (bytes: number) => ApiError | undefined
  /** Before `bytes` are stored: the 413 when the project's uploads stored meanwhile left less room than that. */
  readonly beforeStoring: (bytes: number) => Effect.Effect<void, ApiError>
  /** Stored: its bytes are the store's, no longer counted as under way. */
  readonly stored: Effect.Effect<void>
}

export interface FileCommandsShape {
  /** `POST /v1/files`: `content` stored as a file of `caller`'s project, checked as the API checks an upload. */
  readonly upload: <E>(
    request: UploadRequest,
    content: Stream.Stream<Uint8Array, E>,
    caller: Caller
  ) => Effect.Effect<FileObject, ApiError | E>
  /** An upload of `project` begins (`POST /v1/files` reads its body itself, then stores it with `FileStore`). */
  readonly startUpload: (project: string) => Effect.Effect<UploadQuota, never, Scope.Scope>
}

export class FileCommands extends Context.Tag("FileCommands")<FileCommands, FileCommandsShape>() {}

export const fileTooLarge = (max: number) =>
  payloadTooLarge(`The file is larger than the maximum upload size of ${max} bytes.`, "file")

export const FileCommandsLive: Layer.Layer<FileCommands, never, FileStore | AppConfig> = Layer.effect(
  FileCommands,
  Effect.gen(function*() {
    const files = yield* FileStore
    const { maxFileBytesPerProject, maxUploadBytes } = yield* AppConfig
    // What the project's files may still take (the output files the server writes count, but are never refused).
    const quota = Option.getOrElse(maxFileBytesPerProject, () => Infinity)
    const uploading = new UploadsInFlight()

    const startUpload = (project: string) =>
      Effect.gen(function*() {
        // Counted beside the project's other uploads under way here until it is stored (or fails), then as stored.
        const inFlight = uploading.start(project)
        yield* Effect.addFinalizer(() => Effect.sync(inFlight.end))
        /** What the quota leaves beside `stored` bytes and the project's other uploads under way here. */
        const roomBeside = (stored: number) => quota - stored - inFlight.others()
        const stored = quota === Infinity ? 0 : yield* files.projectBytes(project)
        return {
          received: (bytes: number) => {
            inFlight.received(bytes)
            const room = roomBeside(stored)
            if (bytes <= room) return undefined
            inFlight.end() // refused: it holds no room while the rest of its body is read and dropped
            return overQuota(quota, room)
          },
          beforeStoring: (bytes: number) =>
            quota === Infinity
              ? Effect.void
              // What the project's uploads that ended meanwhile stored: they no longer count as under way.
              : Effect.flatMap(files.projectBytes(project), (now) => {
                const room = roomBeside(now)
                return bytes > room ? Effect.fail(overQuota(quota, room)) : Effect.void
              }),
          stored: Effect.sync(inFlight.end)
        } satisfies UploadQuota
      })

    /** The request as the form's fields, checked by the form's own checks: the same messages, params and codes. */
    const metadataOf = (request: UploadRequest) =>
      Either.flatMap(uploadFilename(request.filename), (filename) => {
        const fields = new Map([["purpose", request.purpose]])
        if (request.expires_after !== undefined) {
          fields.set("expires_after[anchor]", request.expires_after.anchor)
          fields.set("expires_after[seconds]", String(request.expires_after.seconds))
        }
        return parseUploadForm(fields, filename, new Set())
      })

    const upload = <E>(request: UploadRequest, content: Stream.Stream<Uint8Array, E>, caller: Caller) =>
      Effect.gen(function*() {
        const meta = yield* metadataOf(request)
        const place = yield* startUpload(caller.project)
        const writer = yield* files.openUpload
        let received = 0
        yield* Stream.runForEach(content, (chunk) => {
          received += chunk.length
          if (received > maxUploadBytes) return Effect.fail(fileTooLarge(maxUploadBytes))
          const refusal = place.received(received)
          return refusal === undefined ? writer.write(chunk) : Effect.fail(refusal)
        })
        const staged = yield* writer.finish
        yield* place.beforeStoring(staged.bytes)
        return yield* Effect.zipLeft(files.commit(staged, { ...meta, project: caller.project }), place.stored)
      }).pipe(Effect.scoped, Effect.withSpan("FileCommands.upload"))

    return { upload, startUpload }
  })
)
