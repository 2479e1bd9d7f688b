/**
 * Variables that look like a misspelt setting are found (`src/configTypos.ts`): the server warns of them at start
 * instead of running on the default without a word.
 */
import { describe, expect, it } from "@effect/vitest"
import { ConfigProvider, Effect } from "effect"
import { AppConfig } from "../src/Config.js"
import { misspeltVariables, recordingReads } from "../src/configTypos.js"

describe("misspelt variables", () => {
  it.effect("are told from the names the configuration read, with the one meant; the rest of the environment is left alone", () =>
    Effect.gen(function*() {
      const env = {
        MAX_CONCURENT_BATCHES: "4", // a letter missing
        max_concurrent_requests_per_batch: "8", // llama-stack's lower case
        UPSTREAM_FILE: "u.yaml", // a letter missing
        MAX_CONCURRENT_BATCHES: "2", // right
        https_proxy: "http://proxy:3128", // read as it is, lower case too
        HOSTNAME: "node-1",
        NODE_ENV: "production",
        PATH: "/usr/bin",
        npm_config_cache: "/root/.npm",
        // One or two edits from a setting, and none: other tools', a secret an upstream reads (two edits), a Kubernetes
        // service's.
        NODE_IP: "10.0.0.7",
        POD_IP: "10.0.0.8",
        api_keys: "sk-a", // a setting in another case: said, secret or not
        API_KEY: "sk-b", // one edit from API_KEYS: said (the server would run without keys)
        FTP_PROXY: "http://proxy:3128",
        INFERENCE_API_KEY_2: "sk-y",
        METRIC_PORT: "tcp://10.0.0.9:9090"
      }
      const recording = recordingReads(ConfigProvider.fromJson(env))
      const config = yield* AppConfig.pipe(Effect.provide(AppConfig.layer), Effect.withConfigProvider(recording.provider))
      expect(config.maxConcurrentBatches).toBe(2)
      expect(misspeltVariables(env, recording.read)).toEqual([
        { given: "MAX_CONCURENT_BATCHES", meant: "MAX_CONCURRENT_BATCHES" },
        { given: "max_concurrent_requests_per_batch", meant: "MAX_CONCURRENT_REQUESTS_PER_BATCH" },
        { given: "UPSTREAM_FILE", meant: "UPSTREAMS_FILE" },
        { given: "api_keys", meant: "API_KEYS" },
        { given: "API_KEY", meant: "API_KEYS" }
      ])
    }))
})
