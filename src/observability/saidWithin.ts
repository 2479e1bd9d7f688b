/**
 * Lines said at most once in a while, by kind: a fault that every request or call meets (a full disk, a refused
 * key, a `Retry-After`) is said once, then again only after its interval, not once per request.
 */

/** How often a line said "at most once a minute" is. */
export const ONCE_A_MINUTE_MS = 60_000

/** `due(key, now, every)`: whether a line of kind `key` is to be said at `now` (epoch ms); if so, it counts as said. */
export const saidWithin = () => {
  const saidAt = new Map<string, number>()
  return (key: string, now: number, every: number): boolean => {
    const last = saidAt.get(key)
    if (last !== undefined && now - last < every) return false
    saidAt.set(key, now)
    return true
  }
}
