/**
 * Upstreams open to some projects only (an upstream's `projects`): a paid upstream kept for one project's batches.
 * Through the official client with two projects' keys: each project's `GET /v1/models` lists what its batches may
 * name; a batch goes to the first upstream open to its project that serves its model (another project's batch of
 * the same model goes to the next one); a model only a closed upstream serves fails validation with
 * `model_not_found` for the other project, and nothing is sent to that upstream for it.
 */
import { expect, layer } from "@effect/vitest"
import { Duration, Effect, Option, Redacted } from "effect"
import OpenAI from "openai"
import { createBatch, chatLine, terminal, upload, waitFor } from "./support/Batches.js"
import { defaults } from "../src/Config.js"
import { listeningLine, upstreamProjectsWithoutKey } from "../src/observability/Lifecycle.js"
import { Simulators, testAppWithUpstreams } from "./support/Upstreams.js"
import { baseUrl } from "./support/TestApp.js"

const KEYS = { research: "sk-research-5b0e7a", other: "sk-other-c41f9d", admin: "sk-admin-7e21aa" }

const app = testAppWithUpstreams(
  { paid: { models: ["model-p", "model-shared"] }, local: { models: ["model-shared", "model-l"] } },
  ({ local, paid }) => [
    { name: "paid", base_url: paid!.url, models: ["model-p", "model-shared"], projects: ["research"] },
    { name: "local", base_url: local!.url, models: ["*"] }
  ],
  {
    apiKeys: [`${KEYS.research}:research`, `${KEYS.other}:other`].map((k) => Redacted.make(k)),
    adminApiKeys: [Redacted.make(KEYS.admin)],
    // An outage seen and over within a test.
    upstreamProbeInterval: Duration.millis(300),
    inferenceRetryBaseDelay: Duration.millis(100),
    inferenceRetryMaxDelay: Duration.millis(400)
  }
)

const clientOf = (key: string) => Effect.map(baseUrl, (url) => new OpenAI({ baseURL: `${url}/v1`, apiKey: key, maxRetries: 0 }))

