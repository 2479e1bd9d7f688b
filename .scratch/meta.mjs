import { build } from "esbuild"
const r = await build({ absWorkingDir: "/work/main", entryPoints: ["src/main.ts", "src/cli/main.ts"], outbase: "src", outdir: "/tmp/metaout", bundle: true, platform: "node", target: "node20", format: "esm", external: ["better-sqlite3", "pg-native"], metafile: true, logLevel: "warning" })
for (const [out, o] of Object.entries(r.metafile.outputs)) {
  if (!out.endsWith(".js")) continue
  const byPkg = {}
  for (const [f, i] of Object.entries(o.inputs)) {
    const m = f.match(/node_modules\/((?:@[^/]+\/)?[^/]+)/)
    const k = m ? m[1] : f.startsWith("src/") ? "src" : f
    byPkg[k] = (byPkg[k] ?? 0) + i.bytesInOutput
  }
  console.log(out, o.bytes)
  for (const [k, v] of Object.entries(byPkg).sort((a, b) => b[1] - a[1]).slice(0, 15)) console.log("  ", (v / 1024).toFixed(0).padStart(6), "KB", k)
}
