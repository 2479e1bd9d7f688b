/** URLs as the logs show them. */

/**
 * A URL without what may carry a secret: its user and password, its query. Text that is no URL with a host (one that
 * does not parse, or `user:pw@proxy:3128` written without a scheme, which parses as scheme `user:`) is shown cut
 * before its last `@`.
 */
export const withoutCredentials = (url: string) => {
  try {
    const parsed = new URL(url)
    if (parsed.host !== "") {
      parsed.username = ""
      parsed.password = ""
      parsed.search = ""
      return parsed.href
    }
  } catch {
    // not a URL: cut below
  }
  return url.replace(/^([a-z][\w+.-]*:\/\/)?.*@/i, "$1…@")
}

/** A PostgreSQL URL in words, never with its credentials: `PostgreSQL at host:5432/db` (`PostgreSQL` when it does not parse). */
export const postgresText = (url: string) => {
  const parsed = URL.canParse(url) ? new URL(url) : undefined
  return parsed === undefined ? "PostgreSQL" : `PostgreSQL at ${parsed.host}${parsed.pathname}`
}
