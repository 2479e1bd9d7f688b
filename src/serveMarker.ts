/**
 * The variable `openai-batch serve` sets for the server it starts (`src/cli/serve.ts`): the server's IPC channel is
 * then the CLI's, whose end stops the server (`src/main.ts`). Another parent's channel (pm2's fork mode, an app's
 * `fork`) is left alone.
 */
export const SERVED_BY_CLI = "OPENAI_BATCH_SERVED_BY_CLI"
