/**
 * What the line of a request whose call failed after it was sent says of the failure (`upstream_unreachable`): fixed
 * words for the error's code, never the HTTP client's text, which the server's log keeps.
 */
/** Fixed words for the codes a call failing after it was sent comes with (`failureKind` "transport"). */
const TRANSPORT_WORDS: Readonly<Record<string, string>> = {
  UND_ERR_SOCKET: "the upstream closed the connection",
  ECONNRESET: "the connection was reset",
  EPIPE: "the connection was broken",
  ETIMEDOUT: "the connection timed out",
  UND_ERR_RES_CONTENT_LENGTH_MISMATCH: "the answer ended short of its Content-Length"
}

/** The first `code` along an error's `cause` chain. */
const codeOf = (error: unknown): string | undefined => {
  let at: unknown = error
  for (let depth = 0; depth < 8 && typeof at === "object" && at !== null; depth++) {
    const code = (at as { code?: unknown }).code
    if (typeof code === "string") return code
    at = (at as { cause?: unknown }).cause
  }
  return undefined
}

/**
 * What a failed call's line says of it: fixed words for its code, never the client's text, which names the URL,
 * the upstream's address, or a certificate's other hosts (a project read its upstream's internal host, port and
 * path in its error file). The server's log has the text.
 */
export const transportFailureText = (error: unknown): string => {
  const code = codeOf(error)
  const words = code === undefined ? undefined : TRANSPORT_WORDS[code] ?? (code.startsWith("HPE_") ? "its answer was not valid HTTP" : undefined)
  return `${words ?? "the connection failed"}${code !== undefined && /^[A-Z0-9_]{1,40}$/.test(code) ? ` (${code})` : ""}`
}
