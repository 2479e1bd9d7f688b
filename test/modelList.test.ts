/** An upstream's `GET /models` answer read as its ids: the first `MAX_LISTED_MODELS`, and how many it lists. */
import { describe, expect, it } from "@effect/vitest"
import { listedModels, MAX_LISTED_MODELS } from "../src/upstreams/modelList.js"

describe("listedModels", () => {
  it("reads OpenAI's list shape, skipping entries without a string id; anything else is no list", () => {
    expect(listedModels(`{"object":"list","data":[{"id":"a"},{"id":7},{},null,{"id":"b"}]}`)).toEqual({ ids: ["a", "b"], total: 2 })
    for (const text of ["", "<html>", "[]", `{"data":{}}`, `{"models":[{"id":"a"}]}`, "null"]) expect(listedModels(text)).toBeUndefined()
  })

  it(`keeps the first ${MAX_LISTED_MODELS} of a longer list, and says how many it had`, () => {
    const data = Array.from({ length: MAX_LISTED_MODELS + 5 }, (_, i) => ({ id: `m-${i}` }))
    const read = listedModels(JSON.stringify({ data }))!
    expect([read.ids.length, read.ids[0], read.ids.at(-1), read.total]).toEqual([MAX_LISTED_MODELS, "m-0", `m-${MAX_LISTED_MODELS - 1}`, MAX_LISTED_MODELS + 5])
  })
})
