/**
 * A batch whose model validation could not check (an upstream serving any model had given no list yet: down since
 * the start) and that no upstream serves now: a typo, found once the lists are known. Its lines fail with
 * `model_not_found` as validation would have failed it; a checked model whose upstream lost it waits instead
 * (`inference/routeWait.ts`): there, the upstreams changed, not the batch.
 */
import type { InferenceShape } from "../inference/Inference.js"
import type { BatchRecord } from "./BatchStore.js"

export const unserved = (inference: InferenceShape, record: BatchRecord): boolean =>
  record.modelUnchecked === true &&
  inference.upstreamName !== undefined &&
  inference.upstreamName(record.batch.model, record.project) === undefined
