/**
 * A pull-based multipart/form-data parser: the request body stream in, a flat stream of events out.
 *
 * Why not `HttpServerRequest.multipartStream`: its file parts are Node readables whose `error` event can fire before
 * anyone listens (a body that ends inside a file part), which leaves the handler waiting forever. Driving the
 * `multipasta` push parser from the body stream ourselves makes every outcome, including a truncated body, an
 * event or a failure, with backpressure for free: the next body chunk is read only when the events are consumed.
 */
import { Data, Effect, Either, Stream } from "effect"
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

/** A form part's file name that cannot be read: not UTF-8, or a `filename*` that is not UTF-8 percent-encoding. */
export class FilenameInvalid extends Data.TaggedError("FilenameInvalid")<{ readonly message: string }> {}

export interface FormLimits {
  readonly maxParts: number
  readonly maxFieldSize: number
  readonly maxTotalSize: number
}

/** `multipart/form-data` with a boundary parameter that names one: `boundary=""` is none (it was said as a missing file). */
export const isMultipartFormData = (contentType: string | undefined): boolean =>
  contentType !== undefined && /^multipart\/form-data\s*;(.*;)?\s*boundary=(?:"[^"]|[^\s;"])/i.test(contentType)

/** What a form needs of a part's `Content-Disposition`: the field name and, for a file, its name as sent. */
export interface Disposition {
  readonly name: string
  readonly filename: string | undefined
}

const invalidDisposition = () => new MultipartInvalid({ reason: "InvalidDisposition" })
const filenameNotUtf8 = () =>
  new FilenameInvalid({ message: "The filename in the Content-Disposition of a form part is not valid UTF-8." })
const filenameStarInvalid = () =>
  new FilenameInvalid({
    message:
      "The filename* in the Content-Disposition of a form part must be UTF-8'' followed by percent-encoded UTF-8 (RFC 8187)."
  })

const dispositionType = /^[ \t]*[!#$%&'*+.^\w`|~-]+[ \t]*/
// `; name=value` with a token or quoted-string value; an empty `;` (a trailing one, or `;;`) is tolerated.
const dispositionParameter = /;[ \t]*(?:([!#$%&'*+.^\w`|~-]+)[ \t]*=[ \t]*(?:"((?:[^"\\]|\\[^])*)"|([^ \t";]+))[ \t]*)?/y

/**
 * The text of a quoted parameter. Two conventions meet here: RFC 7230 quoted-pairs (`\"` from curl before 7.81 or
 * with `--form-escape`, `\\` from Python's httpx) and the WHATWG form encoding (`"` as `%22`, CR as `%0D`, LF as
 * `%0A`, from browsers, undici, the openai SDK and curl since 7.81), which the Fetch standard's multipart parser
 * decodes back; the openai SDK's streamed files (`toFile` of a stream, the CLI's uploads) escape `\` too, as `%5C`.
 * As in Go's `mime` package, a backslash escapes only a special character: browsers send Windows paths
 * (`C:\dir\f.jsonl`) unescaped, and `baseName` needs their separators.
 */
const unquote = (text: string): string =>
  text.replace(/\\([()<>@,;:\\"/[\]?=])|%(0A|0D|22|5C)/g, (_, escaped: string | undefined, hex: string) =>
    escaped ?? String.fromCharCode(parseInt(hex, 16)))

/** The parameters of a `Content-Disposition`, names lower-cased; `undefined` when it is malformed or repeats one. */
const dispositionParameters = (header: string): ReadonlyMap<string, string> | undefined => {
  const type = dispositionType.exec(header)
  if (type === null) return undefined
  const parameters = new Map<string, string>()
  dispositionParameter.lastIndex = type[0].length
  while (dispositionParameter.lastIndex < header.length) {
    const match = dispositionParameter.exec(header)
    if (match === null) return undefined
    const [, name, quoted, token] = match
    if (name === undefined) continue
    const key = name.toLowerCase()
    if (parameters.has(key)) return undefined
    parameters.set(key, quoted === undefined ? token : unquote(quoted))
  }
  return parameters
}

/**
 * An RFC 8187 `ext-value` (`charset'language'percent-encoded`) decoded, or `undefined`. Only UTF-8: RFC 8187 makes
 * it the one charset senders may use, and multipasta, which runs first, percent-decodes as UTF-8 whatever the charset.
 */
const decodeExtValue = (value: string): string | undefined => {
  const match = /^([^']*)'[^']*'(.*)$/s.exec(value)
  if (match === null || match[1].toLowerCase() !== "utf-8") return undefined
  try {
    return decodeURIComponent(match[2])
  } catch {
    return undefined
  }
}

/**
 * Reads a part's `Content-Disposition` (as multipasta hands it over: the header's bytes decoded as UTF-8).
 * multipasta reads it too, but its grammar admits no character above U+00FF, so it loses the name of any file
 * called `報告.jsonl` or `€.jsonl`. `filename*` wins over `filename` (RFC 6266, section 4.3). A U+FFFD in the value
 * is what bytes that are not UTF-8 became: refused rather than stored as a name nobody sent.
 */
export const partDisposition = (
  header: string | ReadonlyArray<string> | undefined
): Either.Either<Disposition, MultipartInvalid | FilenameInvalid> => {
  const parameters = typeof header === "string" ? dispositionParameters(header) : undefined
  const name = parameters?.get("name")
  if (parameters === undefined || name === undefined) return Either.left(invalidDisposition())
  const extended = parameters.get("filename*")
  const sent = extended ?? parameters.get("filename")
  if (sent === undefined) return Either.right({ name, filename: undefined })
  if (sent.includes("\uFFFD")) return Either.left(filenameNotUtf8())
  const filename = extended === undefined ? sent : decodeExtValue(extended)
  return filename === undefined ? Either.left(filenameStarInvalid()) : Either.right({ name, filename })
}

export const parseFormData = <E>(
  headers: Record<string, string>,
  limits: FormLimits,
  body: Stream.Stream<Uint8Array, E>
): Stream.Stream<FormEvent, E | MultipartInvalid | FilenameInvalid> =>
  Stream.suspend(() => {
    if (!isMultipartFormData(headers["content-type"])) {
      return Stream.fail(new MultipartInvalid({ reason: "NotMultipart" }))
    }
    let events: Array<FormEvent> = []
    let failure: MultipartInvalid | FilenameInvalid | undefined
    let done = false
    // `isFile` sees every part first, with the `info` later given to `onFile` or `onField`.
    const dispositions = new WeakMap<MP.PartInfo, Disposition>()
    const parser = MP.make({
      headers,
      ...limits,
      // Any part with a filename is a file (no exception for JSON content types, unlike the platform default).
      isFile: (info) => {
        if (done) return false // a part in the epilogue: not the form's (its headers not read)
        const disposition = partDisposition(info.headers["content-disposition"])
        if (Either.isLeft(disposition)) {
          failure ??= disposition.left
          return false
        }
        dispositions.set(info, disposition.right)
        return disposition.right.filename !== undefined
      },
      onField: (info, value) => {
        if (done) return // a part in the epilogue: not the form's
        const disposition = dispositions.get(info) // none when `isFile` refused the part: the form fails
        if (disposition) events.push({ _tag: "Field", key: disposition.name, value: MP.decodeField(info, value) })
      },
      onFile: (info) => {
        if (done) return () => {}
        const { filename, name } = dispositions.get(info)! // `isFile` found a filename
        events.push({ _tag: "FileStart", key: name, filename: filename! })
        return (chunk) => events.push(chunk === null ? { _tag: "FileEnd" } : { _tag: "FileChunk", bytes: chunk })
      },
      onError: (error) => {
        if (done) return // the epilogue, after the closing delimiter: not the form's, and ignored
        failure ??= new MultipartInvalid(
          error._tag === "ReachedLimit" ? { reason: error._tag, limit: error.limit } : { reason: error._tag }
        )
      },
      onDone: () => {
        done = true
      }
    })
    /**
     * Runs a step of the parser. multipasta percent-decodes `filename*` itself, with a `decodeURIComponent` that
     * throws on bad encoding before any callback of ours sees the part (and leaves the parser in no state to go on):
     * that is the form's failure, not a defect.
     */
    const step = (f: () => void) => {
      try {
        f()
      } catch (error) {
        if (!(error instanceof URIError)) throw error
        failure ??= filenameStarInvalid()
      }
    }
    const take = Effect.suspend(() => {
      if (failure !== undefined) return Effect.fail(failure)
      const out = events
      events = []
      return Effect.succeed(out)
    })
    const end = Effect.suspend(() => {
      step(() => parser.end())
      if (!done) failure ??= new MultipartInvalid({ reason: "EndNotReached" })
      return take
    })
    // Longer than any delimiter's dashes: the boundary is within the header (`--`, it, and the closing `--`).
    const dashes = heldDashes(headers["content-type"]!.length + 4)
    // What follows the closing delimiter (an epilogue) is not given to the parser, which read it as a part's headers.
    const write = (piece: Uint8Array) => step(() => done || parser.write(piece))
    return body.pipe(
      Stream.mapEffect((chunk) => Effect.suspend(() => (write(dashes.cut(chunk)), take))),
      Stream.concat(Stream.fromEffect(Effect.suspend(() => (write(dashes.rest()), end)))),
      Stream.flattenIterables
    )
  })

const DASH = 45

/**
 * Why: multipasta tells the closing delimiter (`--boundary--`) by the two dashes after the boundary, looked for in
 * the first piece it is given after it; a body split between those two dashes (a TCP segment's or a chunk's end,
 * one upload in a few thousand) was refused as unfinished (`EndNotReached`, or `BadHeaders` with a CRLF after).
 * So a piece never ends in a run of dashes: the run is held back and given with the next piece. A run longer than
 * `mostHeld` (more than any delimiter's dashes) is given as it is: with two dashes after any delimiter in it, the
 * end is seen.
 */
export const heldDashes = (mostHeld: number) => {
  let held: Uint8Array | undefined
  return {
    /** `chunk` after what was held, less its trailing run of dashes (held for the next). */
    cut: (chunk: Uint8Array): Uint8Array => {
      const piece = held === undefined ? chunk : Buffer.concat([held, chunk])
      let run = 0
      while (run < piece.length && run <= mostHeld && piece[piece.length - 1 - run] === DASH) run++
      held = run === 0 || run > mostHeld ? undefined : piece.slice(piece.length - run)
      return held === undefined ? piece : piece.subarray(0, piece.length - run)
    },
    /** What is held at the body's end. */
    rest: (): Uint8Array => held ?? new Uint8Array(0)
  }
}
