/**
 * An incoming `traceparent` read as W3C Trace Context says, before the platform's tracer reads it (a request
 * listener on the Node server, ahead of the platform's handler). The platform took upper-case hex and all-zero ids:
 * unrelated callers sending the zero id shared one `trace_id` in the logs, and a log's upper-case id matched no
 * exported span. It dropped a later version's header, which the specification says to read as far as version 00
 * goes. A header the specification says to ignore is removed: the request starts a trace of its own.
 */
import type { IncomingMessage, Server } from "node:http"

const TRACEPARENT = /^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$/
const ZEROS = /^0+$/

/** `value` as a version 00 `traceparent`, or undefined when W3C Trace Context says to ignore it. */
export const w3cTraceparent = (value: string): string | undefined => {
  const parts = TRACEPARENT.exec(value)
  if (parts === null) return undefined
  const [, version, traceId, parentId, flags, rest] = parts as unknown as [string, string, string, string, string, string | undefined]
  if (version === "ff" || (version === "00" && rest !== undefined)) return undefined
  if (ZEROS.test(traceId) || ZEROS.test(parentId)) return undefined
  return version === "00" ? value : `00-${traceId}-${parentId}-${flags}`
}

/** Rewrites or removes each request's `traceparent` as `w3cTraceparent` says (a header present is rare: one test). */
export const readTraceparentAsW3c = (server: Server): void => {
  server.on("request", (request: IncomingMessage) => {
    const value = request.headers.traceparent
    if (value === undefined) return
    const read = typeof value === "string" ? w3cTraceparent(value) : undefined
    if (read === undefined) delete request.headers.traceparent
    else if (read !== value) request.headers.traceparent = read
  })
}
