/** URLs as the logs show them. */

/** A URL without what may carry a secret: its user and password, its query. */
export const withoutCredentials = (url: string) => {
  try {
    const parsed = new URL(url)
    parsed.username = ""
    parsed.password = ""
    parsed.search = ""
    return parsed.href
  } catch {
    return url
  }
}
