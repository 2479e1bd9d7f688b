/**
 * A duration as a setting writes it: Effect's words (`10 seconds`, `500 millis`, `2 hours`) or the short form of Go,
 * Kubernetes and Prometheus (`10s`, `500ms`, `1m30s`, `2h`, `1.5s`; `d` for days), which operators write in a
 * container's environment out of habit (`LEASE_TTL=15s` was refused).
 */
import { Duration, Option } from "effect"

const UNIT_MILLIS: Readonly<Record<string, number>> = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 }
const SHORT_FORM = /^(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+$/

/** The duration `text` writes, if it writes one. */
export const parseDuration = (text: string): Option.Option<Duration.Duration> => {
  const trimmed = text.trim()
  if (!SHORT_FORM.test(trimmed)) return Duration.decodeUnknown(trimmed)
  let millis = 0
  for (const [, amount, unit] of trimmed.matchAll(/(\d+(?:\.\d+)?)(ms|s|m|h|d)/g)) millis += Number(amount) * UNIT_MILLIS[unit!]!
  return Option.some(Duration.millis(millis))
}

/** How a duration is written, for the messages refusing one. */
export const DURATION_EXAMPLES = "`10 seconds`, `10s`, `5 minutes`, `1m30s` or `500ms`"
