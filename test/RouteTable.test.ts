/** Routing a model to an upstream, and what the route table keeps whatever model names clients send. */
import { describe, expect, it } from "@effect/vitest"
import { Either, Option } from "effect"
import { defaults } from "../src/Config.js"
import { makeRouteTable } from "../src/inference/routeTable.js"
import { unroutedWarning } from "../src/inference/routeWait.js"
import { resolveEntries, type UpstreamSpec } from "../src/upstreams/UpstreamSpec.js"

const specsOf = (entries: ReadonlyArray<unknown>): ReadonlyArray<UpstreamSpec> =>
  Either.getOrThrow(resolveEntries(entries, defaults, {}))

/** An upstream as routing sees it: `listed` is its `GET /models` list (undefined: it gave none). */
const upstream = (spec: UpstreamSpec, listed?: ReadonlyArray<string>) => ({
  spec,
  listed: () => Option.fromNullable(listed),
  modelsAnswered: () => listed !== undefined
})

describe("route table", () => {
  const specs = specsOf([
    { name: "llama", base_url: "http://a.test/v1", models: ["llama"] },
    { name: "team", base_url: "http://b.test/v1", models: ["*"], projects: ["team"] },
    { name: "any", base_url: "http://c.test/v1", models: ["*"] }
  ])
  const [llama, team, any] = [upstream(specs[0]!), upstream(specs[1]!, ["mistral"]), upstream(specs[2]!, ["qwen"])]
  const make = () => makeRouteTable([llama, team, any], specs)

  it("routes by the first upstream, open to the project, that serves the model", () => {
    const table = make()
    expect(table.route("llama", "p")).toBe(llama)
    expect(table.route("mistral", "team")).toBe(team)
    expect(table.route("mistral", "other")).toBeUndefined()
    expect(table.route("qwen", "team")).toBe(any)
    expect(table.route(null, "team")).toBe(team)
    expect(table.route(null, "other")).toBe(any)
  })

  it("keeps no route for model names no upstream lists, however many are asked", () => {
    const table = make()
    for (let i = 0; i < 10_000; i++) expect(table.route(`random-${i}`, `project-${i % 7}`)).toBeUndefined()
    expect(table.remembered()).toBe(0)
    table.route("llama", "p")
    table.route("qwen", "p")
    expect(table.remembered()).toBe(2)
    table.forget()
    expect(table.remembered()).toBe(0)
  })

  it("sends any model to a \"*\" upstream never reached yet, without remembering it: its list, once known, decides", () => {
    const [closedSpec, anySpec] = specsOf([
      { name: "down-since-start", base_url: "http://d.test/v1", models: ["*"] },
      { name: "any", base_url: "http://c.test/v1", models: ["*"] }
    ])
    let reached: ReadonlyArray<string> | undefined
    const downSinceStart = { spec: closedSpec!, listed: () => Option.fromNullable(reached), modelsAnswered: () => reached !== undefined }
    const table = makeRouteTable([downSinceStart, upstream(anySpec!, ["qwen"])], [closedSpec!, anySpec!])
    expect(table.route("qwen")).toBe(downSinceStart)
    expect(table.remembered()).toBe(0)
    reached = ["llama"] // it answered: its list does not have qwen
    expect(table.route("qwen")?.spec.name).toBe("any")
  })

  it("reads a long list once, not once a model looked up in it (a scan each: 9 s of a held event loop for 60,000 models)", () => {
    const ids = Array.from({ length: 2_000 }, (_, i) => `model-${i}`)
    let reads = 0
    const counted = new Proxy(ids, {
      get: (target, key, receiver) => {
        if (typeof key === "string" && /^\d+$/.test(key)) reads++
        return Reflect.get(target, key, receiver)
      }
    })
    const listing = upstream(any.spec, counted)
    const table = makeRouteTable([listing], [any.spec])
    for (const id of ids) expect(table.route(id)).toBe(listing)
    expect(reads).toBeLessThanOrEqual(ids.length)
  })

  it("tells a waiting batch's operator that a \"*\" upstream may serve its model again, only where one is open to its project", () => {
    const [named, teamOnly] = specsOf([
      { name: "llama", base_url: "http://a.test/v1", models: ["llama"] },
      { name: "team", base_url: "http://b.test/v1", models: ["*"], projects: ["team"] }
    ])
    const starHint = `or have a "*" upstream serve it`
    expect(unroutedWarning("m", [named!, teamOnly!], "team")).toContain(starHint)
    expect(unroutedWarning("m", [named!, teamOnly!], "other")).not.toContain(starHint)
    expect(unroutedWarning("m", [named!], "team")).toBe(
      "No upstream serves the model 'm' any more: its batch waits until one does (name it in UPSTREAMS_FILE and " +
        "restart), is cancelled or expires"
    )
    // A long name is cut at 64 characters, never inside an emoji (a lone half is an escape jq refuses).
    expect(unroutedWarning(`${"m".repeat(63)}😀tail`, [named!], "team")).toMatch(new RegExp(`^No upstream serves the model 'm{63}…' any more`))
  })
})
