/** A request's target as the client sent it: what a 404's message and a request's log line say back. */
import type * as HttpServerRequest from "@effect/platform/HttpServerRequest"

/** What the router strips from a request target in absolute form (find-my-way's own pattern). */
export const ABSOLUTE_FORM = /^https?:\/\/(.*?)\//

/**
 * The target as the client sent it, for what is said back (a 404's message, a request's log line): under a mount
 * (`HttpRouter.mountApp("/openai", …)`) the router's `url` lacks the prefix, which `originalUrl` keeps (in origin
 * form: a web handler's `originalUrl` is the whole URL).
 */
export const sentTarget = (request: HttpServerRequest.HttpServerRequest): string =>
  request.originalUrl === request.url ? request.url : request.originalUrl.replace(ABSOLUTE_FORM, "/")
