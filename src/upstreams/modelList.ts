/**
 * An upstream's `GET /models` answer read as the ids it lists (OpenAI's `{"data": [{"id": …}, …]}`), at most
 * `MAX_LISTED_MODELS` of them.
 */

/**
 * The most models kept of one upstream's list (its first): `GET /v1/models` and every route lookup go over them, and
 * a list of 200,000 (26 MB, under the answer bound) held 40 listings' `/v1/health` 26 s and took 700 MB.
 */
export const MAX_LISTED_MODELS = 10_000

/** The ids `text` lists (the first `MAX_LISTED_MODELS`) and how many it lists; undefined when it is no model list. */
export const listedModels = (text: string): { readonly ids: ReadonlyArray<string>; readonly total: number } | undefined => {
  let data: unknown
  try {
    data = JSON.parse(text)?.data
  } catch {
    return undefined // not JSON
  }
  if (!Array.isArray(data)) return undefined
  const ids = data.flatMap((m) => (typeof m?.id === "string" ? [m.id as string] : []))
  return { ids: ids.length > MAX_LISTED_MODELS ? ids.slice(0, MAX_LISTED_MODELS) : ids, total: ids.length }
}
