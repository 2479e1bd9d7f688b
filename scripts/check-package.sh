#!/usr/bin/env bash
# What a user of the package gets: packs this project, installs the tarball in an empty folder next to the pinned
# Effect packages (as the README's Embedding section says), checks there is one copy of `effect`, runs the installed
# `openai-batch` bin (`--version`, `--help`: a wrong path in `bin` or a missing shebang fails here; `serve`: the
# bundled server answers and drains on SIGTERM), starts
# examples/embed/main.ts (the README's example) until it answers, asks it for the dashboard (`/ui`, `/ui/app.js`:
# a package without its ui/ folder fails here), and runs the examples' tests: examples/embed's (an
# Inference swapped through the public entry) and examples/replay's (a batch on committed recordings, no network).
# Needs the npm registry (or a warm npm cache).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
server=""
cleanup() {
  # The server runs in a session of its own: killing its group ends npx and the node process it started.
  [ -n "$server" ] && kill -- "-$server" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

cd "$root"
tarball=$(npm pack --pack-destination "$work" 2>/dev/null | tail -n 1)
cp examples/embed/package.json examples/embed/*.ts "$work"/
mkdir "$work/replay" && cp -r examples/replay/replay.test.ts examples/replay/recordings "$work/replay/"
cd "$work"
npm pkg set "dependencies.effect-openai-batch=file:./$tarball"
npm install --no-audit --no-fund --prefer-offline --loglevel=error

copies=$(npm ls effect --all --parseable 2>/dev/null | sort -u | wc -l)
if [ "$copies" != 1 ]; then
  echo "expected one copy of effect, found $copies:"; npm ls effect --all; exit 1
fi

# As `npx openai-batch` runs it: through the link npm made in node_modules/.bin, never fetched from the registry.
expected=$(node -p "require('./node_modules/effect-openai-batch/package.json').version")
version=$(npx --no-install openai-batch --version 2>&1) || { echo "openai-batch --version failed: $version"; exit 1; }
if [ "$version" != "$expected" ]; then
  echo "openai-batch --version printed '$version', expected '$expected'"; exit 1
fi
help=$(npx --no-install openai-batch --help 2>&1) || { echo "openai-batch --help failed: $help"; exit 1; }
for command in submit watch download serve; do
  grep -q "$command" <<<"$help" || { echo "openai-batch --help does not list $command:"; echo "$help"; exit 1; }
done
echo "openai-batch $version runs from the installed bin"

# The bundled server as the installed bin's `serve` starts it: it answers, serves the dashboard from the package's
# ui/ folder, and a SIGTERM to the bin drains it and ends both with code 0.
serve_port=$((20000 + RANDOM % 20000))
PORT=$serve_port DATA_DIR="$work/serve-data" ./node_modules/.bin/openai-batch serve > serve.log 2>&1 &
serve_pid=$!
answers() { node -e "fetch('http://127.0.0.1:$serve_port$1').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"; }
for _ in $(seq 1 100); do answers /v1/health && break; sleep 0.2; done
answers /v1/health && answers /ui || { echo "openai-batch serve did not answer /v1/health and /ui:"; cat serve.log; kill -9 $serve_pid; exit 1; }
kill -TERM $serve_pid
code=0; wait $serve_pid || code=$?
if [ "$code" != 0 ] || ! grep -q "Shutdown finished" serve.log; then
  echo "openai-batch serve did not shut down cleanly on SIGTERM (exit $code):"; cat serve.log; exit 1
fi
echo "openai-batch serve ran the installed server and drained it on SIGTERM"

port=$((20000 + RANDOM % 20000))
PORT=$port DATA_DIR="$work/data" setsid npx tsx main.ts > server.log 2>&1 &
server=$!
healthy() { node -e "fetch('http://127.0.0.1:$port/v1/health').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"; }
for _ in $(seq 1 100); do healthy && break; sleep 0.2; done
healthy || { echo "the embedded server did not answer:"; cat server.log; exit 1; }
echo "embedded server answered on port $port"
# The dashboard, from the installed package's ui/ folder (a `files` list without it fails here).
for path in /ui /ui/app.js; do
  node -e "fetch('http://127.0.0.1:$port$path').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))" \
    || { echo "the embedded server did not serve $path:"; cat server.log; exit 1; }
done
echo "embedded server served the dashboard"

npx vitest run
