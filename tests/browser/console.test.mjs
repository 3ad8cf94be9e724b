// The console page (GET /) in Chromium, on a first run: the server starts
// without a key on loopback, prints a console link, and the page opened from
// that link connects, joins, shows published events and publishes itself.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { artifactPath, broadcast, launchBrowser, newPage, startServer, until } from "./lib.mjs";

let server;
let browser;
let page;
let link;
let publishToken;

before(async () => {
  server = await startServer({ secret: null });
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

test("the first run prints one console link with a publish token", async () => {
  const line = await until("the console link", () => server.stdout.split("\n").find((l) => l.includes("#token=")));
  const match = line.match(/(http:\/\/127\.0\.0\.1:\d+\/)#token=([\w.-]+)$/);
  assert.ok(match, `unexpected link line: ${line}`);
  assert.equal(match[1], `${server.base}/`);
  link = match[0];
  publishToken = match[2];
  assert.equal(server.stdout.trim().split("\n").length, 1, "exactly one line on stdout");
  assert.ok(!server.stderr.includes(publishToken), "the token must not appear in the log");
  // The token works for the publish API of this process.
  const receipt = await broadcast(server, publishToken, { room: "warmup", type: "queue_status", data: {} });
  assert.equal(receipt.seq, 1);
});

test("the console loads without errors, connects and joins downloads", async () => {
  page = await newPage(browser);
  await page.goto(link);
  await page.waitForSelector("#state.open");
  await page.waitForSelector('#rooms li[data-room="downloads"] .badge[data-recovered="null"]');
  await until("the joined badge", async () => (await page.textContent('#rooms li[data-room="downloads"] .badge')) === "joined");
  assert.ok(!page.url().includes("token"), `the token stays in the address bar: ${page.url()}`);
  assert.match(await page.textContent("#identity"), /signed in as console/);
  assert.equal(await page.isDisabled("#publish"), false, "a publish token enables the form");
  assert.deepEqual(page.problems, []);
});

test("events published through the API appear in the list, newest first", async () => {
  await page.fill("#room-input", "scan_progress");
  await page.click("#join");
  await page.waitForSelector('#rooms li[data-room="scan_progress"]');
  await until("scan_progress joined", async () => (await page.textContent('#rooms li[data-room="scan_progress"] .badge')) === "joined");
  const events = [
    { room: "downloads", type: "download_progress", data: { download_id: "abc123", key: "attack-on-titan", percent: 12.5 } },
    { room: "downloads", type: "queue_status", data: { active: 2, queued: 5 } },
    { room: "downloads", type: "download_progress", data: { download_id: "abc123", key: "attack-on-titan", percent: 45.2 } },
    { room: "scan_progress", type: "scan_progress", data: { key: "one-piece", scanned: 120, total: 400 } },
    { room: "downloads", type: "download_complete", data: { download_id: "abc123", key: "attack-on-titan" } },
  ];
  for (const event of events) await broadcast(server, publishToken, event);
  await page.waitForSelector('#events tr[data-type="download_complete"][data-room="downloads"][data-seq="4"]');
  await page.waitForSelector('#events tr[data-type="scan_progress"][data-room="scan_progress"][data-seq="1"]');
  const rows = await page.$$eval("#events tr:not(.note)", (trs) => trs.map((tr) => [tr.dataset.type, tr.dataset.room, tr.dataset.seq]));
  assert.deepEqual(rows.slice(0, 5), [
    ["download_complete", "downloads", "4"],
    ["scan_progress", "scan_progress", "1"],
    ["download_progress", "downloads", "3"],
    ["queue_status", "downloads", "2"],
    ["download_progress", "downloads", "1"],
  ]);
  assert.match(await page.textContent('#events tr[data-seq="3"] td.data'), /"percent":45.2/);
  assert.equal(await page.textContent('#rooms li[data-room="downloads"] .pos'), "seq 4");
});

test("the publish form publishes with the token from the link", async () => {
  await page.selectOption("#pub-type", "download_failed");
  await page.fill("#pub-data", '{"download_id": "abc123", "key": "attack-on-titan", "error": "disk full"}');
  await page.click("#publish");
  await page.waitForSelector('#events tr[data-type="download_failed"][data-seq="5"]');
  assert.match(await page.textContent("#pub-result"), /published: seq 5, delivered to 1/);
  // A refused publish says why.
  await page.fill("#pub-data", '{"download_id": "x", "key": "not a key"}');
  await page.click("#publish");
  await until("the refusal", async () => (await page.textContent("#pub-result")).includes("INVALID_KEY"));
});

test("pause holds new events and resume shows them", async () => {
  await page.click("#pause");
  await broadcast(server, publishToken, { room: "downloads", type: "queue_status", data: { active: 1 } });
  await until("the held counter", async () => (await page.textContent("#pause")).includes("1 new"));
  assert.equal(await page.$('#events tr[data-seq="6"]'), null);
  await page.click("#pause");
  await page.waitForSelector('#events tr[data-type="queue_status"][data-seq="6"]');
});

test("server status and metrics are shown and refreshed", async () => {
  await until("status", async () => (await page.textContent("#st-status")) === "operational");
  await until("broadcast count", async () => Number((await page.textContent("#st-broadcasts")).replace(/\D/g, "")) >= 7);
  assert.match(await page.textContent("#st-connections"), /^[1-9]\d*$/);
  const types = await page.$$eval("#pub-type option", (o) => o.map((x) => x.value));
  assert.ok(types.includes("scan_complete") && !types.includes("connected"), types.join());
});

test("a screenshot of the console with live events is kept", async () => {
  for (const [i, percent] of [62.0, 78.4, 91.3].entries()) {
    await broadcast(server, publishToken, {
      room: "downloads",
      type: "download_progress",
      data: { download_id: "def456", key: "frieren", percent, speed_mbps: 3.1 + i },
    });
  }
  await page.waitForSelector('#events tr[data-seq="9"]');
  await page.selectOption("#pub-type", "download_complete");
  await page.fill("#pub-data", '{"download_id": "def456", "key": "frieren"}');
  await page.click("#publish");
  await page.waitForSelector('#events tr[data-type="download_complete"][data-seq="10"]');
  await until("the form's receipt", async () => (await page.textContent("#pub-result")).includes("seq 10"));
  await page.setViewportSize({ width: 1360, height: 980 });
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path: artifactPath("console.png") });
  // The one refused publish above (400 INVALID_KEY) is logged by Chromium as
  // a failed resource load; nothing else may be.
  const refused = "console error: Failed to load resource: the server responded with a status of 400 (Bad Request)";
  assert.deepEqual(page.problems, [refused]);
});

test("the client and the page are cacheable and revalidate with the ETag", async () => {
  for (const [path, type] of [["/client/roomcast.js", "text/javascript"], ["/", "text/html"]]) {
    const first = await fetch(server.base + path);
    assert.equal(first.status, 200);
    assert.ok(first.headers.get("content-type").startsWith(type));
    assert.equal(first.headers.get("cache-control"), "no-cache");
    const etag = first.headers.get("etag");
    assert.match(etag, /^"[0-9a-f]{16}"$/);
    const again = await fetch(server.base + path, { headers: { "If-None-Match": etag } });
    assert.equal(again.status, 304);
  }
});
