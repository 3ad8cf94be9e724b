// The README's JavaScript and Python examples, extracted from README.md and
// run exactly as printed: the JavaScript one as the module script of a page
// in Chromium, the Python listener with `websockets`, the FastAPI join hook
// with the README's roomcast.toml (PYTHON names the interpreter that has
// websockets, fastapi and uvicorn; scripts/test makes a virtual
// environment).

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterEach, beforeEach, test } from "node:test";
import {
  broadcast,
  launchBrowser,
  newPage,
  openScriptPage,
  readmeBlocks,
  startProxy,
  freePort,
  startServer,
  token,
  until,
} from "./lib.mjs";

const publisher = token("backend", "publish");
// What the seed's clients listened for, each in a room they joined.
const EVENTS = [
  { room: "downloads", type: "download_progress", data: { download_id: "abc123", key: "attack-on-titan", percent: 45.2 } },
  { room: "download_progress", type: "download_progress", data: { download_id: "abc123", key: "attack-on-titan", percent: 46 } },
  { room: "scan_progress", type: "scan_progress", data: { key: "one-piece", scanned: 10, total: 40 } },
  { room: "downloads", type: "download_complete", data: { download_id: "abc123", key: "attack-on-titan" } },
  { room: "downloads", type: "download_failed", data: { download_id: "def456", key: "frieren", error: "disk full" } },
  { room: "downloads", type: "queue_status", data: { active: 1, queued: 3 } },
  { room: "scan_progress", type: "scan_complete", data: { key: "one-piece" } },
  { room: "scan_progress", type: "scan_failed", data: { key: "one-piece", error: "unreadable" } },
];

/** The line each example prints for each event: "<type> <room> <seq> <data
 * as JSON>" (the server sorts the keys of `data`; Python's json.dumps puts
 * a space after "," and ":"). */
function expectedLines(python = false) {
  const seqs = {};
  return EVENTS.map((e) => {
    seqs[e.room] = (seqs[e.room] ?? 0) + 1;
    const entries = Object.entries(e.data).sort(([a], [b]) => (a < b ? -1 : 1));
    const [comma, colon] = python ? [", ", ": "] : [",", ":"];
    const data = `{${entries.map(([k, v]) => JSON.stringify(k) + colon + JSON.stringify(v)).join(comma)}}`;
    return `${e.type} ${e.room} ${seqs[e.room]} ${data}`;
  });
}

let server;
beforeEach(async () => {
  server = await startServer();
});
afterEach(async () => {
  await server?.stop();
});

test("the README's JavaScript example runs as printed in Chromium", async () => {
  const blocks = readmeBlocks("js");
  assert.equal(blocks.length, 1, "README.md has one js example");
  const browser = await launchBrowser();
  try {
    const page = await newPage(browser);
    await openScriptPage(page, server.base, blocks[0]);
    await until("the example joined its rooms", () => page.logs.includes("joined scan_progress at seq 0"));
    assert.deepEqual(page.logs.slice(0, 4), [
      "roomcast connecting ",
      "roomcast open ",
      "joined downloads at seq 0",
      "joined download_progress at seq 0",
    ]);
    for (const event of EVENTS) await broadcast(server, publisher, event);
    const expected = expectedLines();
    await until("every event logged", () => expected.every((line) => page.logs.includes(line)));
    const logged = page.logs.filter((l) => expected.includes(l));
    assert.deepEqual(logged, expected);
    assert.deepEqual(page.problems, []);
  } finally {
    await browser.close();
  }
});

