/**
 * `mkdir -p`, one level at a time. Node's own (`recursive: true`) never returns where a directory's parent exists
 * and the directory still cannot be made for want of it (ENOENT, as under `/proc`): it makes the parent again and
 * again, at full CPU (`--out /proc/x`, `DATA_DIR=/proc/x` hung).
 */
import { SystemError, type SystemErrorReason } from "@effect/platform/Error"
import { Effect } from "effect"
import { mkdirSync, statSync } from "node:fs"
import { mkdir, stat } from "node:fs/promises"
import * as Path from "node:path"

/** `dir` and its ancestors, the root first: `/a/b` → `/`, `/a`, `/a/b`. */
const fromTheRoot = (dir: string): ReadonlyArray<string> => {
  const levels: Array<string> = []
  for (let at = Path.resolve(dir); ; at = Path.dirname(at)) {
    levels.unshift(at)
    if (Path.dirname(at) === at) return levels
  }
}

/**
 * What `mkdir` failing at `level` on the way to `dir` means: nothing when a directory is there already (EEXIST, or
 * a read-only parent's EROFS/EACCES); ENOTDIR when a file is, short of `dir` (as `mkdir -p` says); else its error.
 */
const failureAt = (level: string, dir: string, error: unknown, there: "directory" | "other" | "none") => {
  if (there === "directory") return undefined
  if (there === "other" && level !== Path.resolve(dir)) {
    return Object.assign(new Error(`ENOTDIR: not a directory, mkdir '${dir}'`), { code: "ENOTDIR", syscall: "mkdir", path: dir })
  }
  return error
}

/** Makes `dir` and its missing ancestors; fails as `mkdir` does (ENOENT, ENOTDIR, EACCES…) where one cannot be made. */
export const makeDirectories = async (dir: string): Promise<void> => {
  for (const level of fromTheRoot(dir)) {
    try {
      await mkdir(level)
    } catch (error) {
      const there = await stat(level).then((s) => (s.isDirectory() ? "directory" : "other"), () => "none" as const)
      const failure = failureAt(level, dir, error, there)
      if (failure !== undefined) throw failure
    }
  }
}

const reasons: Record<string, SystemErrorReason> = { ENOENT: "NotFound", EACCES: "PermissionDenied", EPERM: "PermissionDenied" }

/** `makeDirectories` as an effect, failing as `FileSystem.makeDirectory` does. */
export const makeDirectoriesEffect = (dir: string) =>
  Effect.tryPromise({
    try: () => makeDirectories(dir),
    catch: (cause) =>
      new SystemError({
        reason: reasons[(cause as NodeJS.ErrnoException).code ?? ""] ?? "Unknown",
        module: "FileSystem",
        method: "makeDirectory",
        pathOrDescriptor: dir,
        description: (cause as Error).message,
        cause
      })
  })

/** `makeDirectories`, synchronously (at start, before anything else runs). */
export const makeDirectoriesSync = (dir: string): void => {
  for (const level of fromTheRoot(dir)) {
    try {
      mkdirSync(level)
    } catch (error) {
      const found = statSync(level, { throwIfNoEntry: false })
      const failure = failureAt(level, dir, error, found === undefined ? "none" : found.isDirectory() ? "directory" : "other")
      if (failure !== undefined) throw failure
    }
  }
}
