/**
 * The checks of a file's name and form fields on upload, as OpenAI makes them (its messages, params and codes): the
 * same for `POST /v1/files`, `POST /v1/uploads` and `FileCommands.upload`.
 */
import { Either } from "effect"
import { type ApiError, invalidRequest } from "../domain/Errors.js"
import {
  BATCH_FORMAT_MESSAGE,
  expiresAfterProblem,
  isBatchInputName,
  MAX_EXPIRES_AFTER_SECONDS,
  MIN_EXPIRES_AFTER_SECONDS,
  UploadPurpose
} from "../domain/Files.js"
import { meantName } from "../domain/misspeltNames.js"
import { echo } from "../domain/Text.js"
import { BatchUploadMimeType, type CompleteUploadBody, type CreateUploadBody, isMimeType, MAX_PARTS_PER_UPLOAD } from "../domain/Uploads.js"
import type { FileMetadata } from "./FileStore.js"
import type { NewUpload } from "./Uploads.js"

const purposes: ReadonlyArray<string> = UploadPurpose.literals

/**
 * The last path segment of a client-supplied file name (some clients send full paths): after the last `/`, and after
 * the last `\` only in a Windows path (`C:\…`, `\\server\…`, as old browsers sent them), since a backslash is an
 * ordinary character of a POSIX name (`a\b.jsonl`, which Python's httpx sends escaped).
 */
export const baseName = (name: string): string => {
  const segment = name.slice(name.lastIndexOf("/") + 1)
  return /^(?:[A-Za-z]:\\|\\\\)/.test(segment) ? segment.slice(segment.lastIndexOf("\\") + 1) : segment
}

/**
 * Longest file name kept, in UTF-8 bytes: the name limit of common file systems, so the name of any real file fits.
 * Longer is refused rather than cut: a cut name could lose its extension or differ from the one the client knows.
 */
export const MAX_FILENAME_BYTES = 255

const invalidFilename = (message: string, param: string) => Either.left(invalidRequest(message, param, "invalid_value"))

/**
 * The name a File object keeps for the name a client sent: its last path segment, exactly as sent otherwise,
 * refused when empty (`filename=""`, a path ending in a separator), holding control characters (a NUL, a line
 * break: nothing a file name shows), or too long. A refusal names `param`.
 */
export const uploadFilename = (sent: string, param = "file"): Either.Either<string, ApiError> => {
  const name = baseName(sent)
  if (name === "") return invalidFilename("The file name is empty.", param)
  if (/\p{Cc}/u.test(name)) return invalidFilename("The file name must not contain control characters.", param)
  if (Buffer.byteLength(name) > MAX_FILENAME_BYTES) {
    return invalidFilename(`The file name is longer than ${MAX_FILENAME_BYTES} bytes (in UTF-8).`, param)
  }
  return Either.right(name)
}

/** OpenAI's words for a value outside the `supported` ones. */
export const unsupportedValue = (value: string, supported: ReadonlyArray<string>, param: string) =>
  invalidRequest(
    `Invalid value: '${echo(value)}'. Supported values are: ${supported.map((p) => `'${p}'`).join(", ")}.`,
    param,
    "invalid_value"
  )

/**
 * OpenAI's refusal of a file for the Batch API whose name is not `.jsonl`, undefined when fine: as OpenAI answers
 * it, with neither `param` nor `code`.
 */
export const batchFormatRefusal = (purpose: string, filename: string): ApiError | undefined =>
  purpose === "batch" && !isBatchInputName(filename) ? invalidRequest(BATCH_FORMAT_MESSAGE, null, null) : undefined

/** What an upload's form gives of a file's metadata (the project is the caller's). */
export type UploadFields = Omit<FileMetadata, "project" | "id">

/** The expiry's two fields, as OpenAI's SDKs flatten `expires_after`. */
const EXPIRY_FIELDS = ["expires_after[anchor]", "expires_after[seconds]"]
const FORM_FIELDS = ["file", "purpose", ...EXPIRY_FIELDS]

/**
 * Checks the text fields of an upload (they may arrive before or after the file) and the file's name.
 * Unknown fields are ignored, as clients add their own; but one that looks like a field misspelt
 * (`expire_after[seconds]`, `expires_after.seconds`, `expires_after` as JSON: `misspeltNames.ts`) is refused:
 * ignored, what it asked would be left undone (a file that never expires).
 */
