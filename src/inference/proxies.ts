/**
 * The proxy variables (`HTTP_PROXY`, `HTTPS_PROXY`, `NO_PROXY`, lower-case too) as undici's `EnvHttpProxyAgent`
 * reads them, for the upstreams' client (`UpstreamHttpClient.ts`) and the CLI's (`cli/streamingFetch.ts`): what is
 * set, what undici cannot use, what it does not match. Pure.
 */
import { ConfigError } from "effect"

/** The proxies calls go through. */
export interface Proxies {
  readonly http: string | undefined
  readonly https: string | undefined
  readonly noProxy: string
}

type ProxyVariables = readonly [lower: string, upper: string]
const HTTP_PROXY: ProxyVariables = ["http_proxy", "HTTP_PROXY"]
const HTTPS_PROXY: ProxyVariables = ["https_proxy", "HTTPS_PROXY"]

/** The variable of a pair undici reads, the lower-case one first (set empty, it hides the other), when not empty. */
const proxyVariable = (env: Record<string, string | undefined>, [lower, upper]: ProxyVariables) => {
  const name = env[lower] !== undefined ? lower : upper
  const value = env[name]
  return value ? { name, value } : undefined
}

/**
 * The proxies of `env` as undici's `EnvHttpProxyAgent` reads them (`https:` calls go through the `http:` proxy when
 * no other is set); undefined when there is none.
 */
export const proxiesOf = (env: Record<string, string | undefined>): Proxies | undefined => {
  const http = proxyVariable(env, HTTP_PROXY)?.value
  const https = proxyVariable(env, HTTPS_PROXY)?.value ?? http
  return http === undefined && https === undefined ? undefined : { http, https, noProxy: env.no_proxy ?? env.NO_PROXY ?? "" }
}

/** The proxies undici's `ProxyAgent` can use. */
const PROXY_PROTOCOLS: ReadonlySet<string> = new Set(["http:", "https:", "socks5:", "socks:"])

/**
 * What is wrong with the proxy variables of `env` as undici would read them, if anything: each one set must be an
 * `http:`, `https:` or `socks5:` URL (`socks:` too), its user name and password percent-encoded (undici threw on
 * either at the dispatcher's making: a stack trace for an answer). The value is not repeated: it may hold a password.
 */
export const proxyProblem = (env: Record<string, string | undefined>): ConfigError.ConfigError | undefined => {
  for (const variables of [HTTP_PROXY, HTTPS_PROXY]) {
    const set = proxyVariable(env, variables)
    if (set === undefined) continue
    const { name, value } = set
    const url = URL.canParse(value) ? new URL(value) : undefined
    if (url === undefined || !PROXY_PROTOCOLS.has(url.protocol)) {
      return ConfigError.InvalidData([name], "Expected a URL starting with http://, https:// or socks5:// (http://proxy.example:3128)")
    }
    try {
      decodeURIComponent(url.username)
      decodeURIComponent(url.password)
    } catch {
      return ConfigError.InvalidData([name], "Its user name or password is not percent-encoded (a % is written %25)")
    }
  }
  return undefined
}

/**
 * The `NO_PROXY` entries undici does not match, which curl and Go do (a CIDR range: `10.0.0.0/8`): calls to those
 * hosts go through the proxy. Empty when none (or no proxy is set).
 */
export const unmatchedNoProxy = (env: Record<string, string | undefined>): ReadonlyArray<string> => {
  const proxies = proxiesOf(env)
  return proxies === undefined ? [] : proxies.noProxy.split(/[,\s]+/).filter((entry) => entry.includes("/"))
}

/**
 * Whether undici's `EnvHttpProxyAgent` sends a call to `url` through its proxy, by its reading of `noProxy` (each
 * entry a host and its subdomains, `.host` and `*.host` alike, with an optional `:port`; `*` alone: no call), so that
 * a hint names a proxy only for the calls that went to it. undici's rule, which it does not export.
 */
export const proxiedCall = (url: URL, noProxy: string): boolean => {
  if (noProxy === "*") return false
  const hostname = url.host.replace(/:\d*$/, "").toLowerCase()
  const port = Number.parseInt(url.port, 10) || (url.protocol === "https:" ? 443 : url.protocol === "http:" ? 80 : 0)
  return !noProxy.split(/[,\s]/).filter((entry) => entry !== "").some((entry) => {
    const parsed = /^(.+):(\d+)$/.exec(entry)
    const host = (parsed ? parsed[1]! : entry).replace(/^\*?\./, "").toLowerCase()
    if (parsed && Number.parseInt(parsed[2]!, 10) !== port) return false
    return hostname === host || hostname.endsWith(`.${host}`)
  })
}
