/**
 * A form with one file field, streamed into storage as it arrives (`POST /v1/files`' `file`, a part's `data`):
 * bounded by `Content-Length` before a byte is read, then chunk by chunk; its text fields kept, other files skipped.
 */
import type * as HttpServerRequest from "@effect/platform/HttpServerRequest"
import { Effect, type Scope, Stream } from "effect"
import { type ApiError, invalidRequest } from "../domain/Errors.js"
import { fromMultipartInvalid } from "./Middleware.js"
import { type FilenameInvalid, type MultipartInvalid, parseFormData } from "./Multipart.js"
import { requestBody } from "./RequestBody.js"

/** Room for the form fields and part headers around the file, when comparing `Content-Length` to the limit. */
const FORM_OVERHEAD_BYTES = 64 * 1024

export interface FileWriter<A> {
  readonly write: (chunk: Uint8Array) => Effect.Effect<void>
  /** Makes the bytes written durable; what it gives is the form's `stored`. */
  readonly finish: Effect.Effect<A>
}

export interface FileFieldOptions<A> {
  /** The file's field name (the `param` of the form's errors). */
  readonly field: string
  readonly maxFileBytes: number
  readonly maxParts: number
  /** The 413 of a file (or a form) beyond `maxFileBytes`. */
  readonly tooLarge: ApiError
  /** Opens the file's storage, given its name as sent (or refuses the name). */
  readonly open: (filename: string) => Effect.Effect<FileWriter<A>, ApiError, Scope.Scope>
  /** The refusal of a file once it holds `bytes`, checked before each chunk is stored (beside `maxFileBytes`). */
  readonly refuse?: (bytes: number) => ApiError | undefined
}

export interface FileForm<A> {
  /** The text fields (a text field under the file's name included: the caller says how wrong that is). */
  readonly fields: ReadonlyMap<string, string>
  /** The text fields sent more than once (`fields` has the last value of each). */
  readonly repeated: ReadonlySet<string>
  /** What the file's writer finished with; none without a file under the field's name. */
  readonly stored: A | undefined
}

/** A form that cannot be read, as an OpenAI error naming the file's `field` (a bad file name too). */
const fromFormError = (field: string, tooLarge: ApiError) => (e: MultipartInvalid | FilenameInvalid): ApiError => {
  if (e._tag === "FilenameInvalid") return invalidRequest(e.message, field, "invalid_value")
  return e.limit === "MaxTotalSize" || e.limit === "MaxPartSize" ? tooLarge : fromMultipartInvalid(e)
}

/** Reads the request's form, storing its one `field` file; the storage is released with the scope unless kept. */
export const readFileForm = <A>(
  request: HttpServerRequest.HttpServerRequest,
  options: FileFieldOptions<A>
): Effect.Effect<FileForm<A>, ApiError, Scope.Scope> =>
  Effect.gen(function*() {
    const { field, maxFileBytes, tooLarge } = options
    const limits = { maxParts: options.maxParts, maxFieldSize: 64 * 1024, maxTotalSize: maxFileBytes + FORM_OVERHEAD_BYTES }
    if (Number(request.headers["content-length"] ?? NaN) > limits.maxTotalSize) return yield* tooLarge
    const fields = new Map<string, string>()
    const repeated = new Set<string>()
    let opened = false
    let stored: A | undefined
    let writer: FileWriter<A> | undefined // open while the file streams in
    let bytes = 0
    const events = Stream.mapError(parseFormData(request.headers, limits, requestBody(request)), fromFormError(field, tooLarge))
    yield* Stream.runForEach(events, (event): Effect.Effect<void, ApiError, Scope.Scope> => {
      switch (event._tag) {
        case "Field":
          return Effect.sync(() => {
            if (fields.has(event.key)) repeated.add(event.key)
            fields.set(event.key, event.value)
          })
        case "FileStart": {
          if (event.key !== field) return Effect.void // its chunks are ignored, not stored
          if (opened) return invalidRequest(`Send exactly one '${field}' part.`, field, "invalid_value")
          opened = true
          return Effect.map(options.open(event.filename), (opening) => void (writer = opening))
        }
        case "FileChunk": {
          if (writer === undefined) return Effect.void
          bytes += event.bytes.length
          const refusal = bytes > maxFileBytes ? tooLarge : options.refuse?.(bytes)
          return refusal ?? writer.write(event.bytes)
        }
        case "FileEnd":
          if (writer === undefined) return Effect.void
          return Effect.map(writer.finish, (finished) => {
            stored = finished
            writer = undefined
          })
      }
    })
    return { fields, repeated, stored }
  })
