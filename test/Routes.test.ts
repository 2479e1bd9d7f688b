/**
 * The route pattern of a request's path (`http/Routes.ts`), as its log line and metrics labels name it: the API's
 * routes in the router's form, a parameter one non-empty segment, the dashboard's files under its prefix; any other
 * path none, so a label never holds a raw path.
 */
import { describe, expect, it } from "@effect/vitest"
import { routeOf } from "../src/http/Routes.js"

describe("routeOf", () => {
  it("names the API's routes and those beside them, in the router's form", () => {
    expect(routeOf("/v1/batches")).toBe("/v1/batches")
    expect(routeOf("/v1/batches/batch_abc")).toBe("/v1/batches/:batch_id")
    expect(routeOf("/v1/batches/batch_abc/cancel")).toBe("/v1/batches/:batch_id/cancel")
    expect(routeOf("/v1/files/file-1/content")).toBe("/v1/files/:file_id/content")
    expect(routeOf("/metrics")).toBe("/metrics")
    expect(routeOf("/ui")).toBe("/ui")
    expect(routeOf("/ui/")).toBe("/ui") // as the router takes it
    expect(routeOf("/v1/batches/batch_abc/")).toBe("/v1/batches/:batch_id")
    expect(routeOf("/v1/batches/")).toBe("/v1/batches") // the list, as the router serves it
    expect(routeOf("/ui/app.js")).toBe("/ui/:asset")
    expect(routeOf("/ui/deeper/page")).toBe("/ui/*")
  })

  it("names no route for any other path: an empty parameter, a longer path, an unknown one", () => {
    expect(routeOf("/v1/batches//cancel")).toBeUndefined()
    expect(routeOf("/v1/batches/a/b/c")).toBeUndefined()
    expect(routeOf("/v1/nothing")).toBeUndefined()
    expect(routeOf("/ui-not")).toBeUndefined()
  })
})
