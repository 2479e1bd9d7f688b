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

/**
 * A PostgreSQL URL in words, never with its credentials: `PostgreSQL at host:5432/db`, and `, schema batches`: the
 * schema in use (`inUse`, as the server said it) or else the one its `options` pick (`-c search_path=batches,public`):
 * nodes of several schemas on one database told apart. `PostgreSQL` when it does not parse.
 */
export const postgresText = (url: string, inUse?: string) => {
  const parsed = URL.canParse(url) ? new URL(url) : undefined
  if (parsed === undefined) return "PostgreSQL"
  const schema = inUse ?? schemaOf(parsed.searchParams.get("options") ?? "")
  return `PostgreSQL at ${parsed.host}${parsed.pathname}${schema === undefined ? "" : `, schema ${schema}`}`
}

/**
 * The first schema of a libpq `options` value's `search_path` (`-c search_path=a,b` or `--search_path=a`): the tables',
 * when it exists (PostgreSQL takes the next otherwise). `"$user"` (the user's own schema) is not named.
 */
const schemaOf = (options: string): string | undefined => {
  const path = /(?:^|\s)(?:-c\s*|--)search_path\s*=\s*(\S+)/.exec(options)?.[1]
  const first = path?.split(",")[0]?.replace(/^"(.*)"$/, "$1")
  return first === undefined || first === "" || first === "$user" ? undefined : first
}
