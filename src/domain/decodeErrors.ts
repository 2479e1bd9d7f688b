/**
 * A request that does not match its schema, in OpenAI's words: a 400 naming the first offending parameter, for the
 * API's handlers (`http/Middleware.ts`) and for a service called with a body of the same shape (`BatchCommands`).
 */
import * as HttpApiError from "@effect/platform/HttpApiError"
import { Effect, type ParseResult } from "effect"
import { type ApiError, invalidRequest } from "./Errors.js"
import { echo } from "./Text.js"

/**
 * The type a schema's "Expected …, actual …" message asks for, in a user's words (the schema's own text names
 * internal types); undefined for other messages, such as a value outside a list of literals.
 */
const expectedType = (message: string): string | undefined => {
  const primitive = /^Expected (string|number|boolean)\b/.exec(message)
  if (primitive !== null) return `a ${primitive[1]}`
  if (message.startsWith("Expected {")) return "an object"
  if (message.startsWith("Expected ReadonlyArray") || message.startsWith("Expected an array")) return "an array"
  return undefined
}

/**
 * What a schema's "…, actual X" message was given, in a user's words (`an array` for a query parameter given more
 * than once); undefined when the message says no more than the value.
 */
const actualType = (message: string): string | undefined => {
  const actual = /, actual (.)/.exec(message)?.[1]
  switch (actual) {
    case "[":
      return "an array"
    case "{":
      return "an object"
    case "\"":
      return "a string"
    case "t":
    case "f":
      return "a boolean"
    case "n":
      return "null"
    default:
      return actual !== undefined && /[-\d]/.test(actual) ? "a number" : undefined
  }
}

/** A parameter's path as OpenAI writes it: `metadata.key`, `only[0]`. */
const paramName = (path: ReadonlyArray<PropertyKey>) =>
  path.reduce<string>((name, key, i) => (typeof key === "number" ? `${name}[${key}]` : i === 0 ? String(key) : `${name}.${String(key)}`), "")

/** A literal a schema's "Expected "x", actual …" message asks for, as written; undefined for other messages. */
const expectedLiteral = (message: string): string | undefined =>
  /^Expected ("(?:[^"\\]|\\.)*"|-?\d[\d.e+-]*|true|false|null), actual /.exec(message)?.[1]

/**
 * The literals the issues at `path` ask for, when they ask for several and nothing else (a union of literals gives
 * an issue per member: the first alone named one of the values allowed as if it were the only one).
 */
const literalsAt = (issues: HttpApiError.HttpApiDecodeError["issues"], path: ReadonlyArray<PropertyKey>) => {
  const same = issues.filter((i) => i.path.length === path.length && i.path.every((k, n) => k === path[n]))
  // An optional member's `Expected undefined` aside; any other kind of value allowed, and the list would be short of it.
  const asked = same.filter((i) => !i.message.startsWith("Expected undefined,")).map((i) => i._tag === "Type" ? expectedLiteral(i.message) : undefined)
  const literals = new Set(asked.filter((l): l is string => l !== undefined))
  return literals.size > 1 && literals.size === new Set(asked).size ? [...literals] : undefined
}

/** `HttpApiDecodeError` → 400 naming the first offending parameter. */
export const fromDecodeError = (e: HttpApiError.HttpApiDecodeError): ApiError => {
  const issue = e.issues[0]
  if (issue === undefined) return invalidRequest(e.message)
  const param = issue.path.length > 0 ? paramName(issue.path) : null
  if (issue._tag === "Missing" && param !== null) {
    return invalidRequest(`Missing required parameter: '${param}'.`, param, "missing_required_parameter")
  }
  if (issue._tag === "Unexpected" && param !== null) {
    return invalidRequest(`Unknown parameter: '${echo(param)}'. ${issue.message}`, echo(param), "unknown_parameter")
  }
  const type = issue._tag === "Type" ? expectedType(issue.message) : undefined
  if (type !== undefined) {
    const got = actualType(issue.message)
    const message = param === null
      ? `The request body must be ${type === "an object" ? "a JSON object" : type}.`
      : `Invalid type for '${param}': expected ${type}${got === undefined ? "" : `, but got ${got} instead`}.`
    return invalidRequest(message, param, "invalid_type")
  }
  const literals = literalsAt(e.issues, issue.path)
  const said = literals === undefined
    ? issue.message
    : `Expected one of ${literals.join(", ")}, actual ${issue.message.slice(issue.message.indexOf(", actual ") + 9)}`
  const message = param === null ? `Invalid request: ${said}` : `Invalid value for '${param}': ${said}`
  return invalidRequest(message, param, "invalid_value")
}

/** A schema's parse error, as `fromDecodeError` words it. */
export const fromParseError = (e: ParseResult.ParseError): Effect.Effect<never, ApiError> =>
  Effect.flatMap(HttpApiError.HttpApiDecodeError.fromParseError(e), (decodeError) => Effect.fail(fromDecodeError(decodeError)))
