/**
 * The `openai-batch` command line's files, run as a user runs it (`support/CliSuite.ts`): its input from a pipe, and
 * its downloads: `status`, `list`, `download`, `cancel`; a download killed before its end taken up by the next; a
 * file the server no longer has.
 */
import { beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { execFileSync, spawn, spawnSync } from "node:child_process"
import { createServer, request as httpRequest } from "node:http"
import type { AddressInfo } from "node:net"
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, symlinkSync, utimesSync, writeFileSync } from "node:fs"
import { writeFile } from "node:fs/promises"
import * as Path from "node:path"
import type OpenAI from "openai"
import { chatLine, terminal, waitFor } from "./support/Batches.js"
import { cliSuite, fileLines, KEY, linesOf } from "./support/CliSuite.js"

describe("the openai-batch command line's files", () => {
  const suite = cliSuite()
  const { cli, sdkBatch, slowBatch } = suite
  let scratch: string
  let openai: OpenAI
  beforeAll(() => {
    ;[scratch, openai] = [suite.scratch(), suite.openai()]
  })

  it.live("a download killed before its end is taken up by the next one, from its partial file; the others left are removed, a link never followed", () =>
    Effect.promise(async () => {
      const made = await sdkBatch(Array.from({ length: 50 }, (_, i) => chatLine(`req-${i}`, `hello ${i}`)))
      const batch = await Effect.runPromise(waitFor(openai, made.id, terminal))
      const content = Buffer.from(await (await openai.files.content(batch.output_file_id!)).arrayBuffer())
      const out = Path.join(scratch, "out-left")
      mkdirSync(out, { recursive: true })
      const target = Path.join(out, `${batch.id}_output.jsonl`)
      // Two processes killed while downloading (their pids gone): the first bytes of the one that got further are
      // marked, to tell that the download went on from them rather than over again.
      const gone = spawnSync(process.execPath, ["-e", ""]).pid!
      const kept = Buffer.from(content.subarray(0, 1000))
      kept[0] = "[".charCodeAt(0)
      const minuteAgo = new Date(Date.now() - 60_000) // left untouched a while: no download elsewhere writes them
      for (const [pid, bytes] of [[gone, kept], [gone + 1_000_000, content.subarray(0, 10)]] as const) {
        writeFileSync(`${target}.${pid}.partial`, bytes)
        utimesSync(`${target}.${pid}.partial`, minuteAgo, minuteAgo)
      }
      // A link planted in the directory (another user's, say) is neither followed nor taken.
      const elsewhere = Path.join(scratch, "not-yours.txt")
      writeFileSync(elsewhere, "mine\n")
      symlinkSync(elsewhere, `${target}.${gone + 2_000_000}.partial`)
      const run = await cli(["download", batch.id, "--out", out])
      expect(run.code, run.stderr).toBe(0)
      expect(readFileSync(target).equals(Buffer.concat([kept, content.subarray(1000)]))).toBe(true)
      expect(readdirSync(out).filter((name) => name.endsWith(".partial"))).toEqual([`${Path.basename(target)}.${gone + 2_000_000}.partial`])
      expect(readFileSync(elsewhere, "utf8")).toBe("mine\n")
    }), 60_000)

  it.live("submit - reads the requests from the standard input (a script's pipe); a path that is no file is refused", () =>
    Effect.promise(async () => {
      const out = Path.join(scratch, "out-stdin")
      const lines = [chatLine("piped-1", "one"), chatLine("piped-2", "two")].join("\n") + "\n"
      const run = await cli(["submit", "-", "--watch", "--out", out, "--interval", "0.2"], {}, undefined, lines)
      expect(run.code, run.stderr).toBe(0)
      expect(run.stderr).toContain("the standard input: 2 requests for /v1/chat/completions, no problems found; uploading…")
      const [id] = linesOf(run.stdout)
      expect(fileLines(Path.join(out, `${id}_output.jsonl`)).map((l) => l.custom_id).sort()).toEqual(["piped-1", "piped-2"])
      const [missing, directory] = await Promise.all([cli(["submit", Path.join(scratch, "nope.jsonl")]), cli(["submit", scratch])])
      expect([missing.code, missing.stderr]).toEqual([2, `${Path.join(scratch, "nope.jsonl")}: no such file; nothing was done.\n`])
      expect([directory.code, directory.stderr]).toEqual([2, `${scratch} is not a regular file or a pipe (for the standard input, give -); nothing was done.\n`])
      // A pipe named on the command line (a script's `<(generate)`, a named pipe) is read as the standard input is.
      const fifo = Path.join(scratch, "requests-fifo")
      execFileSync("mkfifo", [fifo])
      const writer = writeFile(fifo, lines)
      const piped = await cli(["submit", fifo])
      await writer
      expect(piped.code, piped.stderr).toBe(0)
      expect(piped.stderr).toContain(`${fifo}: 2 requests for /v1/chat/completions, no problems found; uploading…`)
      const pipedBatch = await openai.batches.retrieve(linesOf(piped.stdout)[0]!)
      expect((await openai.files.retrieve(pipedBatch.input_file_id)).filename).toBe("pipe.jsonl")
    }), 60_000)

  it.live("a file's name reaches the server as it is (a backslash too); one with a control character is refused before its upload", () =>
    Effect.promise(async () => {
      const line = chatLine("named", "one") + "\n"
      const slashed = Path.join(scratch, "back\\slash 報告.jsonl")
      const escape = Path.join(scratch, "esc\u001b[31mred.jsonl")
      writeFileSync(slashed, line)
      writeFileSync(escape, line)
      const [kept, refused] = await Promise.all([cli(["submit", slashed]), cli(["submit", escape])])
      expect(kept.code, kept.stderr).toBe(0)
      const batch = await openai.batches.retrieve(linesOf(kept.stdout)[0]!)
      expect((await openai.files.retrieve(batch.input_file_id)).filename).toBe("back\\slash 報告.jsonl")
      expect([refused.code, refused.stdout]).toEqual([2, ""])
      expect(refused.stderr).toContain("The file name must not contain control characters. Rename it; nothing was uploaded.")
    }), 60_000)

  it.live("a download whose output file the server no longer has still writes the error file, says so, and exits 1", () =>
    Effect.promise(async () => {
      const made = await sdkBatch([chatLine("kept", "fine"), chatLine("failing", "no [fail:400]")])
      const batch = await Effect.runPromise(waitFor(openai, made.id, terminal))
      await openai.files.delete(batch.output_file_id!) // as an expiry (output_expires_after) does
      const out = Path.join(scratch, "out-gone")
      const run = await cli(["download", batch.id, "--out", out])
      expect(run.code).toBe(1)
      expect(linesOf(run.stdout)).toEqual([
        `errors: ${Path.join(out, `${batch.id}_error.jsonl`)} (1 line)`,
        "errors by reason: 1 × status 400",
        `output: ${batch.output_file_id} is no longer on the server (expired or deleted)`
      ])
      expect(fileLines(Path.join(out, `${batch.id}_error.jsonl`)).map((l) => l.custom_id)).toEqual(["failing"])
    }), 60_000)

  it.live("calls go through HTTP_PROXY (NO_PROXY exempting a host, this machine's straight); the proxy's failures are said as its own", () =>
    Effect.promise(async () => {
      // A forward proxy for `batches.test`, which it alone knows: absolute-form requests passed on to the server,
      // each one noted; `refuse` answers them itself.
      const seen: Array<string> = []
      let refuse: number | undefined
      const server = new URL(suite.server().url)
      const proxy = createServer((req, res) => {
        seen.push(`${req.method} ${req.url}`)
        if (refuse !== undefined) return void res.writeHead(refuse, { "proxy-authenticate": "Basic" }).end()
        const target = new URL(req.url!)
        target.host = server.host
        const onward = httpRequest(target, { method: req.method, headers: req.headers }, (answer) => {
          res.writeHead(answer.statusCode!, answer.headers)
          answer.pipe(res)
        })
        req.pipe(onward)
      })
      await new Promise<void>((resolve) => proxy.listen(0, "127.0.0.1", resolve))
      try {
        const at = `http://127.0.0.1:${(proxy.address() as AddressInfo).port}`
        const through = { HTTP_PROXY: at, http_proxy: at, NO_PROXY: "", no_proxy: "" }
        const proxiedUrl = ["--base-url", `http://batches.test:${server.port}/v1`]
        const listed = await cli(["list", "--json", "--limit", "1", ...proxiedUrl], through)
        expect(listed.code, listed.stderr).toBe(0)
        expect(seen).toEqual([expect.stringMatching(/^GET http:\/\/batches\.test:\d+\/v1\/batches\?limit=\d/)])
        // This machine's server (the default base URL's kind) is reached straight: a proxy cannot reach it.
        const local = await cli(["list", "--json", "--limit", "1"], through)
        expect([local.code, seen.length]).toEqual([0, 1])
        const exempt = await cli(["list", "--json", "--limit", "1", ...proxiedUrl], { ...through, NO_PROXY: "batches.test", no_proxy: "batches.test" })
        expect(exempt.code).toBe(1) // straight to a name only the proxy knows
        expect(seen.length).toBe(1)
        // The proxy refusing its credentials mid-watch: said as the proxy's after the client's own three tries, not
        // waited out for --retry-for as the server's outage would be.
        const running = await slowBatch(2, 0)
        const refused = await cli(["watch", running.id, "--interval", "0.2", "--retry-for", "60", ...proxiedUrl], through, (_child, stdout) => {
          if (stdout !== "") refuse = 407
        })
        expect(refused.code).toBe(1)
        expect(refused.stderr).not.toContain("retrying for up to")
        expect(refused.stderr).toContain("; the proxy refused its credentials: check the user and password in HTTPS_PROXY or HTTP_PROXY")
        await openai.batches.cancel(running.id)
        // The proxy answering 502 itself (it could not reach the server): not read as the server's answer.
        refuse = 502
        const unreached = await cli(["list", "--limit", "1", ...proxiedUrl], through)
        expect(unreached.code).toBe(1)
        expect(unreached.stderr).toMatch(/502 status code \(no body\); that answer is not the server's \(its own errors name a code\): a proxy or load balancer in front \(the proxy http:\/\/127\.0\.0\.1:\d+, from HTTP_PROXY\) could not reach it/)
        refuse = undefined
        const bad = await cli(["list"], { ...through, HTTP_PROXY: "proxy.corp:3128", http_proxy: "proxy.corp:3128" })
        expect([bad.code, bad.stderr]).toEqual([2, expect.stringContaining("Invalid data at http_proxy: \"Expected a URL starting with http://")])
      } finally {
        proxy.close()
      }
      // The proxy gone: said as the proxy, not as a server to start.
      const at = `http://127.0.0.1:${(proxy.address() as AddressInfo | null)?.port ?? 9}`
      const gone = await cli(["status", "batch_0123456789abcdef0123456789abcdef", "--base-url", "http://batches.test:1/v1"], {
        HTTP_PROXY: at, http_proxy: at, NO_PROXY: "", no_proxy: ""
      })
      expect(gone.code).toBe(1)
      expect(gone.stderr).toMatch(/cannot reach http:\/\/batches\.test:1\/v1 \(ECONNREFUSED\); that is the proxy \(http:\/\/127\.0\.0\.1:\d+, from HTTPS_PROXY or HTTP_PROXY\), not the server/)
    }))

  it.live("stdout on a full disk is said in one line (exit 1), stderr on one changes nothing; bounds a script can trip on", () =>
    Effect.promise(async () => {
      /**
       * `openai-batch …args` with stdout or stderr on /dev/full (ENOSPC on every write), the other piped, `input` its
       * standard input, its temporary files in `tmp`.
       */
      const toFullDisk = (stream: "stdout" | "stderr", args: ReadonlyArray<string>, tmp: string, input: string) =>
        new Promise<{ code: number | null; said: string }>((resolve) => {
          const full = openSync("/dev/full", "w")
          const child = spawn(process.execPath, [suite.main(), ...args], {
            cwd: scratch,
            env: { ...process.env, OPENAI_BASE_URL: `${suite.server().url}/v1`, OPENAI_API_KEY: KEY, TMPDIR: tmp },
            stdio: ["pipe", stream === "stdout" ? full : "pipe", stream === "stderr" ? full : "pipe"]
          })
          closeSync(full)
          child.stdin!.end(input)
          let said = ""
          ;(stream === "stdout" ? child.stderr! : child.stdout!).on("data", (d) => (said += d))
          child.once("close", (code) => resolve({ code, said }))
        })
      /** `openai-batch …args` whose reader closed its stdout's pipe before it wrote (`openai-batch list | head -0`). */
      const toClosedPipe = (args: ReadonlyArray<string>) =>
        new Promise<{ code: number | null; stderr: string }>((resolve) => {
          const child = spawn(process.execPath, [suite.main(), ...args], {
            cwd: scratch,
            env: { ...process.env, OPENAI_BASE_URL: `${suite.server().url}/v1`, OPENAI_API_KEY: KEY },
            stdio: ["ignore", "pipe", "pipe"]
          })
          child.stdout!.destroy()
          let stderr = ""
          child.stderr!.on("data", (d) => (stderr += d))
          child.once("close", (code) => resolve({ code, stderr }))
        })
      const file = suite.inputFile("full-disk.jsonl", [chatLine("full-1", "one")])
      const [tmpOut, tmpNotes, tmpWatch] = [Path.join(scratch, "tmp-out"), Path.join(scratch, "tmp-notes"), Path.join(scratch, "tmp-watch")]
      for (const dir of [tmpOut, tmpNotes, tmpWatch]) mkdirSync(dir)
      const input = readFileSync(file, "utf8")
      const neverMade = Path.join(scratch, "never-made")
      const [lostOut, lostNotes, lostLast, lostWatching, closedPipe, bigInterval, tinyInterval, wizard, outIsFile, unknownBatch] = await Promise.all([
        toFullDisk("stdout", ["submit", "-"], tmpOut, input),
        toFullDisk("stderr", ["submit", "-"], tmpNotes, input),
        toFullDisk("stdout", ["list"], tmpNotes, ""), // its last write: the error comes once the command has ended
        // Its id lost as it starts to watch a batch of 20 s: interrupted then, not watching on (then cut at 5 s,
        // without its finalizers: its spooled input left).
        toFullDisk("stdout", ["submit", "-", "--watch", "--interval", "0.2"], tmpWatch, chatLine("slow-1", "[sleep:20000] slow") + "\n"),
        toClosedPipe(["list"]),
        cli(["watch", "batch_0123456789abcdef0123456789abcdef", "--interval", "Infinity"]),
        cli(["watch", "batch_0123456789abcdef0123456789abcdef", "--interval", "0.0001"]),
        cli(["--wizard"]),
        cli(["watch", "batch_0123456789abcdef0123456789abcdef", "--out", file]),
        cli(["download", "batch_0123456789abcdef0123456789abcdef", "--out", neverMade])
      ])
      // A batch with no files to write (here, none at all) makes no --out directory.
      expect([unknownBatch.code, existsSync(neverMade)]).toEqual([1, false])
      // The batch is made, its id lost with stdout: said on stderr, where the create's note names it, not a stack trace.
      expect(lostOut.code).toBe(1)
      const made = /created (batch_\w+)/.exec(lostOut.said)?.[1]
      expect(made, lostOut.said).toBeDefined()
      expect(linesOf(lostOut.said).at(-1)).toBe(
        "openai-batch: cannot write to the standard output (ENOSPC: no space left on device, write); what it was given is lost."
      )
      // Only notes lost: the batch made, its id printed, exit 0 (exit 1 would have a script make it again).
      expect(lostNotes.code).toBe(0)
      expect(linesOf(lostNotes.said)).toEqual([expect.stringMatching(/^batch_\w+$/)])
      expect([lostLast.code, linesOf(lostLast.said).at(-1)]).toEqual([1, expect.stringContaining("cannot write to the standard output (ENOSPC")])
      // The standard input's spooled copy removed either way: the command was interrupted, not exited.
      expect([readdirSync(tmpOut), readdirSync(tmpNotes), readdirSync(tmpWatch)]).toEqual([[], [], []])
      expect(lostWatching.code).toBe(1)
      const slow = /created (batch_\w+)/.exec(lostWatching.said)![1]!
      expect(["validating", "in_progress"]).toContain((await openai.batches.retrieve(slow)).status) // the watch stopped, not the batch
      await openai.batches.cancel(slow)
      // A reader gone (SIGPIPE's code, as a shell's tools): quietly.
      expect([closedPipe.code, closedPipe.stderr]).toEqual([141, ""])
      for (const run of [bigInterval, tinyInterval]) expect([run.code, run.stderr]).toEqual([2, expect.stringContaining("--interval must be from 0.1 to 3600 seconds")])
      expect([wizard.code, wizard.stdout, wizard.stderr]).toEqual([2, "", "openai-batch: --wizard asks its questions on a terminal, and there is none here; nothing was done.\n"])
      expect([outIsFile.code, outIsFile.stderr]).toEqual([2, `cannot write the results to ${file} (--out): it is a file, not a directory; nothing was done.\n`])
    }))

  it.live("status, list, download, cancel: their outputs and exit codes", () =>
    Effect.promise(async () => {
      const rejected = await sdkBatch(["{not json"]).then((b) => Effect.runPromise(waitFor(openai, b.id, terminal)))
      const finished = await sdkBatch([chatLine("done", "quick")], { sweep: "s1", seed: "7" }).then((b) => Effect.runPromise(waitFor(openai, b.id, terminal)))
      const batch = await slowBatch(40, 4)
      const id = batch.id
      const out = Path.join(scratch, "out-cancel")
      const [status, statusJson, list, listJson, nextPage, failedOnly, early, unknown, noKey, noFiles, tagged] = await Promise.all([
        cli(["status", id]),
        cli(["status", id, "--json"]),
        cli(["list"]),
        cli(["list", "--json", "--limit", "2"]),
        cli(["list", "--json", "--limit", "1", "--after", finished.id]),
        cli(["list", "--json", "--status", "failed", "--limit", "500"]),
        cli(["download", id, "--out", out]),
        cli(["status", "batch_0123456789abcdef0123456789abcdef"]),
        cli(["status", id], { OPENAI_API_KEY: "" }),
        cli(["download", rejected.id, "--json", "--out", out]),
        cli(["list", "--json", "--metadata", "sweep=s1", "--metadata", "seed=7", "--status", "completed", "--limit", "500"])
      ])
      expect(status.code, status.stderr).toBe(0)
      expect(linesOf(status.stdout)).toEqual(expect.arrayContaining([
        `${id}: in_progress`,
        "  requests    40: 4 completed, 0 failed",
        expect.stringMatching(/^ {2}phases {6}validating \d+s, in_progress \d+s so far$/)
      ]))
      expect(statusJson.code).toBe(0)
      expect(JSON.parse(statusJson.stdout)).toMatchObject({ id, object: "batch", status: "in_progress" })
      expect(list.code).toBe(0)
      expect(linesOf(list.stdout)[0]).toMatch(/^ID +STATUS +DONE\/TOTAL +FAILED +TOKENS +CREATED +MODEL +ENDPOINT +METADATA$/)
      expect(linesOf(list.stdout)[1]).toMatch(new RegExp(`^${id} +in_progress +4/40 +0 +\\d+ +\\S+ ago +sim-model +/v1/chat/completions$`))
      expect(listJson.code).toBe(0)
      const listed = linesOf(listJson.stdout).map((l) => JSON.parse(l))
      expect(listed.map((b) => b.id)).toEqual([id, finished.id]) // newest first
      // More than shown: said on stderr (stdout stays the JSON lines), with how to see them.
      expect(listJson.stderr).toBe(`More batches: --limit 10 shows more, --after ${finished.id} the next ones.\n`)
      expect([list.stderr, failedOnly.stderr, tagged.stderr]).toEqual(["", "", ""])
      // The next page from the last one listed; a status kept, however many pages it takes.
      expect(linesOf(nextPage.stdout).map((l) => JSON.parse(l).id)).toEqual([rejected.id])
      const failedIds = linesOf(failedOnly.stdout).map((l) => JSON.parse(l))
      expect(failedIds.every((b) => b.status === "failed") && failedIds.some((b) => b.id === rejected.id)).toBe(true)
      // Metadata pairs kept, every one, with the status: the one sweep's batch among the others.
      expect([tagged.code, linesOf(tagged.stdout).map((l) => JSON.parse(l).id)]).toEqual([0, [finished.id]])
      expect(early.code).toBe(1)
      expect(early.stderr).toContain(`${id} is in_progress: its files are written when it ends`)
      expect(unknown.code).toBe(1)
      expect(unknown.stderr).toMatch(/404/)
      expect(noKey.code).toBe(1)
      expect(noKey.stderr).toContain("401 You didn't provide an API key:") // no key sent, not a wrong one
      expect(noKey.stderr).toContain("give a key with --api-key or OPENAI_API_KEY")
      // A batch that failed validation has no file to save: exit 1 in JSON too, with what the server found.
      expect(rejected.status).toBe("failed")
      expect([noFiles.code, noFiles.stderr]).toEqual([1, expect.stringContaining(`${rejected.id} has no output or error file (it ended failed).`)])
      expect(JSON.parse(noFiles.stdout)).toMatchObject({
        id: rejected.id, status: "failed", output_path: null, error_path: null, errors: [expect.objectContaining({ code: "invalid_json_line", line: 1 })]
      })

      // The refused cancel of the finished batch alongside, not to leave a core idle while one CLI starts.
      const [cancel, tooLate] = await Promise.all([cli(["cancel", id]), cli(["cancel", finished.id])])
      expect(cancel.code, cancel.stderr).toBe(0)
      expect(cancel.stdout).toMatch(new RegExp(`^${id}: (cancelling|cancelled)\\n$`))
      await Effect.runPromise(waitFor(openai, id, terminal))
      const [again, download] = await Promise.all([cli(["cancel", id]), cli(["download", id, "--out", out])])
      expect(again.code).toBe(0) // cancelling a cancelled batch changes nothing
      expect(again.stdout).toBe(`${id}: cancelled\n`)
      expect(tooLate.code).toBe(1)
      expect(tooLate.stderr).toContain(`cancelling batch ${finished.id}: 409 Cannot cancel a batch with status 'completed'.`)
      expect(download.code, download.stderr).toBe(0)
      expect(linesOf(download.stdout)).toEqual([
        `output: ${Path.join(out, `${id}_output.jsonl`)} (4 lines)`,
        `errors: ${Path.join(out, `${id}_error.jsonl`)} (36 lines)`,
        // Lines the cancel left unrun are told apart from failures.
        "errors by reason: 36 × batch_cancelled"
      ])
      expect(fileLines(Path.join(out, `${id}_error.jsonl`)).every((l) => l.error?.code === "batch_cancelled")).toBe(true)
    }), 180_000)
})
