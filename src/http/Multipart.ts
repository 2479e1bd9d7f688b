/**
 * A pull-based multipart/form-data parser: the request body stream in, a flat stream of events out.
 *
 * Why not `HttpServerRequest.multipartStream`: its file parts are Node readables whose `error` event can fire before
 * anyone listens (a body that ends inside a file part), which leaves the handler waiting forever. Driving the
 * `multipasta` push parser from the body stream ourselves makes every outcome, including a truncated body, an
 * event or a failure, with backpressure for free: the next body chunk is read only when the events are consumed.
 */
import { Data, Effect, Stream } from "effect"
import * as MP from "multipasta"

export type FormEvent =
  | { readonly _tag: "Field"; readonly key: string; readonly value: string }
  | { readonly _tag: "FileStart"; readonly key: string; readonly filename: string }
  | { readonly _tag: "FileChunk"; readonly bytes: Uint8Array }
  | { readonly _tag: "FileEnd" }

export class MultipartInvalid extends Data.TaggedError("MultipartInvalid")<{
  readonly reason: MP.MultipartError["_tag"] | "NotMultipart"
  readonly limit?: string
}> {}

export interface FormLimits {
  readonly maxParts: number
  readonly maxFieldSize: number
  readonly maxTotalSize: number
}

/** `multipart/form-data` with a boundary parameter. */
export const isMultipartFormData = (contentType: string | undefined): boolean =>
  contentType !== undefined && /^multipart\/form-data\s*;(.*;)?\s*boundary=/i.test(contentType)

export const parseFormData = <E>(
  headers: Record<string, string>,
  limits: FormLimits,
  body: Stream.Stream<Uint8Array, E>
): Stream.Stream<FormEvent, E | MultipartInvalid> =>
  Stream.suspend(() => {
    if (!isMultipartFormData(headers["content-type"])) {
      return Stream.fail(new MultipartInvalid({ reason: "NotMultipart" }))
    }
    let events: Array<FormEvent> = []
    let failure: MP.MultipartError | undefined
    let done = false
    const parser = MP.make({
      headers,
      ...limits,
      // Any part with a filename is a file (no exception for JSON content types, unlike the platform default).
      isFile: (info) => info.filename !== undefined,
      onField: (info, value) => events.push({ _tag: "Field", key: info.name, value: MP.decodeField(info, value) }),
      onFile: (info) => {
        events.push({ _tag: "FileStart", key: info.name, filename: info.filename ?? "" })
        return (chunk) => events.push(chunk === null ? { _tag: "FileEnd" } : { _tag: "FileChunk", bytes: chunk })
      },
      onError: (error) => {
        failure ??= error
      },
      onDone: () => {
        done = true
      }
    })
    const take = Effect.suspend(() => {
      if (failure !== undefined) {
        return Effect.fail(
          new MultipartInvalid(
            failure._tag === "ReachedLimit" ? { reason: failure._tag, limit: failure.limit } : { reason: failure._tag }
          )
        )
      }
      const out = events
      events = []
      return Effect.succeed(out)
    })
    const end = Effect.suspend(() => {
      parser.end()
      if (!done) failure ??= { _tag: "EndNotReached" }
      return take
    })
    return body.pipe(
      Stream.mapEffect((chunk) => Effect.suspend(() => (parser.write(chunk), take))),
      Stream.concat(Stream.fromEffect(end)),
      Stream.flattenIterables
    )
  })
