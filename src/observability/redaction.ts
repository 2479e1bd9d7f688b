/**
 * Names of headers and query parameters that may carry a credential, beyond the platform's list of headers
 * (`authorization`, `cookie`, `x-api-key`…): the server spans record every request header and the URL's query, and a
 * client may send a key under any name (`authentication`, `x-custom-token`, `?api_key=`).
 */
export const CREDENTIAL_NAME = /auth|token|secret|key|cookie|session|passw|credential|signature/i

/** `query` (without its `?`) with the value of each parameter whose name looks like a credential's replaced. */
export const redactQuery = (query: string): string =>
  query.split("&").map((pair) => {
    const at = pair.indexOf("=")
    const name = at === -1 ? pair : pair.slice(0, at)
    return at !== -1 && CREDENTIAL_NAME.test(safeDecode(name)) ? `${name}=REDACTED` : pair
  }).join("&")

const safeDecode = (text: string) => {
  try {
    return decodeURIComponent(text.replace(/\+/g, " "))
  } catch {
    return text
  }
}

/** Header names whose values are an upstream's credentials (`Authorization`, `X-Api-Key`, `X-Auth-Token`…). */
const CREDENTIAL_HEADER = /^(proxy-)?authorization$|(^|-)(api-?key|key|token|secret|password)$/i

/** Secrets shorter than this are not looked for in text (a header value such as `internal` would be everywhere). */
const MIN_SECRET_LENGTH = 8

/**
 * The credentials an upstream's calls carry: its key, and the values of its credential headers (a scheme's token
 * alone too: `Bearer sk-…` is echoed as `sk-…`), each also as JSON writes it in a string (`/` as `\/` too, as some
 * servers write it), longest first.
 */
export const upstreamSecrets = (apiKey: string | undefined, headers: Readonly<Record<string, string>>): ReadonlyArray<string> => {
  const values = Object.entries(headers).filter(([name]) => CREDENTIAL_HEADER.test(name)).map(([, value]) => value.trim())
  const tokens = values.map((value) => value.split(/\s+/).at(-1) ?? "")
  const plain = [...(apiKey === undefined ? [] : [apiKey]), ...values, ...tokens].filter((s) => s.length >= MIN_SECRET_LENGTH)
  const escaped = plain.map((s) => JSON.stringify(s).slice(1, -1))
  const secrets = new Set([...plain, ...escaped, ...escaped.map((s) => s.replaceAll("/", "\\/"))])
  return [...secrets].sort((a, b) => b.length - a.length)
}

/**
 * `text` with each of `secrets` in it replaced by `REDACTED`: a gateway may quote the key it was sent in its error
 * ("Received API Key = sk-…"), which went to the project's error file and the logs. (`REDACTED` needs no escape in a
 * JSON string: the text stays the JSON it was.)
 */
export const withoutSecrets = (text: string, secrets: ReadonlyArray<string>): string => {
  let out = text
  for (const secret of secrets) if (out.includes(secret)) out = out.replaceAll(secret, "REDACTED")
  return out
}
