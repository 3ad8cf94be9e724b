// The README's JavaScript and Python examples, extracted from README.md and
// run exactly as printed: the JavaScript one as the module script of a page
// in Chromium, the Python one with `websockets` (PYTHON names the
// interpreter that has it; scripts/test makes a virtual environment).

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { afterEach, beforeEach, test } from "node:test";
import {
  broadcast,
  launchBrowser,
  newPage,
  openScriptPage,
  readmeBlocks,
  startProxy,
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
  const blocks = readmeBlocks("python");
  assert.equal(blocks.length, 1, "README.md has one python example");
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
