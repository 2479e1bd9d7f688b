import { Schema } from "effect"

/** The fields of an OpenAI list page (`GET /v1/files`, `GET /v1/batches`): ids of its ends and whether more follow. */
export const listPage = <A extends { readonly id: string }>(data: ReadonlyArray<A>, hasMore: boolean) => ({
  object: "list" as const,
  data,
  first_id: data[0]?.id ?? null,
  last_id: data.at(-1)?.id ?? null,
  has_more: hasMore
})

/**
 * The most a list page's JSON takes: the page ends before the object that would take it past this (it holds one at
 * least) and says `has_more`, as a page ended by its `limit` does, so a client goes on from its `last_id`. A hundred
 * batches with their validation errors took 6.7 MB, and six hundred clients that asked for such pages without
 * reading them held 5.9 GB. Stores stop reading rows into a page at about this size (`rowsInPage`); the page's JSON
 * is held to it exactly (`http/StoredResponse.ts`).
 */
export const LIST_PAGE_BYTES = 1024 * 1024

/**
 * Constructor options for response objects built from stored rows, which their row schema has already decoded: the
 * class's own check would validate every field again on each read (the response encoder checks them once more).
 */
export const trusted = { disableValidation: true } as const

/**
 * A whole number written in plain digits (not `1e3`, `0x10` or ` 5`), within `min`…`max`, as query parameters such as
 * `limit` are; `description` goes on the string, what the OpenAPI document shows of a query parameter.
 */
export const Count = (min: number, max: number, description: string) =>
  Schema.compose(
    Schema.String.pipe(Schema.pattern(/^[0-9]+$/, { message: () => "expected a whole number in digits" }))
      .annotations({ description }),
    Schema.NumberFromString
  ).pipe(Schema.between(min, max))
