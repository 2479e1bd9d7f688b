/** A request's target as the client sent it: what a 404's message and a request's log line say back. */
import type * as HttpServerRequest from "@effect/platform/HttpServerRequest"

/** What the router strips from a request target in absolute form (find-my-way's own pattern). */
export const ABSOLUTE_FORM = /^https?:\/\/(.*?)\//

/**
 * The target as the client sent it, for what is said back (a 404's message, a request's log line): under a mount
 * (`HttpRouter.mountApp("/openai", …)`) the router's `url` lacks the prefix, which `originalUrl` keeps; in origin
 * form, as the router reads a target in absolute form (and a web handler's `originalUrl`, the whole URL).
 */
export const sentTarget = (request: HttpServerRequest.HttpServerRequest): string =>
  request.originalUrl.replace(ABSOLUTE_FORM, "/")
