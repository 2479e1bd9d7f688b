/**
 * Variables in the environment that look like a misspelt setting of this server: `MAX_CONCURENT_BATCHES`,
 * `UPSTREAM_FILE`, llama-stack's lower-case `max_concurrent_batches`. The server would run on the default without
 * a word. The names it knows are those its configuration read (`recordingReads` notes each as it is read), and the
 * few it reads from the environment itself.
 */
import { ConfigProvider } from "effect"

/** Read from `process.env` directly (proxies, in both cases as undici and curl read them; the CLI's colours). */
const READ_DIRECTLY = ["HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy", "NO_COLOR"]

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

/** Edits (insertions, deletions, substitutions) from `a` to `b`: a dozen lines, not worth a dependency. */
const distance = (a: string, b: string): number => {
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j)
  for (let i = 1; i <= a.length; i++) {
    const row = [i]
    for (let j = 1; j <= b.length; j++) {
      row[j] = Math.min(previous[j]! + 1, row[j - 1]! + 1, previous[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1))
    }
    previous = row
  }
  return previous[b.length]!
}

/**
 * Each name of `given` that is not in `known` but is one of them in another case, or (names of 6 characters or
 * more) two edits from one, with the one it likely meant.
 */
export const misspeltVariables = (
  given: Iterable<string>,
  known: ReadonlySet<string>
): Array<{ readonly given: string; readonly meant: string }> => {
  const found: Array<{ readonly given: string; readonly meant: string }> = []
  for (const name of given) {
    if (known.has(name) || !/^[A-Za-z][A-Za-z0-9_]{3,}$/.test(name)) continue
    const upper = name.toUpperCase()
    const meant = [...known].find((k) => k === upper) ??
      (upper.length >= 6 ? [...known].find((k) => k.length >= 6 && distance(upper, k) <= 2) : undefined)
    if (meant !== undefined) found.push({ given: name, meant })
  }
  return found
}
