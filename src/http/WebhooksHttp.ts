/** Handlers of the `webhooks` group: the deliveries list (an extension), one project's or, for an operator, all. */
import * as HttpApiBuilder from "@effect/platform/HttpApiBuilder"
import { Effect } from "effect"
import { CurrentCaller } from "../auth/Auth.js"
import { invalidRequest } from "../domain/Errors.js"
import { listPage } from "../domain/List.js"
import { visibilityOf } from "../domain/Projects.js"
import { echo } from "../domain/Text.js"
import { WebhookDeliveryList } from "../domain/Webhooks.js"
import { Webhooks } from "../webhooks/Webhooks.js"
import { OpenAIApi } from "./Api.js"

export const WebhooksHttpLive = HttpApiBuilder.group(OpenAIApi, "webhooks", (handlers) =>
  Effect.map(Webhooks, (webhooks) =>
    handlers.handle("deliveries", ({ urlParams }) =>
      Effect.flatMap(CurrentCaller, (caller) =>
        webhooks.list({ visibility: visibilityOf(caller), after: urlParams.after, limit: urlParams.limit ?? 20 })).pipe(
        Effect.map(({ data, hasMore }) => new WebhookDeliveryList(listPage(data, hasMore))),
        Effect.catchTag("UnknownDeliveryCursor", ({ after }) =>
          invalidRequest(`No webhook delivery found for the 'after' cursor: ${echo(after)}`, "after", "invalid_value"))
      ))))
