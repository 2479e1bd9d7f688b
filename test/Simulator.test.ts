/** The upstream simulator itself (`scripts/simulator.ts`): its vLLM-like queue, `/metrics`, overload and outages. */
import { afterEach, describe, expect, it } from "vitest"
import { type Simulator, type SimulatorOptions, startSimulator } from "../scripts/simulator.js"

const started: Array<Simulator> = []
const simulator = async (options: SimulatorOptions = {}) => {
  const sim = await startSimulator(options)
  started.push(sim)
  return sim
}
afterEach(async () => {
  await Promise.all(started.splice(0).map((sim) => sim.close()))
})

const chat = (sim: Simulator, prompt: string, model = "sim-model", signal?: AbortSignal) =>
  fetch(`${sim.url}/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ model, messages: [{ role: "user", content: prompt }] }),
    ...(signal === undefined ? {} : { signal })
  })

const json = (response: Response): Promise<any> => response.json()

/** Polls `check` until it holds (1 s at most). */
const until = async (check: () => boolean) => {
  const deadline = Date.now() + 1000
  while (!check()) {
    if (Date.now() > deadline) throw new Error("condition not reached")
    await new Promise((resolve) => setTimeout(resolve, 5))
  }
}

/** The `code` of a failed fetch's cause (`ECONNREFUSED`, `ECONNRESET`…). */
const failure = (promise: Promise<unknown>) =>
  promise.then(
    () => "answered",
    (error: any) => String(error?.cause?.code ?? error?.code ?? error)
  )

describe("the upstream simulator", () => {
  it("queues requests beyond maxRunning and shows the queue at /metrics", async () => {
    const sim = await simulator({ maxRunning: 2, latencyMs: 200 })
    expect(sim.metricsUrl).toBe(sim.url.replace(/\/v1$/, "/metrics"))
    const answers = Array.from({ length: 6 }, (_, i) => chat(sim, `queued ${i}`))
    await until(() => sim.stats.waiting === 4)
    expect(sim.stats.running).toBe(2)

    const metrics = await fetch(sim.metricsUrl)
    expect(metrics.headers.get("content-type")).toBe("text/plain; version=0.0.4")
    const text = await metrics.text()
    expect(text).toContain(`# TYPE vllm:num_requests_waiting gauge`)
    expect(text).toContain(`# HELP vllm:num_requests_running `)
    expect(text).toContain(`vllm:num_requests_waiting{model_name="sim-model"} 4\n`)
    expect(text).toContain(`vllm:num_requests_running{model_name="sim-model"} 2\n`)

    const responses = await Promise.all(answers)
    expect(responses.map((r) => r.status)).toEqual([200, 200, 200, 200, 200, 200])
    expect(sim.stats).toMatchObject({ requests: 6, waiting: 0, running: 0, maxWaiting: 4, maxInFlight: 6, rejected: 0 })
    expect(await fetch(sim.metricsUrl).then((r) => r.text())).toContain(`vllm:num_requests_waiting{model_name="sim-model"} 0\n`)
    // The simulator's own figures, for a trial run from the command line.
    const own = (await fetch(sim.metricsUrl).then((r) => r.text())).split("\n").filter((l) => l.startsWith("simulator_"))
    expect(own).toEqual(["simulator_requests_total 6", "simulator_rejected_total 0", "simulator_max_in_flight 6"])
  })

  it("starts waiting requests in arrival order, drops abandoned ones and obeys a raised maxRunning at once", async () => {
    const sim = await simulator({ maxRunning: 1, latencyMs: 60 })
    const order: Array<string> = []
    const send = (prompt: string, signal?: AbortSignal) =>
      chat(sim, prompt, "sim-model", signal).then(async (r) => order.push((await json(r)).choices[0].message.content))
    const first = [send("a")]
    for (const [i, prompt] of ["b", "c"].entries()) {
      await until(() => sim.stats.waiting === i)
      first.push(send(prompt))
    }
    await Promise.all(first)
    expect(order).toEqual(["echo: a", "echo: b", "echo: c"])
    expect(sim.stats.maxWaiting).toBe(2)

    sim.reset()
    expect(sim.stats.maxWaiting).toBe(0)
    sim.latencyMs = 300
    const rest = [send("y")]
    await until(() => sim.stats.running === 1)
    const gone = new AbortController()
    const abandoned = failure(send("x", gone.signal))
    await until(() => sim.stats.waiting === 1)
    rest.push(send("z"))
    await until(() => sim.stats.waiting === 2)
    gone.abort() // a waiting request whose client goes away leaves the queue
    expect(await abandoned).not.toBe("answered")
    await until(() => sim.stats.waiting === 1)
    expect(sim.stats.running).toBe(1)
    sim.maxRunning = undefined
    expect(sim.stats).toMatchObject({ waiting: 0, running: 2 })
    await Promise.all(rest)
    expect(order.slice(3)).toEqual(["echo: y", "echo: z"])
    expect(sim.stats).toMatchObject({ aborted: 1, maxWaiting: 2, running: 0 })
  })

  it("answers 429 rate_limit_exceeded at once beyond capacity, without Retry-After", async () => {
    const sim = await simulator({ capacity: 2, latencyMs: 300 })
    const held = [chat(sim, "one"), chat(sim, "two")]
    await until(() => sim.stats.inFlight === 2)
    const startedAt = Date.now()
    const over = await chat(sim, "three")
    expect(Date.now() - startedAt).toBeLessThan(200)
    expect(over.status).toBe(429)
    expect(over.headers.get("retry-after")).toBeNull()
    expect((await json(over)).error).toMatchObject({ code: "rate_limit_exceeded" })
    expect(sim.stats.rejected).toBe(1)

    sim.capacity = 3 // settable at run time
    expect((await chat(sim, "four")).status).toBe(200)
    expect((await Promise.all(held)).map((r) => r.status)).toEqual([200, 200])
    expect(sim.stats.rejected).toBe(1)
  })

  it("answers every request with failAll's status (and Retry-After) while it is set", async () => {
    const sim = await simulator({ latencyMs: 500 })
    sim.failAll = { status: 503, retryAfter: "2" }
    const startedAt = Date.now()
    const down = await chat(sim, "down [flaky:500x1]")
    expect(Date.now() - startedAt).toBeLessThan(200)
    expect(down.status).toBe(503)
    expect(down.headers.get("retry-after")).toBe("2")
    expect((await json(down)).error).toMatchObject({ type: "server_error" })

    sim.failAll = { status: 429 }
    const limited = await chat(sim, "limited")
    expect(limited.status).toBe(429)
    expect(limited.headers.get("retry-after")).toBeNull()
    expect((await json(limited)).error).toMatchObject({ code: "rate_limit_exceeded" })
    expect(sim.stats.rejected).toBe(2)

    sim.failAll = undefined
    sim.latencyMs = 0
    expect((await chat(sim, "up")).status).toBe(200)
    expect(sim.stats).toMatchObject({ requests: 3, rejected: 2 })
  })

  it("stop() refuses connections and drops open ones; start() answers again on the same port", async () => {
    const sim = await simulator()
    const url = sim.url
    expect((await chat(sim, "before")).status).toBe(200)
    const hanging = failure(chat(sim, "stuck [hang]"))
    await until(() => sim.stats.inFlight === 1)

    await sim.stop()
    expect(await hanging).not.toBe("answered")
    expect(await failure(chat(sim, "while down"))).toBe("ECONNREFUSED")
    expect(sim.stats.inFlight).toBe(0)

    await sim.start()
    expect(sim.url).toBe(url)
    expect((await chat(sim, "after")).status).toBe(200)
    expect(sim.stats.requests).toBe(3)
  })

  it("serves the models it is given and counts requests per model", async () => {
    const sim = await simulator({ models: ["alpha", "beta"] })
    const listed = await fetch(`${sim.url}/models`).then(json)
    expect(listed.data.map((m: { id: string }) => m.id)).toEqual(["alpha", "beta"])
    const statuses = await Promise.all([chat(sim, "1", "alpha"), chat(sim, "2", "alpha"), chat(sim, "3", "beta"), chat(sim, "4", "gamma")])
    expect(statuses.map((r) => r.status)).toEqual([200, 200, 200, 404])
    expect(Object.fromEntries(sim.stats.byModel)).toEqual({ alpha: 2, beta: 1, gamma: 1 })
    expect(await fetch(sim.metricsUrl).then((r) => r.text())).toContain(`vllm:num_requests_running{model_name="alpha"} 0`)

    sim.reset()
    expect(sim.stats.byModel.size).toBe(0)
    expect(sim.stats).toMatchObject({ requests: 0, rejected: 0, maxWaiting: 0 })
  })

  it("answers as OpenAI does what a client decodes: n choices, base64 embeddings, a token array as one input", async () => {
    const sim = await simulator()
    const post = (path: string, body: object) =>
      fetch(`${sim.url}${path}`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) }).then(json)
    const chatAnswer = await post("/chat/completions", { model: "sim-model", n: 2, messages: [{ role: "user", content: "hi" }] })
    expect(chatAnswer.choices).toEqual([0, 1].map((index) => ({
      index,
      message: { role: "assistant", content: "echo: hi", refusal: null, annotations: [] },
      logprobs: null,
      finish_reason: "stop"
    })))
    const floats = await post("/embeddings", { model: "sim-model", input: "hello", dimensions: 4 })
    const encoded = await post("/embeddings", { model: "sim-model", input: "hello", dimensions: 4, encoding_format: "base64" })
    const bytes = Buffer.from(encoded.data[0].embedding, "base64")
    const decoded = Array.from(new Float32Array(bytes.buffer, bytes.byteOffset, bytes.length / 4))
    expect(decoded).toEqual(floats.data[0].embedding.map(Math.fround))
    const tokenArray = await post("/embeddings", { model: "sim-model", input: [15339, 1917] })
    const tokenArrays = await post("/embeddings", { model: "sim-model", input: [[15339], [1917]] })
    expect([tokenArray.data.length, tokenArrays.data.length]).toEqual([1, 2])
    const moderation = await post("/moderations", { input: "hi" })
    expect(Object.keys(moderation.results[0].categories)).toHaveLength(13)
    expect(moderation.results[0].category_applied_input_types.violence).toEqual(["text"])
  })
})
