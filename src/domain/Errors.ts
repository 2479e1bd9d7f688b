/**
 * The OpenAI error envelope `{"error":{"message","type","param","code"}}` as typed, yieldable errors.
 *
 * Each class is a `Schema.TaggedError` whose *encoded* form is the bare envelope (no `_tag`), so the HttpApi encoder
 * writes exactly what the OpenAI SDKs parse, with the status code taken from the schema annotation.
 */
import * as HttpApiSchema from "@effect/platform/HttpApiSchema"
import { Schema } from "effect"

export class ErrorBody extends Schema.Class<ErrorBody>("ErrorBody")({
  message: Schema.String,
  type: Schema.String,
  param: Schema.NullOr(Schema.String),
  code: Schema.NullOr(Schema.String)
}) {}

const Envelope = Schema.Struct({ error: ErrorBody })

const fields = { error: ErrorBody }

/** 400: a parameter or body the client sent is invalid. */
export class InvalidRequest extends Schema.TaggedError<InvalidRequest>()("InvalidRequest", fields) {}
/** 401: missing or unknown API key. */
export class Unauthorized extends Schema.TaggedError<Unauthorized>()("Unauthorized", fields) {}
/** 404: unknown (or not visible) resource, or an unknown route. */
export class NotFound extends Schema.TaggedError<NotFound>()("NotFound", fields) {}
/** 409: the request conflicts with the resource's state. */
export class Conflict extends Schema.TaggedError<Conflict>()("Conflict", fields) {}
/** 413: the upload or request body is larger than the configured limit. */
export class PayloadTooLarge extends Schema.TaggedError<PayloadTooLarge>()("PayloadTooLarge", fields) {}
/** 429: a limit on how much a project may have at once (`MAX_ACTIVE_BATCHES_PER_PROJECT`). */
export class RateLimited extends Schema.TaggedError<RateLimited>()("RateLimited", fields) {}
/** 500: a fault of the server itself (never a client mistake). */
export class ServerError extends Schema.TaggedError<ServerError>()("ServerError", fields) {}
/** 503: the server is too busy for this request now; the same request may succeed after its `Retry-After`. */
export class ServiceUnavailable extends Schema.TaggedError<ServiceUnavailable>()("ServiceUnavailable", fields) {}
/** 507: the server is out of storage space (a full disk or database); the same request may succeed later. */
export class InsufficientStorage extends Schema.TaggedError<InsufficientStorage>()("InsufficientStorage", fields) {}

export type ApiError =
  | InvalidRequest
  | Unauthorized
  | NotFound
  | Conflict
  | PayloadTooLarge
  | ServerError
  | ServiceUnavailable
  | InsufficientStorage

const asEnvelope = <A extends { readonly error: ErrorBody }>(
  cls: Schema.Schema<A, any> & (new(props: { readonly error: ErrorBody }) => A),
  status: number
) =>
  Schema.transform(Envelope, Schema.typeSchema(cls), {
    strict: true,
    decode: (e) => new cls({ error: e.error }),
    encode: (a) => ({ error: a.error })
  }).annotations({ ...HttpApiSchema.annotations({ status }), identifier: `${cls.name}Error` })

/** Schemas to use in `.addError(...)`: they encode to the envelope with the right status. */
export const InvalidRequestSchema = asEnvelope(InvalidRequest, 400)
export const UnauthorizedSchema = asEnvelope(Unauthorized, 401)
export const NotFoundSchema = asEnvelope(NotFound, 404)
export const ConflictSchema = asEnvelope(Conflict, 409)
export const PayloadTooLargeSchema = asEnvelope(PayloadTooLarge, 413)
export const RateLimitedSchema = asEnvelope(RateLimited, 429)
export const ServerErrorSchema = asEnvelope(ServerError, 500)
export const ServiceUnavailableSchema = asEnvelope(ServiceUnavailable, 503)
export const InsufficientStorageSchema = asEnvelope(InsufficientStorage, 507)

const body = (message: string, type: string, param: string | null, code: string | null) =>
  ({ error: new ErrorBody({ message, type, param, code }) })

export const invalidRequest = (message: string, param: string | null = null, code: string | null = null) =>
  new InvalidRequest(body(message, "invalid_request_error", param, code))

/**
 * 401 for a missing or unknown key, in OpenAI's words, with the contract's `type` (live OpenAI has sent
 * `invalid_request_error` for it; the SDKs raise `AuthenticationError` on the status either way).
 */
export const unauthorized = (message = "Incorrect API key provided.") =>
  new Unauthorized(body(message, "authentication_error", null, "invalid_api_key"))

export const notFound = (message: string, param: string | null = null) =>
  new NotFound(body(message, "invalid_request_error", param, "not_found"))

/** OpenAI's answer to a model it does not serve. */
export const modelNotFound = (model: string) =>
  new NotFound(body(`The model '${model}' does not exist`, "invalid_request_error", "model", "model_not_found"))

export const conflict = (message: string, param: string | null = null, code: string | null = "conflict") =>
  new Conflict(body(message, "invalid_request_error", param, code))

export const payloadTooLarge = (message: string, param: string | null = null, code = "file_too_large") =>
  new PayloadTooLarge(body(message, "invalid_request_error", param, code))

/** The 413 of a file that does not fit in its project's storage quota (`param`: what made the file). */
export const overQuota = (max: number, room: number, param: string | null = "file") =>
  payloadTooLarge(
    `The file does not fit in this project's storage: its files may take ${max} bytes in all, ` +
      `and ${Math.max(0, room)} bytes are left. Delete files to make room.`,
    param,
    "storage_quota_exceeded"
  )

/** 429 in OpenAI's words for a rate limit (type `requests`, code `rate_limit_exceeded`). */
export const rateLimited = (message: string) => new RateLimited(body(message, "requests", null, "rate_limit_exceeded"))

export const serverError = (message = "The server had an error while processing your request.") =>
  new ServerError(body(message, "server_error", null, null))

/** 503 in the words OpenAI's own overloaded answers use (type `server_error`), with a code saying why. */
export const serviceUnavailable = (message: string) =>
  new ServiceUnavailable(body(message, "server_error", null, "server_busy"))

/** 503: the server's database does not answer for now (down, out of reach, or not answering in time). */
export const databaseUnavailable = () =>
  new ServiceUnavailable(body("The server's database is unavailable for now; try again shortly.", "server_error", null, "database_unavailable"))

export const storageNotWritable = () =>
  new ServiceUnavailable(body("The server's storage refuses it for now (read-only, or permissions); try again shortly.", "server_error", null, "storage_unavailable"))

export const insufficientStorage = (message = "The server is out of storage space; try again later.") =>
  new InsufficientStorage(body(message, "server_error", null, "insufficient_storage"))
