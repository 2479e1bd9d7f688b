/**
 * The two programs, the server (`dist/main.js`, what `npm start` runs) and the `openai-batch` bin
 * (`dist/cli/main.js`), each bundled with the packages it uses into one ES module (`build.ts` runs it after `tsc`).
 * Why: Node loads a program of ~1,000 modules (Effect's alone are hundreds) file by file, which took most of a start
 * (README, Architecture). The library (`dist/index.js` and the rest of `tsc`'s output) is left as it is: an
 * embedding app shares its own copy of Effect with it. Native and optional packages stay outside (`better-sqlite3`,
 * `pg-native`). The tests' built copy (`test/support/CompiledCopy.ts`) bundles the same.
 */
import { build } from "esbuild"

export const bundle = (root: string, outdir: string) =>
  build({
    absWorkingDir: root,
    entryPoints: ["src/main.ts", "src/cli/main.ts"],
    outbase: "src",
    outdir,
    // Each program whole, without shared chunks: code split off by esbuild loses a CommonJS package's named
    // exports behind a dynamic `import()` (the tracing exporter, loaded when tracing is on).
    bundle: true,
    platform: "node",
    target: "node20",
    format: "esm",
    external: ["better-sqlite3", "pg-native"],
    // The CommonJS packages inside (pg, ws…) `require` Node's modules, which an ES module has no `require` for.
    banner: { js: `import { createRequire as __createRequire } from "node:module"; const require = __createRequire(import.meta.url);` },
    sourcemap: "linked",
    sourcesContent: false,
    logLevel: "warning"
  })

