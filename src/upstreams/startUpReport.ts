/**
 * What a node says of an upstream at start, from the answer to its first `GET /models` (`Upstream.ts` asks): down
 * when it could not be reached; else up and what it lists, or what to check — a base URL without its version path
 * (a 404), a key refused (401, 403) or a proxy's credentials (407), model names its entry gives that it does not list.
 */
import * as HttpClientError from "@effect/platform/HttpClientError"
import { Cause, Exit, Option } from "effect"
import { failureKind } from "../inference/UpstreamHttpClient.js"
import { servesAnyModel, type UpstreamSpec } from "./UpstreamSpec.js"

export interface ReportLine {
  readonly level: "Info" | "Warning" | "Error"
  readonly message: string
}

export type StartUpReport =
  | { readonly _tag: "Down"; readonly reason: string }
  | { readonly _tag: "Lines"; readonly lines: ReadonlyArray<ReportLine> }

const lines = (...lines: ReadonlyArray<ReportLine>): StartUpReport => ({ _tag: "Lines", lines })

/** The report on `spec` from its `GET /models`: the status it answered, or how it failed; `listed`, what it listed. */
export const startUpReport = (
  spec: UpstreamSpec,
  answer: Exit.Exit<number, unknown>,
  listed: Option.Option<ReadonlyArray<string>>
): StartUpReport => {
  const named = servesAnyModel(spec) ? "" : `; serves ${spec.models.join(", ")}`
  const asked = `GET ${spec.baseUrl}/models`
  if (Exit.isFailure(answer)) {
    const error = Cause.squash(answer.cause)
    const reason = String((error as Error)?.message ?? error).split("\n")[0]
    if (HttpClientError.isHttpClientError(error) && failureKind(error) === "connect") {
      return { _tag: "Down", reason: `unreachable at ${spec.baseUrl}: ${reason}` }
    }
    return lines({ level: "Warning", message: `Upstream ${spec.name} did not answer ${asked}: ${reason}${named}` })
  }
  const status = answer.value
  if (status === 404) {
    return lines({
      level: "Error",
      message: `Upstream ${spec.name} answered 404 to ${asked}: check its base URL (it must include the API's version ` +
        `path, as in http://host:8000/v1)${named}`
    })
  }
  // Up, but its requests would most likely be refused the same way: every line a 401.
  const keyCheck = Option.isNone(spec.apiKey)
    ? `it has no key: give it one (${spec.keyFrom === "INFERENCE_API_KEY" ? "INFERENCE_API_KEY" : "api_key or api_key_env"})`
    : `check its key (from ${spec.keyFrom ?? "its entry"})`
  const check = status === 401
    ? `the upstream refused the call's credentials; ${keyCheck}`
    : status === 403
    ? `the upstream refused the call's credentials, or they may not list models; ${keyCheck}`
    : status === 407
    ? "the proxy refused its credentials (check the user and password in HTTPS_PROXY or HTTP_PROXY)"
    : undefined
  if (check !== undefined) {
    return lines({
      level: "Warning",
      message: `Upstream ${spec.name} answered ${status} to ${asked}: ${check}; its requests will likely be refused too${named}`
    })
  }
  const models = Option.match(listed, {
    onNone: () => `GET /models answered ${status}`,
    onSome: (ids) => `lists ${ids.length} model(s): ${ids.slice(0, 20).join(", ")}${ids.length > 20 ? ", …" : ""}`
  })
  const up: ReportLine = { level: "Info", message: `Upstream ${spec.name} at ${spec.baseUrl} is up; ${models}${named}` }
  // The file's names are taken as they are (a server may answer to names it does not list), but most often one it
  // does not list is a typo: every request naming it would come back a 404. An alias is looked for by the name sent.
  const unlisted = Option.match(listed, {
    onNone: () => [],
    onSome: (ids) => [...new Set(spec.models.map((m) => spec.aliases?.get(m) ?? m))].filter((m) => m !== "*" && !ids.includes(m))
  })
  if (unlisted.length === 0) return lines(up)
  return lines(up, {
    level: "Warning",
    message: `Upstream ${spec.name} does not list ${unlisted.map((m) => `'${m}'`).join(", ")}, which its entry names: ` +
      `requests naming ${unlisted.length === 1 ? "it" : "them"} may be refused by the server (check the spelling)`
  })
}
