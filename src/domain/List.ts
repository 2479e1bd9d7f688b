/** The fields of an OpenAI list page (`GET /v1/files`, `GET /v1/batches`): ids of its ends and whether more follow. */
export const listPage = <A extends { readonly id: string }>(data: ReadonlyArray<A>, hasMore: boolean) => ({
  object: "list" as const,
  data,
  first_id: data[0]?.id ?? null,
  last_id: data.at(-1)?.id ?? null,
  has_more: hasMore
})
