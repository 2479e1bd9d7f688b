/**
 * What to do about a call that could not connect, where the client's words do not say it: a certificate signed by a
 * private CA, and a proxy's failures, which undici words as the upstream's (a proxy that is down read as the
 * upstream unreachable; its 407 said nothing of its password). Added to the failure's text in the server's log and
 * the upstream's down line, never to a line's error. Pure.
 */
import { type Proxies, proxiedCall } from "./proxies.js"

/** Certificate checks that fail for a certificate whose CA is not among the trusted ones (Node's codes). */
const UNTRUSTED_CERTIFICATE: ReadonlySet<string> = new Set([
  "UNABLE_TO_VERIFY_LEAF_SIGNATURE",
  "UNABLE_TO_GET_ISSUER_CERT",
  "UNABLE_TO_GET_ISSUER_CERT_LOCALLY",
  "SELF_SIGNED_CERT_IN_CHAIN",
  "DEPTH_ZERO_SELF_SIGNED_CERT",
  "CERT_UNTRUSTED"
])

/** A proxy's refusal as undici words it: `Proxy response (407) !== 200 when HTTP Tunneling`, `Proxy Authentication Required (407)`. */
const PROXY_REFUSAL = /^Proxy\b.*\((\d{3})\)/

/** The status of a proxy's refusal an error's `message` words, if it is one. */
export const proxyRefusalStatus = (message: string): number | undefined => {
  const refusal = PROXY_REFUSAL.exec(message)
  return refusal === null ? undefined : Number(refusal[1])
}

/** The proxy a call to `url` goes through, as host and port; none when `NO_PROXY` sends it straight. */
const proxyOf = (url: string, proxies: Proxies) => {
  const proxy = url.startsWith("https:") ? proxies.https : proxies.http
  if (proxy === undefined || !URL.canParse(proxy) || !URL.canParse(url) || !proxiedCall(new URL(url), proxies.noProxy)) return undefined
  const at = new URL(proxy)
  return { url: `${at.protocol}//${at.host}`, hostname: at.hostname.replace(/^\[|\]$/g, ""), port: at.port || (at.protocol === "https:" ? "443" : "80") }
}

/** The proxy a call to `url` goes to (none where `NO_PROXY` sends it straight), without its credentials. */
export const proxyShown = (url: string, proxies: Proxies): string | undefined => proxyOf(url, proxies)?.url

/**
 * `"; …"` to add to the text of `error`, a failed call to `url` (`proxies`: those set; `extraCaCerts`: whether
 * `NODE_EXTRA_CA_CERTS` is set; `target`: what the call was for, an upstream or, for the CLI, the batch server), or
 * `""` when its words say enough. A proxy is named without its credentials.
 */
export const connectionHint = (
  error: Error,
  url: string,
  proxies: Proxies | undefined,
  extraCaCerts = false,
  target: "upstream" | "server" = "upstream"
): string => {
  const { code, address, hostname, port } = error as { code?: unknown; address?: unknown; hostname?: unknown; port?: unknown }
  const proxy = proxies === undefined ? undefined : proxyOf(url, proxies)
  const status = proxyRefusalStatus(error.message)
  if (status !== undefined) {
    const theProxy = `the proxy${proxy === undefined ? "" : ` at ${proxy.url}`}`
    return status === 407
      ? "; the proxy refused its credentials: check the user and password in HTTPS_PROXY or HTTP_PROXY (percent-encoded)"
      : status >= 500
      ? `; ${theProxy} could not reach the ${target} (its answer, ${status}): is the ${target} up, and reachable from the proxy?`
      : `; ${theProxy} refused the connection (its answer, ${status}, not the ${target}'s)`
  }
  if (typeof code === "string" && UNTRUSTED_CERTIFICATE.has(code)) {
    // An `http:` upstream has no certificate: the one refused is its `https:` proxy's; behind an `https:` proxy, an
    // `https:` upstream's may be either (undici's error does not say which).
    const proxied = proxy?.url.startsWith("https:") === true
    const whose = !proxied ? "its" : url.startsWith("http:") ? `the proxy's (${proxy.url})` : `its or the proxy's (${proxy.url})`
    const trust = extraCaCerts
      ? "the file NODE_EXTRA_CA_CERTS names does not hold that CA (Node read it at start)"
      : "for a private CA, start the server with NODE_EXTRA_CA_CERTS naming a PEM file of it"
    return `; ${whose} TLS certificate is signed by a CA this server does not trust: ${trust}`
  }
  if (proxy !== undefined && reachedProxy(url, proxy, address ?? hostname, port)) {
    return `; that is the proxy (${proxy.url}, from HTTPS_PROXY or HTTP_PROXY), not the ${target}`
  }
  return ""
}

/**
 * Whether a connection that failed at `host` (an address, or a name that did not resolve) and `port` was the one to
 * the proxy: its name, or (a name resolved to an address) its port where the upstream's is another.
 */
const reachedProxy = (url: string, proxy: NonNullable<ReturnType<typeof proxyOf>>, host: unknown, port: unknown) => {
  const samePort = port === undefined || String(port) === proxy.port
  if (host === proxy.hostname) return samePort
  const upstream = URL.canParse(url) ? new URL(url) : undefined
  const upstreamPort = upstream === undefined ? undefined : upstream.port || (upstream.protocol === "https:" ? "443" : "80")
  return port !== undefined && samePort && upstreamPort !== proxy.port
}
