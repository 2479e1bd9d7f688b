/**
 * Headless Chromium for browser tests: Debian's `chromium` package driven by `playwright-core` (which downloads no
 * browser of its own). `installChromium` runs once per `vitest run` from `globalSetup.ts`, outside every test's
 * time limit: on a machine without the browser it installs it when it can (as root, through apt). Without root it
 * does nothing, and a browser test fails saying what to install: a browser test never skips.
 */
import { Context, Effect, Layer } from "effect"
import { execFileSync } from "node:child_process"
import { existsSync } from "node:fs"
import { type Browser as ChromiumBrowser, chromium, type Page } from "playwright-core"

export const CHROMIUM_PATH = "/usr/bin/chromium"
const INSTALL = ["install", "-y", "--no-install-recommends", "chromium"]

const apt = (args: ReadonlyArray<string>) =>
  execFileSync("apt-get", args, { stdio: "inherit", env: { ...process.env, DEBIAN_FRONTEND: "noninteractive" } })

/** Installs Debian's `chromium` when it is missing and this process is root (apt's lists refreshed if need be). */
export const installChromium = (): void => {
  if (existsSync(CHROMIUM_PATH) || process.getuid?.() !== 0) return
  try {
    apt(INSTALL)
  } catch {
    apt(["update"])
    apt(INSTALL)
  }
  if (!existsSync(CHROMIUM_PATH)) throw new Error(`apt-get installed chromium, but ${CHROMIUM_PATH} is still missing.`)
}

/** A headless Chromium. `--no-sandbox`: the tests run as root in CI containers. */
export const launchChromium = async (): Promise<ChromiumBrowser> => {
  if (!existsSync(CHROMIUM_PATH)) {
    throw new Error(
      `The browser tests need Chromium at ${CHROMIUM_PATH}: install it with ` +
        "`sudo apt-get install -y --no-install-recommends chromium` (Debian, Ubuntu), then run the tests again."
    )
  }
  return chromium.launch({ executablePath: CHROMIUM_PATH, args: ["--no-sandbox"] })
}

/**
 * One page in headless Chromium for a whole test file (a new page costs this machine a second or two), on a clock
 * the test can move (`page.clock`: time flows as usual until a test fast-forwards it past a page's timers).
 * `problems` gathers script errors, what a Content-Security-Policy refused (logged on the console), and the
 * page's `securitypolicyviolation` events (`directive blocked-uri`, read back with `violations`).
 */
export class BrowserPage extends Context.Tag("test/BrowserPage")<
  BrowserPage,
  { readonly page: Page; readonly problems: Array<string> }
>() {
  static readonly layer = (viewport: { readonly width: number; readonly height: number }) =>
    Layer.scoped(
      BrowserPage,
      Effect.gen(function*() {
        const browser = yield* Effect.acquireRelease(Effect.promise(launchChromium), (b) => Effect.promise(() => b.close()))
        const page = yield* Effect.promise(() => browser.newPage({ viewport }))
        const problems: Array<string> = []
        page.on("pageerror", (error) => problems.push(error.message))
        page.on("console", (m) => void (/Content.Security.Policy/i.test(m.text()) && problems.push(m.text())))
        yield* Effect.promise(() =>
          page.addInitScript(() => {
            const seen: Array<string> = []
            Object.defineProperty(globalThis, "cspViolations", { value: seen })
            // The page's globals (this project's types are Node's).
            const { document } = globalThis as unknown as { document: { addEventListener: (type: string, f: (e: any) => void) => void } }
            document.addEventListener("securitypolicyviolation", (e) => seen.push(`${e.violatedDirective} ${e.blockedURI}`))
          })
        )
        yield* Effect.promise(() => page.clock.install())
        return { page, problems }
      })
    )
}

/** The `securitypolicyviolation` events of the page's current document. */
export const violations = (page: Page): Promise<Array<string>> =>
  page.evaluate(() => (globalThis as unknown as { cspViolations: Array<string> }).cspViolations)