test("the README's Python example runs as printed, and resumes after a drop", async () => {
  const blocks = readmeBlocks("python").filter((b) => b.includes("import websockets"));
  assert.equal(blocks.length, 1, "README.md has one websockets example");
  const python = process.env.PYTHON ?? "python3";
  const proxy = await startProxy(server.port);
  const child = spawn(python, ["-u", "-c", blocks[0]], {
    env: { ...process.env, WS_URL: proxy.ws },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  let err = "";
  child.stdout.on("data", (d) => (out += d));
  child.stderr.on("data", (d) => (err += d));
  const lines = () => out.split("\n").filter(Boolean);
  try {
    await until("the example joined its rooms", () => {
      if (child.exitCode !== null) throw new Error(`python exited ${child.exitCode}: ${err}`);
      return lines().includes("joined scan_progress at seq 0");
    });
    // Three events live, one in each room (a room without history would be
    // dropped with its last member, and come back with a new epoch); the
    // network then drops, the rest is published meanwhile and must arrive
    // as the replay after the example's rejoin.
    const expected = expectedLines(true);
    for (const event of EVENTS.slice(0, 3)) await broadcast(server, publisher, event);
    await until("three events printed", () => expected.slice(0, 3).every((line) => lines().includes(line)));
    proxy.refusing = true;
    proxy.cut();
    await until("the drop noticed", () => lines().some((l) => l.startsWith("disconnected:")));
    for (const event of EVENTS.slice(3)) await broadcast(server, publisher, event);
    proxy.refusing = false;
    await until("every event printed", () => expected.every((line) => lines().includes(line)), 20000).catch((e) => {
      throw new Error(`${e.message}; printed:\n${out}`);
    });
    assert.deepEqual(lines().filter((l) => expected.includes(l)), expected);
    assert.ok(!lines().some((l) => l.includes("reload its state")), lines().join("\n"));
    assert.equal(err, "");
  } finally {
    child.kill();
    await proxy.close();
  }
});

// Joins from Python clients: one line per case, "<room> <type> <code>".
const JOINER = `
import asyncio, json, os, websockets
async def main():
    for token, room in json.loads(os.environ["CASES"]):
        async with websockets.connect(os.environ["WS_URL"] + "?token=" + token) as ws:
            await ws.recv()
            await ws.send(json.dumps({"action": "join", "data": {"room": room}}))
            reply = json.loads(await ws.recv())
            print(room, reply["type"], reply["data"].get("code", "-"), flush=True)
asyncio.run(main())
`;

function run(python, args, env) {
  const child = spawn(python, args, { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
  const result = { child, out: "", err: "" };
  child.stdout.on("data", (d) => (result.out += d));
  child.stderr.on("data", (d) => (result.err += d));
  result.done = new Promise((resolve) => child.on("exit", (code) => resolve(code)));
  return result;
}

test("the README's FastAPI join hook decides team rooms, as printed", async () => {
  const [hook] = readmeBlocks("python").filter((b) => b.includes("FastAPI"));
  const [config] = readmeBlocks("toml");
  assert.ok(hook && config, "README.md has the hook example and its roomcast.toml");
  const python = process.env.PYTHON ?? "python3";
  const port = await freePort();
  const backend = run(python, ["-u", "-c", hook], { PORT: String(port) });
  const dir = mkdtempSync(path.join(os.tmpdir(), "roomcast-readme-"));
  const file = path.join(dir, "roomcast.toml");
  writeFileSync(file, config);
  // The README's file as printed; only the backend's port is the test's.
  const hooked = await startServer({
    config: file,
    env: { ROOMCAST_HOOKS__JOIN_URL: `http://127.0.0.1:${port}/roomcast/join` },
  });
  try {
    await until("the FastAPI backend answers", async () => {
      if (backend.child.exitCode !== null) throw new Error(`backend exited: ${backend.err}`);
      try {
        const response = await fetch(`http://127.0.0.1:${port}/roomcast/join`, {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ connection_id: "probe", user: null, room: "team:42" }),
        });
        return response.ok;
      } catch {
        return false;
      }
    }, 30000);
    const cases = [
      [token("alice"), "team:42"],
      [token("carol"), "team:42"],
      [token("carol"), "team:7"],
      [token("alice"), "lobby"],
    ];
    const joiner = run(python, ["-u", "-c", JOINER], { WS_URL: hooked.ws, CASES: JSON.stringify(cases) });
    assert.equal(await joiner.done, 0, joiner.err);
    assert.deepEqual(joiner.out.trim().split("\n"), [
      "team:42 system_info -",
      "team:42 error FORBIDDEN",
      "team:7 system_info -",
      "lobby system_info -",
    ]);
    // The backend going away fails closed: HOOK_UNAVAILABLE, not a join.
    backend.child.kill();
    await backend.done;
    const late = run(python, ["-u", "-c", JOINER], {
      WS_URL: hooked.ws,
      CASES: JSON.stringify([[token("bob"), "team:42"]]),
    });
    assert.equal(await late.done, 0, late.err);
    assert.equal(late.out.trim(), "team:42 error HOOK_UNAVAILABLE");
  } finally {
    backend.child.kill();
    await hooked.stop();
  }
});
