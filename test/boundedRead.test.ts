import { describe, expect, it } from "@effect/vitest"
import { execFileSync } from "node:child_process"
import { mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import * as Path from "node:path"
import { readBounded } from "../src/boundedRead.js"

describe("readBounded (the keys file, the upstreams file, a recording)", () => {
  it("reads a regular file within the bound, and refuses a pipe, a device, a directory and a larger file at once", async () => {
    const dir = mkdtempSync(Path.join(tmpdir(), "batch-bounded-"))
    try {
      const small = Path.join(dir, "small")
      writeFileSync(small, "sk-a:proj\né\n")
      expect(await readBounded(small, 64)).toEqual({ _tag: "Read", text: "sk-a:proj\né\n" })
      expect(await readBounded(small, 12)).toEqual({ _tag: "TooLarge" }) // 13 bytes: é is two
      expect(await readBounded(small, 13)).toMatchObject({ _tag: "Read" })
      // A named pipe no one writes to: a plain read waited for ever.
      const fifo = Path.join(dir, "fifo")
      execFileSync("mkfifo", [fifo])
      expect(await readBounded(fifo, 1024)).toEqual({ _tag: "NotAFile" })
      // A device says it has 0 bytes, and never ends.
      expect(await readBounded("/dev/zero", 1024)).toEqual({ _tag: "NotAFile" })
      expect(await readBounded(dir, 1024)).toEqual({ _tag: "NotAFile" })
      expect(await readBounded(Path.join(dir, "none"), 1024)).toEqual({ _tag: "Missing", code: "ENOENT" })
      expect(await readBounded(Path.join(small, "none"), 1024)).toEqual({ _tag: "Missing", code: "ENOTDIR" })
      // A /proc file is a regular file of "0 bytes" that has some: read up to the bound, not past it.
      expect(await readBounded("/proc/self/status", 1024 * 1024)).toMatchObject({ _tag: "Read", text: expect.stringContaining("Pid:") })
      expect(await readBounded("/proc/self/status", 16)).toEqual({ _tag: "TooLarge" })
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  })
})