layer(app, { excludeTestServices: true })("an upstream open to some projects only", (it) => {
  it.effect("serves only their batches: each project's models, routes and validation follow it", () =>
    Effect.gen(function*() {
      const { local, paid } = yield* Simulators
      const research = yield* clientOf(KEYS.research)
      const other = yield* clientOf(KEYS.other)
      const ids = (list: OpenAI.Models.ModelsPage) => list.data.map((m) => `${m.id} ${m.owned_by}`).sort()
      expect(ids(yield* Effect.promise(() => research.models.list()))).toEqual([
        "model-l local",
        "model-p paid",
        "model-shared paid"
      ])
      expect(ids(yield* Effect.promise(() => other.models.list()))).toEqual(["model-l local", "model-shared local"])
      expect((yield* Effect.promise(() => research.models.retrieve("model-p"))).owned_by).toBe("paid")
      const notFound = yield* Effect.promise(() => other.models.retrieve("model-p").then(() => 200, (e: InstanceType<typeof OpenAI.APIError>) => e.status))
      expect(notFound).toBe(404)
      // The upstreams extension follows the same projects: another project's upstream is not told of.
      const upstreams = (openai: OpenAI) =>
        Effect.promise(() => openai.get<{ data: Array<{ name: string; models: Array<string>; serves_any_model: boolean; in_flight: number | null }> }>("/upstreams"))
          .pipe(Effect.map(({ data }) => data.map((u) => `${u.name} ${u.models.join(",")} ${u.serves_any_model} ${u.in_flight}`)))
      expect(yield* upstreams(research)).toEqual(["paid model-p,model-shared false null", "local model-l true null"])
      expect(yield* upstreams(other)).toEqual(["local model-shared,model-l true null"])
      // Its load is every project's: an operator's to see, not a project's.
      // An operator sees every upstream, those open to some projects only too.
      expect(yield* upstreams(yield* clientOf(KEYS.admin))).toEqual(["paid model-p,model-shared false 0", "local model-l true 0"])

      const run = (openai: OpenAI, model: string, prefix: string) =>
        Effect.gen(function*() {
          const file = yield* upload(openai, [chatLine(`${prefix}-1`, `${prefix} one`, model), chatLine(`${prefix}-2`, `${prefix} two`, model)])
          return yield* waitFor(openai, (yield* createBatch(openai, file.id)).id, terminal)
        })
      // The same model: the research project's batch goes to the paid upstream, the other's to the local one.
      const ours = yield* run(research, "model-shared", "r")
      const theirs = yield* run(other, "model-shared", "o")
      expect([ours.status, theirs.status]).toEqual(["completed", "completed"])
      expect([paid!.stats.byModel.get("model-shared"), local!.stats.byModel.get("model-shared")]).toEqual([2, 2])
      // Counted under the upstream each project's batch went to.
      const metrics = yield* Effect.flatMap(baseUrl, (url) =>
        Effect.promise(() => fetch(`${url}/metrics`, { headers: { authorization: `Bearer ${KEYS.admin}` } }).then((r) => r.text())))
      const counted = (upstream: string) =>
        [...metrics.matchAll(new RegExp(`^batch_requests_total\\{[^}]*model="model-shared"[^}]*upstream="${upstream}"[^}]*\\} (\\d+)$`, "gm"))]
          .reduce((sum, m) => sum + Number(m[1]), 0)
      expect([counted("paid"), counted("local")]).toEqual([2, 2])
      // A model only the closed upstream serves: for the other project, none serves it.
      const sentToPaid = paid!.stats.requests
      const refused = yield* run(other, "model-p", "x")
      expect(refused.status).toBe("failed")
      expect(refused.errors?.data?.[0]).toMatchObject({ code: "model_not_found", param: "body.model" })
      expect(paid!.stats.requests).toBe(sentToPaid)
    }))

  it.effect("while it is down, its projects' batches wait for it; another project's batch of the same model runs meanwhile", () =>
    Effect.gen(function*() {
      const { local, paid } = yield* Simulators
      const research = yield* clientOf(KEYS.research)
      const other = yield* clientOf(KEYS.other)
      const sentTo = (sim: typeof paid) => sim!.stats.byModel.get("model-shared") ?? 0
      const [paidBefore, localBefore] = [sentTo(paid), sentTo(local)]
      yield* Effect.promise(() => paid!.stop())
      const lines = (prefix: string) => [chatLine(`${prefix}-1`, `${prefix} one`, "model-shared"), chatLine(`${prefix}-2`, `${prefix} two`, "model-shared")]
      const waiting = yield* createBatch(research, (yield* upload(research, lines("w"))).id)
      const theirs = yield* waitFor(other, (yield* createBatch(other, (yield* upload(other, lines("t"))).id)).id, terminal)
      expect(theirs.request_counts).toEqual({ total: 2, completed: 2, failed: 0 })
      yield* Effect.sleep("1 second")
      // Not sent to the upstream open to every project, nor failed: it waits for its own.
      const paused = yield* Effect.promise(() => research.batches.retrieve(waiting.id))
      expect([paused.status, paused.request_counts]).toEqual(["in_progress", { total: 2, completed: 0, failed: 0 }])
      expect(sentTo(local)).toBe(localBefore + 2)
      yield* Effect.promise(() => paid!.start())
      const done = yield* waitFor(research, waiting.id, terminal, 20_000)
      expect(done.request_counts).toEqual({ total: 2, completed: 2, failed: 0 })
      expect([sentTo(paid), sentTo(local)]).toEqual([paidBefore + 2, localBefore + 2])

      // Down mid-run: the batch gives its turn up (one batch at a time here), and the other project's runs meanwhile.
      const slow = [1, 2, 3].map((i) => chatLine(`s-${i}`, `[sleep:1500] s ${i}`, "model-shared"))
      const running = yield* createBatch(research, (yield* upload(research, slow)).id)
      yield* Effect.promise(async () => {
        while (paid!.stats.inFlight < 3) await new Promise((r) => setTimeout(r, 20))
      })
      yield* Effect.promise(() => paid!.stop())
      const meanwhile = yield* waitFor(other, (yield* createBatch(other, (yield* upload(other, lines("m"))).id)).id, terminal, 10_000)
      expect(meanwhile.request_counts).toEqual({ total: 2, completed: 2, failed: 0 })
      const held = yield* Effect.promise(() => research.batches.retrieve(running.id))
      expect([held.status, held.request_counts?.failed]).toEqual(["in_progress", 0])
      yield* Effect.promise(() => paid!.start())
      expect((yield* waitFor(research, running.id, terminal, 20_000)).request_counts).toEqual({ total: 3, completed: 3, failed: 0 })
      expect(sentTo(local)).toBe(localBefore + 4)
    }), { timeout: 60_000 })

  it("an upstream open to a project no key belongs to is found (a misspelt project)", () => {
    const upstreams = [{ name: "paid", projects: ["research", "reserch"] }, { name: "local", projects: undefined }, { name: "ops", projects: ["key-0123456789ab"] }]
    expect(upstreamProjectsWithoutKey(upstreams, true, ["research", "other", "key-0123456789ab"])).toEqual([{ upstream: "paid", projects: ["reserch"] }])
    // Without keys, every request is the one local project's.
    expect(upstreamProjectsWithoutKey(upstreams, false, [])).toEqual([
      { upstream: "paid", projects: ["research", "reserch"] },
      { upstream: "ops", projects: ["key-0123456789ab"] }
    ])
    expect(upstreamProjectsWithoutKey([{ name: "mine", projects: ["default"] }], false, [])).toEqual([])
  })

  it("the listening line says which projects an upstream serves", () => {
    const paid = { name: "paid", baseUrl: "https://api.example/v1", models: ["model-p"], maxConcurrency: 8, loadAware: Option.none(), projects: ["research"] }
    const line = listeningLine("http://127.0.0.1:8321", defaults, false, [paid], Option.none(), undefined)
    expect(line.message).toContain("paid at https://api.example/v1 (model-p; for research)")
    expect(line.fields.upstreams).toEqual([expect.objectContaining({ name: "paid", projects: ["research"] })])
  })
})
