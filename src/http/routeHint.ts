import type * as HttpServerRequest from "@effect/platform/HttpServerRequest"
import { StandardEndpoint } from "../domain/Batches.js"
import { notFound } from "../domain/Errors.js"
import { echo } from "../domain/Text.js"
import { sentTarget } from "./sentTarget.js"

/**
 * What an unknown route's 404 adds to OpenAI's "Invalid URL (…)" when the path is the API's under another base URL:
 * llama-stack's `/v1/openai/v1` prefix (a client moved over with its base URL), or none at all (a base URL without
 * `/v1`). A client's one change, said where it looks; and for an inference call, that this server runs batches.
 */
const API_ROOTS = /^\/(files|batches|uploads|models)(\/|\?|$)/
const LLAMA_STACK_PREFIX = /^\/v1\/openai\/v1\//

const routeHint = (target: string): string => {
  // An inference call sent here as to the upstream (a gateway's one base URL serves both): what this server is.
  if ((StandardEndpoint.literals as ReadonlyArray<string>).includes(target.split("?")[0]!)) {
    return " This server runs batches of such requests (the Files and Batches APIs); send a single one to the upstream itself."
  }
  if (LLAMA_STACK_PREFIX.test(target)) {
    return " This server serves the OpenAI API under /v1, not llama-stack's /v1/openai/v1: end the client's base URL with /v1."
  }
  if (API_ROOTS.test(target)) return " The API is under /v1: end the client's base URL with /v1."
  return ""
}

/** The 404 of a route that does not exist, in OpenAI's words and with the hint above. */
export const invalidUrl = (request: HttpServerRequest.HttpServerRequest) => {
  const target = sentTarget(request)
  return notFound(`Invalid URL (${request.method} ${echo(target)})${routeHint(target)}`)
}
