/**
 * Which batches `list` keeps (the API lists every one: the filter is the client's, page after page): those of the
 * statuses given, whose metadata has every pair given (`--metadata sweep=lr-3e-4`: one sweep's among hundreds).
 * Undefined when nothing is asked: every batch, a page a call.
 */
import type { Batch } from "openai/resources/batches"

export const listFilter = (
  statuses: ReadonlyArray<string>,
  metadata: Readonly<Record<string, string>>
): ((batch: Batch) => boolean) | undefined => {
  const pairs = Object.entries(metadata)
  if (statuses.length === 0 && pairs.length === 0) return undefined
  return (batch) =>
    (statuses.length === 0 || statuses.includes(batch.status)) &&
    pairs.every(([key, value]) => (batch.metadata as Record<string, string> | null | undefined)?.[key] === value)
}
