/** Handlers of the `files` group: HTTP in, `FileStore` calls out. */
import { HttpApiBuilder, HttpServerRequest, HttpServerResponse, Multipart } from "@effect/platform"
import { Effect, Either, Option, Stream } from "effect"
import { AppConfig } from "../Config.js"
import { type ApiError, invalidRequest, notFound, payloadTooLarge } from "../domain/Errors.js"
import {
  FileDeleted,
  FileList,
  MAX_EXPIRES_AFTER_SECONDS,
  MIN_EXPIRES_AFTER_SECONDS,
  UploadPurpose
} from "../domain/Files.js"
import { type FileMetadata, FileStore } from "../files/FileStore.js"
import type { StagedBlob } from "../storage/BlobStore.js"
import { OpenAIApi } from "./Api.js"
import { fromMultipartError } from "./Middleware.js"

/** Room for the form fields and part headers around the file, when comparing `Content-Length` to the limit. */
const FORM_OVERHEAD_BYTES = 64 * 1024

const purposes: ReadonlyArray<string> = UploadPurpose.literals

/** The last path segment of a client-supplied file name (browsers and some clients send full paths). */
export const baseName = (name: string): string => name.split(/[\\/]/).pop() ?? name

/**
 * Checks the text fields of an upload (they may arrive before or after the file) and the file's name.
 * Unknown fields are ignored, as clients add their own.
 */
export const parseUploadForm = (
  fields: ReadonlyMap<string, string>,
  filename: string | undefined
): Either.Either<FileMetadata, ApiError> => {
  if (filename === undefined) {
    return Either.left(
      invalidRequest("Missing required parameter: 'file' (a file part with a filename).", "file", "missing_required_parameter")
    )
  }
  const purpose = fields.get("purpose")
  if (purpose === undefined) {
    return Either.left(invalidRequest("Missing required parameter: 'purpose'.", "purpose", "missing_required_parameter"))
  }
  if (!purposes.includes(purpose)) {
    return Either.left(
      invalidRequest(
        `Invalid value: '${purpose}'. Supported values are: ${purposes.map((p) => `'${p}'`).join(", ")}.`,
        "purpose",
        "invalid_value"
      )
    )
  }
  if (purpose === "batch" && !filename.toLowerCase().endsWith(".jsonl")) {
    return Either.left(invalidRequest("Invalid file format for Batch API. Must be .jsonl", "file", "invalid_file_format"))
  }
  const anchor = fields.get("expires_after[anchor]")
  const seconds = fields.get("expires_after[seconds]")
  if (anchor === undefined && seconds === undefined) return Either.right({ filename, purpose })
  if (anchor !== "created_at") {
    return Either.left(
      invalidRequest(
        anchor === undefined
          ? "Missing required parameter: 'expires_after[anchor]'."
          : `Invalid value: '${anchor}'. Supported values are: 'created_at'.`,
        "expires_after.anchor",
        anchor === undefined ? "missing_required_parameter" : "invalid_value"
      )
    )
  }
  const n = seconds === undefined ? NaN : Number(seconds)
  if (!Number.isInteger(n) || n < MIN_EXPIRES_AFTER_SECONDS || n > MAX_EXPIRES_AFTER_SECONDS) {
    return Either.left(
      invalidRequest(
        seconds === undefined
          ? "Missing required parameter: 'expires_after[seconds]'."
          : `Invalid value: '${seconds}'. 'expires_after[seconds]' must be an integer between ${MIN_EXPIRES_AFTER_SECONDS} and ${MAX_EXPIRES_AFTER_SECONDS}.`,
        "expires_after.seconds",
        seconds === undefined ? "missing_required_parameter" : "invalid_value"
      )
    )
  }
  return Either.right({ filename, purpose, expiresAfterSeconds: n })
}

const tooLarge = (max: number) =>
  payloadTooLarge(`The file is larger than the maximum upload size of ${max} bytes.`, "file")

/** Fails as soon as more than `max` bytes went through, before the offending chunk is written. */
const limitBytes = (max: number) => <E>(content: Stream.Stream<Uint8Array, E>): Stream.Stream<Uint8Array, E | ApiError> =>
  Stream.suspend(() => {
    let seen = 0
    return Stream.tap(content, (chunk) => {
      seen += chunk.length
      return seen > max ? Effect.fail(tooLarge(max)) : Effect.void
    })
  })

