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
