/**
 * A fake OpenTelemetry collector for tests: an HTTP server that keeps every `POST /v1/traces` (status 200, an empty
 * JSON answer). Bodies sent as `http/json` are parsed into flat spans (attributes as a plain object, ids in hex);
 * `http/protobuf` bodies are kept as bytes.
 */
import { createServer, type IncomingHttpHeaders } from "node:http"
import type { AddressInfo } from "node:net"

export interface Export {
  readonly path: string
  readonly headers: IncomingHttpHeaders
  readonly body: Buffer
}

export interface CollectedSpan {
  readonly service: string | undefined
  /** The resource's `service.instance.id`. */
  readonly instance: string | undefined
  /** Every attribute of the resource. */
  readonly resource: Record<string, unknown>
  readonly traceId: string
  readonly spanId: string
  readonly parentSpanId: string | undefined
  readonly name: string
  /** OTLP's numbers: 1 internal, 2 server, 3 client, 4 producer, 5 consumer. */
  readonly kind: number
  readonly attributes: Record<string, unknown>
  /** OTLP's numbers: 0 unset, 1 ok, 2 error. */
  readonly status: { readonly code: number; readonly message?: string }
  readonly links: ReadonlyArray<{ readonly traceId: string; readonly spanId: string }>
  readonly events: ReadonlyArray<{ readonly name: string; readonly attributes: Record<string, unknown> }>
}

export interface Collector {
  /** The base URL, for `OTEL_EXPORTER_OTLP_ENDPOINT`. */
  readonly url: string
  readonly exports: () => ReadonlyArray<Export>
  /** Every span received as JSON so far. */
  readonly spans: () => ReadonlyArray<CollectedSpan>
  /** Resolves once `check` holds for the spans received (polls; rejects after `timeoutMs`). */
  readonly waitFor: (check: (spans: ReadonlyArray<CollectedSpan>) => boolean, timeoutMs?: number) => Promise<ReadonlyArray<CollectedSpan>>
  readonly close: () => Promise<void>
}

type AnyValue = {
  stringValue?: string
  intValue?: number | string
  doubleValue?: number
  boolValue?: boolean
  arrayValue?: { values?: Array<AnyValue> }
}
const valueOf = (v: AnyValue | undefined): unknown => {
  if (v === undefined) return undefined
  if (v.stringValue !== undefined) return v.stringValue
  if (v.intValue !== undefined) return Number(v.intValue)
  if (v.doubleValue !== undefined) return v.doubleValue
  if (v.boolValue !== undefined) return v.boolValue
  if (v.arrayValue !== undefined) return (v.arrayValue.values ?? []).map(valueOf)
  return undefined
}
const attributesOf = (list: Array<{ key: string; value: AnyValue }> | undefined) =>
  Object.fromEntries((list ?? []).map(({ key, value }) => [key, valueOf(value)]))

/** The spans of one OTLP/JSON trace export. */
export const spansOf = (json: any): Array<CollectedSpan> =>
  (json?.resourceSpans ?? []).flatMap((rs: any) => {
    const resource = attributesOf(rs.resource?.attributes)
    const service = resource["service.name"] as string | undefined
    const instance = resource["service.instance.id"] as string | undefined
    return (rs.scopeSpans ?? []).flatMap((ss: any) =>
      (ss.spans ?? []).map((s: any): CollectedSpan => ({
        service,
        instance,
        resource,
        traceId: s.traceId,
        spanId: s.spanId,
        parentSpanId: s.parentSpanId || undefined,
        name: s.name,
        kind: s.kind,
        attributes: attributesOf(s.attributes),
        status: { code: s.status?.code ?? 0, ...(s.status?.message ? { message: s.status.message } : {}) },
        links: (s.links ?? []).map((l: any) => ({ traceId: l.traceId, spanId: l.spanId })),
        events: (s.events ?? []).map((e: any) => ({ name: e.name, attributes: attributesOf(e.attributes) }))
      }))
    )
  })

export const startCollector = async (): Promise<Collector> => {
  const exports: Array<Export> = []
  const server = createServer((req, res) => {
    const chunks: Array<Buffer> = []
    req.on("data", (chunk: Buffer) => chunks.push(chunk))
    req.on("end", () => {
      exports.push({ path: req.url ?? "", headers: req.headers, body: Buffer.concat(chunks) })
      res.writeHead(200, { "content-type": "application/json" }).end("{}")
    })
  })
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  const { port } = server.address() as AddressInfo
  const spans = () =>
    exports.flatMap((e) =>
      String(e.headers["content-type"]).startsWith("application/json") ? spansOf(JSON.parse(e.body.toString("utf8"))) : []
    )
  return {
    url: `http://127.0.0.1:${port}`,
    exports: () => exports,
    spans,
    waitFor: async (check, timeoutMs = 15_000) => {
      const deadline = Date.now() + timeoutMs
      for (;;) {
        const now = spans()
        if (check(now)) return now
        if (Date.now() > deadline) {
          throw new Error(`the collector did not get the spans expected; it has: ${now.map((s) => s.name).join(", ")}`)
        }
        await new Promise((r) => setTimeout(r, 50))
      }
    },
    close: () => new Promise((resolve) => {
      server.closeAllConnections()
      server.close(() => resolve())
    })
  }
}