const fileNotFound = (id: string) => notFound(`No such File object: ${id}`, "file_id")

export const FilesHttpLive = HttpApiBuilder.group(OpenAIApi, "files", (handlers) =>
  Effect.gen(function*() {
    const files = yield* FileStore
    const { maxUploadBytes } = yield* AppConfig

    const upload = (parts: Stream.Stream<Multipart.Part, Multipart.MultipartError>) =>
      Effect.gen(function*() {
        const request = yield* HttpServerRequest.HttpServerRequest
        const declared = Number(request.headers["content-length"] ?? NaN)
        if (declared > maxUploadBytes + FORM_OVERHEAD_BYTES) return yield* tooLarge(maxUploadBytes)

        const fields = new Map<string, string>()
        let file: { readonly staged: StagedBlob; readonly filename: string } | undefined
        yield* Stream.runForEach(Stream.mapError(parts, fromMultipartError), (part) => {
          if (Multipart.isField(part)) return Effect.sync(() => void fields.set(part.key, part.value))
          if (Multipart.isFile(part) && part.key === "file") {
            if (file !== undefined) {
              return Effect.fail(invalidRequest("Upload exactly one 'file' part.", "file", "invalid_value"))
            }
            const content = part.content.pipe(Stream.mapError(fromMultipartError), limitBytes(maxUploadBytes))
            return Effect.map(files.stage(content), (staged) => {
              file = { staged, filename: baseName(part.name) }
            })
          }
          // A file under another field name: not ours to keep, but it must be consumed for parsing to go on.
          return Multipart.isFile(part)
            ? Stream.runDrain(Stream.mapError(part.content, fromMultipartError))
            : Effect.void
        })
        if (file === undefined && fields.has("file")) {
          return yield* invalidRequest("'file' must be a file part with a filename, not a text field.", "file", "invalid_type")
        }
        const meta = yield* parseUploadForm(fields, file?.filename)
        return yield* files.commit(file!.staged, meta)
      }).pipe(Effect.scoped, Effect.withSpan("Files.upload"))

    return handlers
      .handle("upload", ({ payload }) =>
        upload(
          // Exact limits are enforced while streaming; these only bound what the parser itself buffers.
          Multipart.withLimitsStream(payload, {
            maxParts: Option.some(32),
            maxFieldSize: 64 * 1024,
            maxFileSize: Option.none(),
            maxTotalSize: Option.some(maxUploadBytes + FORM_OVERHEAD_BYTES),
            fieldMimeTypes: []
          })
        ))
      .handle("list", ({ urlParams }) =>
        files.list({
          purpose: urlParams.purpose,
          after: urlParams.after,
          limit: urlParams.limit ?? 10_000,
          order: urlParams.order ?? "desc"
        }).pipe(
          Effect.map(({ data, hasMore }) =>
            new FileList({
              object: "list",
              data,
              first_id: data[0]?.id ?? null,
              last_id: data.at(-1)?.id ?? null,
              has_more: hasMore
            })
          ),
          Effect.catchTag("UnknownCursor", ({ after }) =>
            invalidRequest(`No such File object for the 'after' cursor: ${after}`, "after", "invalid_value"))
        ))
      .handle("retrieve", ({ path }) =>
        files.get(path.file_id).pipe(Effect.catchTag("FileNotFound", ({ id }) => fileNotFound(id))))
      .handle("content", ({ path }) =>
        files.content(path.file_id).pipe(
          Effect.map(({ file, stream }) =>
            HttpServerResponse.stream(stream, { contentType: "application/octet-stream", contentLength: file.bytes })
          ),
          Effect.catchTag("FileNotFound", ({ id }) => fileNotFound(id))
        ))
      .handle("delete", ({ path }) =>
        files.remove(path.file_id).pipe(
          Effect.as(new FileDeleted({ id: path.file_id, object: "file", deleted: true })),
          Effect.catchTag("FileNotFound", ({ id }) => fileNotFound(id))
        ))
  }))
