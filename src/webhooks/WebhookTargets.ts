/**
 * `WebhookTargets`: where a project's batch events go and what signs them. A project's own webhook (a keys file's
 * `webhook:` line, re-read on SIGHUP with the keys) replaces the global one (`WEBHOOK_URL`, `WEBHOOK_SECRET`) for
 * its batches; with neither, its batches send no events.
 *
 * A `Context.Reference`: where the live layer is not provided (a store tested alone, an app embedding the stores
 * without it), no project has a webhook.
 */
import { Context, Effect, Layer, Option, Redacted } from "effect"
import { Auth } from "../auth/Auth.js"
import { AppConfig } from "../Config.js"
import { secretProblem, urlProblem } from "./signing.js"

export interface WebhookTarget {
  readonly url: string
  /** Whose webhook it is: the server's (`WEBHOOK_URL`, the operator's) or the project's own (its keys file line). */
  readonly kind: "server" | "project"
  /** `whsec_<base64>`, several separated by spaces while one is rotated: their decoded base64 the HMAC keys (`signing.ts`). */
  readonly secret: Redacted.Redacted
}

export interface WebhookTargetsShape {
  /** Where `project`'s events go now; none when it has no webhook. */
  readonly targetOf: (project: string) => Effect.Effect<Option.Option<WebhookTarget>>
}

const none: WebhookTargetsShape = { targetOf: () => Effect.succeedNone }

export class WebhookTargets extends Context.Reference<WebhookTargets>()("WebhookTargets", {
  defaultValue: (): WebhookTargetsShape => none
}) {}

/** The targets of the configuration: the keys file's per-project webhooks, else `WEBHOOK_URL`. */
export const WebhookTargetsLive: Layer.Layer<WebhookTargets, never, AppConfig | Auth> = Layer.effect(
  WebhookTargets,
  Effect.gen(function*() {
    const { webhookSecret, webhookUrl } = yield* AppConfig
    const auth = yield* Auth
    const global: Option.Option<WebhookTarget> = Option.zipWith(webhookUrl, webhookSecret, (url, secret) => ({ url, secret, kind: "server" }))
    return {
      targetOf: (project) =>
        Effect.map(auth.webhookOf(project), (own) =>
          Option.orElse(Option.map(own, (w): WebhookTarget => ({ url: w.url, secret: Redacted.make(w.secret), kind: "project" })), () => global))
    }
  })
)

/**
 * Fixed targets, for tests: `byProject`, else `global`. A URL or secret the configuration would refuse (a secret
 * not `whsec_<base64>`) fails the layer's build, saying which: such a webhook was taken for none, and nothing was sent.
 */
export const WebhookTargetsTest = (targets: {
  readonly global?: { readonly url: string; readonly secret: string }
  readonly byProject?: Readonly<Record<string, { readonly url: string; readonly secret: string }>>
}): Layer.Layer<WebhookTargets> => {
  const given = [
    ...(targets.global === undefined ? [] : [["global", targets.global] as const]),
    ...Object.entries(targets.byProject ?? {}).map(([project, target]) => [`project ${project}`, target] as const)
  ]
  const problems = given.flatMap(([whose, { secret, url }]) =>
    [urlProblem(url), secretProblem(secret)].flatMap((problem) => (problem === undefined ? [] : [`${whose}: ${problem}`])))
  if (problems.length > 0) return Layer.die(new Error(`WebhookTargetsTest: ${problems.join("; ")}`))
  return Layer.succeed(WebhookTargets, {
    targetOf: (project) => {
      const own = targets.byProject?.[project]
      const target = own ?? targets.global
      return Effect.succeed(Option.map(Option.fromNullable(target), (t): WebhookTarget => ({
        url: t.url,
        secret: Redacted.make(t.secret),
        kind: own === undefined ? "server" : "project"
      })))
    }
  })
}
