/**
 * Every knob of the service, read from the environment in one place. An invalid value fails the start with a
 * message naming the variable (Effect's `ConfigError` does that; `main.ts` prints it).
 */
import { Config, Context, Duration, Layer } from "effect"

export interface AppConfigShape {
  /** TCP port of the HTTP server (`PORT`). */
  readonly port: number
  /** Interface the HTTP server binds to (`HOST`). */
  readonly host: string
  /** Directory holding the SQLite database and the bytes of uploaded files (`DATA_DIR`). */
  readonly dataDir: string
  /** Largest accepted upload, in bytes (`MAX_UPLOAD_BYTES`); larger uploads get a 413. */
  readonly maxUploadBytes: number
  /** How often expired files are deleted from storage (`FILE_SWEEP_INTERVAL`, e.g. `60 seconds`). */
  readonly fileSweepInterval: Duration.Duration
  /** On SIGINT/SIGTERM, how long open requests may take to finish before their connections are closed (`SHUTDOWN_TIMEOUT`). */
  readonly shutdownTimeout: Duration.Duration
}

export const defaults: AppConfigShape = {
  port: 8321,
  host: "127.0.0.1",
  dataDir: "./.data",
  maxUploadBytes: 512 * 1024 * 1024,
  fileSweepInterval: Duration.seconds(60),
  shutdownTimeout: Duration.seconds(10)
}

const positiveInt = (name: string, fallback: number) =>
  Config.integer(name).pipe(
    Config.validate({ message: "Expected a positive integer", validation: (n) => n > 0 }),
    Config.withDefault(fallback)
  )

/** The `Config` description of `AppConfigShape`, read from the environment (or any ConfigProvider). */
export const appConfig: Config.Config<AppConfigShape> = Config.all({
  port: Config.port("PORT").pipe(Config.withDefault(defaults.port)),
  host: Config.string("HOST").pipe(
    Config.validate({ message: "Expected a non-empty host name", validation: (s) => s.trim() !== "" }),
    Config.withDefault(defaults.host)
  ),
  dataDir: Config.string("DATA_DIR").pipe(
    Config.validate({ message: "Expected a non-empty path", validation: (s) => s.trim() !== "" }),
    Config.withDefault(defaults.dataDir)
  ),
  maxUploadBytes: positiveInt("MAX_UPLOAD_BYTES", defaults.maxUploadBytes),
  fileSweepInterval: Config.duration("FILE_SWEEP_INTERVAL").pipe(Config.withDefault(defaults.fileSweepInterval)),
  shutdownTimeout: Config.duration("SHUTDOWN_TIMEOUT").pipe(Config.withDefault(defaults.shutdownTimeout))
})

export class AppConfig extends Context.Tag("AppConfig")<AppConfig, AppConfigShape>() {
  /** Reads the configuration from the environment. */
  static readonly layer: Layer.Layer<AppConfig, import("effect/ConfigError").ConfigError> = Layer.effect(
    AppConfig,
    appConfig
  )
  /** A fixed configuration: the defaults with `overrides` on top (tests, embedding). */
  static readonly layerWith = (overrides: Partial<AppConfigShape> = {}): Layer.Layer<AppConfig> =>
    Layer.succeed(AppConfig, { ...defaults, ...overrides })
}
