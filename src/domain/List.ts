/** The fields of an OpenAI list page (`GET /v1/files`, `GET /v1/batches`): ids of its ends and whether more follow. */
export const listPage = <A extends { readonly id: string }>(data: ReadonlyArray<A>, hasMore: boolean) => ({
  object: "list" as const,
  data,
  first_id: data[0]?.id ?? null,
  last_id: data.at(-1)?.id ?? null,
  has_more: hasMore
})

/**
 * Constructor options for response objects built from stored rows, which their row schema has already decoded: the
 * class's own check would validate every field again on each read (the response encoder checks them once more).
 */
export const trusted = { disableValidation: true } as const
