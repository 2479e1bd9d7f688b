/**
 * Projects: every file and batch belongs to the project of the key that created it (a batch's output and error
 * files to the batch's). What a store call may see is passed to it explicitly as a `Visibility`.
 */

/** Which objects a store call sees: one project's, or every project's (operator keys, the runner's own work). */
export type Visibility = { readonly project: string } | "all"

/** What a caller sees: an operator key every project's objects, any other key its own project's. */
export const visibilityOf = (caller: { readonly project: string; readonly admin: boolean }): Visibility =>
  caller.admin ? "all" : { project: caller.project }

/** A project name as `API_KEYS`, the keys file and an upstream's `projects` give it. */
export const PROJECT_NAME = /^[A-Za-z0-9_-]{1,64}$/

/** The project of objects created before there were projects, and of every object when no key is configured. */
export const DEFAULT_PROJECT = "default"
