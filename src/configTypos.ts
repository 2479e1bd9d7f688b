/**
 * Variables in the environment that look like a misspelt setting of this server: `MAX_CONCURENT_BATCHES`,
 * `UPSTREAM_FILE`, llama-stack's lower-case `max_concurrent_batches`. The server would run on the default without
 * a word. The names it knows are those its configuration read (`recordingReads` notes each as it is read), and the
 * few it reads from the environment itself.
 */
import { ConfigProvider } from "effect"
import { editDistance } from "./domain/misspeltNames.js"
import { SERVED_BY_CLI } from "./serveMarker.js"

/**
 * Read from `process.env` directly (proxies, in both cases as undici and curl read them; the CLI's colours; Node's
 * warnings silenced; the server `openai-batch serve` started).
 */
const READ_DIRECTLY = ["HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy", "NO_COLOR", "NODE_NO_WARNINGS", SERVED_BY_CLI]
/** Common variables of other tools a couple of edits from a setting: never said, nor suggested. */
const OTHERS = new Set(["NODE_IP", "POD_IP", "HOST_IP", "FTP_PROXY", "ftp_proxy", "ALL_PROXY", "all_proxy"])

/** Kubernetes' service variables (`METRIC_PORT=tcp://…`) are no settings. */
export const isServiceAddress = (value: string | undefined) => /^(tcp|udp|sctp):\/\//.test(value ?? "")

/** The settings a Kubernetes service link took the name of (`METRICS_PORT=tcp://…`, passed over as unset). */
export const serviceLinkedSettings = (env: Readonly<Record<string, string | undefined>>): Array<string> =>
  ["METRICS_PORT"].filter((name) => isServiceAddress(env[name]))

/**
 * How many edits a name may be from a setting: secrets are named freely (an upstream's `api_key_env`, read as it
 * is, may be `ADMIN_API_KEY` or `INFERENCE_API_KEY_2`), so one at most for them (`API_KEY` for `API_KEYS` is said:
 * the server would run without keys).
 */
const editsAllowed = (name: string) => (/KEY|SECRET|TOKEN|PASSWORD/i.test(name) ? 1 : 2)

/** `provider`, noting the name of every variable read through it in `read`. */
export const recordingReads = (provider: ConfigProvider.ConfigProvider) => {
  const read = new Set<string>(READ_DIRECTLY)
  const flat = provider.flattened
  return {
    read,
    provider: ConfigProvider.fromFlat(ConfigProvider.makeFlat({
      load: (path, config, split) => {
        read.add(path.join("_"))
        return flat.load(path, config, split)
      },
      enumerateChildren: flat.enumerateChildren,
      patch: flat.patch
    }))
  }
}

/**
 * Each variable of `env` whose name is not in `known` but is one of them in another case, or (names of 6 characters
 * or more) two edits from one (one for a secret's), with the closest (the one it likely meant).
 */
export const misspeltVariables = (
  env: Readonly<Record<string, string | undefined>>,
  known: ReadonlySet<string>
): Array<{ readonly given: string; readonly meant: string }> => {
  const found: Array<{ readonly given: string; readonly meant: string }> = []
  for (const [name, value] of Object.entries(env)) {
    if (known.has(name) || OTHERS.has(name) || !/^[A-Za-z][A-Za-z0-9_]{3,}$/.test(name) || isServiceAddress(value)) continue
    const upper = name.toUpperCase()
    let meant = known.has(upper) ? upper : undefined
    if (meant === undefined && upper.length >= 6) {
      let closest = editsAllowed(name) + 1
      for (const k of known) {
        // Names of lengths further apart than that are never closer (56 ms of every start in a test's environment).
        const d = k.length >= 6 && Math.abs(k.length - upper.length) < closest ? editDistance(upper, k) : closest
        if (d < closest) [closest, meant] = [d, k]
      }
    }
    if (meant !== undefined) found.push({ given: name, meant })
  }
  return found
}