export const parseUploadForm = (
  fields: ReadonlyMap<string, string>,
  filename: string | undefined,
  repeated: ReadonlySet<string>
): Either.Either<UploadFields, ApiError> => {
  // Which of two values was meant is anyone's guess: the last one was taken silently.
  const twice = ["purpose", ...EXPIRY_FIELDS].find((name) => repeated.has(name))
  if (twice !== undefined) {
    return Either.left(invalidRequest(`The '${twice}' field was sent more than once; send it once.`, twice.replace(/\[(\w+)\]/, ".$1"), "invalid_value"))
  }
  for (const name of fields.keys()) {
    // `expires_after` in any form, or misspelt before its brackets (`expires_afer`: a file kept for ever).
    const expiry = !EXPIRY_FIELDS.includes(name) &&
      (/^expires.?after/i.test(name) || meantName(name.replace(/\[.*$/, ""), ["expires_after"]) !== undefined)
    const meant = expiry ? undefined : meantName(name, FORM_FIELDS)
    if (!expiry && meant === undefined) continue
    return Either.left(invalidRequest(
      `Unknown parameter: '${echo(name)}'. ` +
        (expiry || EXPIRY_FIELDS.includes(meant!)
          ? "The expiry is sent as the fields 'expires_after[anchor]' and 'expires_after[seconds]'."
          : `Did you mean '${meant}'?`),
      echo(name),
      "unknown_parameter"
    ))
  }
  if (filename === undefined) {
    return Either.left(
      invalidRequest("Missing required parameter: 'file' (a file part with a filename).", "file", "missing_required_parameter")
    )
  }
  const purpose = fields.get("purpose")
  if (purpose === undefined) {
    return Either.left(invalidRequest("Missing required parameter: 'purpose'.", "purpose", "missing_required_parameter"))
  }
  if (!purposes.includes(purpose)) return Either.left(unsupportedValue(purpose, purposes, "purpose"))
  const refusal = batchFormatRefusal(purpose, filename)
  if (refusal !== undefined) return Either.left(refusal)
  const anchor = fields.get("expires_after[anchor]")
  const seconds = fields.get("expires_after[seconds]")
  if (anchor === undefined && seconds === undefined) return Either.right({ filename, purpose })
  if (anchor !== "created_at") {
    return Either.left(
      invalidRequest(
        anchor === undefined
          ? "Missing required parameter: 'expires_after[anchor]'."
          : `Invalid value: '${echo(anchor)}'. Supported values are: 'created_at'.`,
        "expires_after.anchor",
        anchor === undefined ? "missing_required_parameter" : "invalid_value"
      )
    )
  }
  // Decimal digits only: `Number` also reads `0xE10`, `3600.0`, `3.6e3` and ` 3600 `.
  const n = seconds !== undefined && /^[0-9]{1,10}$/.test(seconds) ? Number(seconds) : NaN
  if (!Number.isInteger(n) || n < MIN_EXPIRES_AFTER_SECONDS || n > MAX_EXPIRES_AFTER_SECONDS) {
    return Either.left(
      invalidRequest(
        seconds === undefined
          ? "Missing required parameter: 'expires_after[seconds]'."
          : `Invalid value: '${echo(seconds)}'. 'expires_after[seconds]' must be an integer between ${MIN_EXPIRES_AFTER_SECONDS} and ${MAX_EXPIRES_AFTER_SECONDS}.`,
        "expires_after.seconds",
        seconds === undefined ? "missing_required_parameter" : "invalid_value"
      )
    )
  }
  return Either.right({ filename, purpose, expiresAfterSeconds: n })
}

/** The checked parameters of `POST /v1/uploads` (the project is the caller's); `maxBytes` bounds `bytes`. */
export const parseCreateUpload = (
  body: CreateUploadBody,
  maxBytes: number
): Either.Either<Omit<NewUpload, "project">, ApiError> => {
  if (!Number.isInteger(body.bytes) || body.bytes < 1 || body.bytes > maxBytes) {
    return Either.left(
      invalidRequest(`Invalid 'bytes': expected an integer between 1 and ${maxBytes}.`, "bytes", "invalid_value")
    )
  }
  const filename = uploadFilename(body.filename, "filename")
  if (Either.isLeft(filename)) return Either.left(filename.left)
  const purposes: ReadonlyArray<string> = UploadPurpose.literals
  if (!purposes.includes(body.purpose)) return Either.left(unsupportedValue(body.purpose, purposes, "purpose"))
  // Batch input is JSON lines; a file for another purpose may be anything a file upload takes (a PDF, an image…).
  const batchTypes: ReadonlyArray<string> = BatchUploadMimeType.literals
  // A media type is read without regard to case, and its parameters (`; charset=utf-8`) say nothing of its kind.
  const kind = body.mime_type.split(";")[0]!.trim().toLowerCase()
  if (body.purpose === "batch" ? !(isMimeType(body.mime_type) && batchTypes.includes(kind)) : !isMimeType(body.mime_type)) {
    return Either.left(
      body.purpose === "batch"
        ? unsupportedValue(body.mime_type, batchTypes, "mime_type")
        : invalidRequest(`Invalid 'mime_type': '${echo(body.mime_type)}' is not a MIME type (type/subtype).`, "mime_type", "invalid_value")
    )
  }
  const format = batchFormatRefusal(body.purpose, filename.right)
  if (format !== undefined) return Either.left(format)
  const upload = { bytes: body.bytes, filename: filename.right, purpose: body.purpose, mimeType: body.mime_type }
  if (body.expires_after == null) return Either.right(upload)
  const problem = expiresAfterProblem(body.expires_after, "expires_after")
  if (problem !== undefined) return Either.left(invalidRequest(problem.message, problem.param, problem.code))
  return Either.right({ ...upload, fileExpiresAfterSeconds: body.expires_after.seconds })
}

/** The checked parameters of `POST /v1/uploads/{id}/complete` (which parts exist is the service's to say). */
export const parseCompleteUpload = (
  body: CompleteUploadBody
): Either.Either<{ readonly partIds: ReadonlyArray<string>; readonly md5: string | undefined }, ApiError> => {
  if (body.part_ids.length === 0 || body.part_ids.length > MAX_PARTS_PER_UPLOAD) {
    return Either.left(invalidRequest(
      `Invalid 'part_ids': expected between 1 and ${MAX_PARTS_PER_UPLOAD} part ids, in the file's order.`,
      "part_ids",
      "invalid_value"
    ))
  }
  if (body.md5 != null && !/^[0-9a-f]{32}$/i.test(body.md5)) {
    return Either.left(
      invalidRequest("Invalid 'md5': expected the MD5 of the file as 32 hexadecimal digits.", "md5", "invalid_value")
    )
  }
  return Either.right({ partIds: body.part_ids, md5: body.md5 ?? undefined })
}
