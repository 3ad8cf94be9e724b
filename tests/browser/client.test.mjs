// roomcast.js in Chromium against the real server: reconnection after a
// restart (recovered: false), recovery after a network drop the server
// survives (recovered: true, every missed message in order), and every
// request() settling.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import {
  broadcast,
  launchBrowser,
  metric,
  newPage,
  openScriptPage,
  startProxy,
  startServer,
  token,
  until,
  unexpectedProblems,
} from "./lib.mjs";

const publisher = token("backend", "publish");
let browser;

before(async () => {
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
});

// Sets up window.h: a client on `url`, its states, and what the handler of
// `room` got. Resolves with the join reply.
async function connectInPage(page, url, room, options = {}) {
  return page.evaluate(
    async ({ url, room, options }) => {
      const { RoomcastClient } = await import("/client/roomcast.js");
      const client = new RoomcastClient(url, { minDelayMs: 100, maxDelayMs: 400, ...options });
      const h = (window.h = { client, states: [], got: [], settled: {} });
      client.on("state", (state, info) => h.states.push({ state, code: info.code ?? null }));
      await client.connect();
      const reply = await client.join(room, (msg) => h.got.push(msg));
      return reply;
    },
    { url, room, options },
  );
}

const got = (page) => page.evaluate(() => window.h.got);

test("after a server restart the client reconnects and its room reports recovered: false", async () => {
  let server = await startServer();
  const page = await newPage(browser);
  try {
    await openScriptPage(page, server.base);
    const reply = await connectInPage(page, server.ws, "downloads");
    assert.equal(reply.data.message, "Joined room: downloads");
    const firstEpoch = reply.data.epoch;
    for (const percent of [10, 20]) {
      await broadcast(server, publisher, { room: "downloads", type: "download_progress", data: { download_id: "a", key: "k", percent } });
    }
    await until("two events", async () => (await got(page)).length === 2);

    await server.stop();
    await until("reconnecting after 1001", () =>
      page.evaluate(() => window.h.states.some((s) => s.state === "reconnecting" && s.code === 1001)),
    );
    server = await startServer({ port: server.port });
    await until("the rejoin notice", async () => (await got(page)).some((m) => m.type === "roomcast:rejoined"));
    const notice = (await got(page)).find((m) => m.type === "roomcast:rejoined");
    assert.equal(notice.room, "downloads");
    assert.equal(notice.recovered, false);
    assert.notEqual(notice.data.epoch, firstEpoch, "a restarted server has new epochs");

    await broadcast(server, publisher, { room: "downloads", type: "download_complete", data: { download_id: "a", key: "k" } });
    await until("the event after the restart", async () => (await got(page)).length === 4);
    const after = (await got(page)).at(-1);
    assert.deepEqual([after.type, after.seq], ["download_complete", 1]);
    const states = await page.evaluate(() => window.h.states.map((s) => s.state));
    assert.deepEqual([states[0], states[1], states.at(-1)], ["connecting", "open", "open"]);
    assert.equal(await page.evaluate(() => window.h.client.reconnects), 1);
    assert.deepEqual(unexpectedProblems(page), []);
  } finally {
    await page.close();
    await server.stop();
  }
});

test("after a network drop the server survives: recovered: true, every missed message once, in order; every request settles", async () => {
  const server = await startServer();
  const proxy = await startProxy(server.port);
  const page = await newPage(browser);
  try {
    await openScriptPage(page, server.base);
    const reply = await connectInPage(page, proxy.ws, "downloads", { outboxMax: 2 });
    const epoch = reply.data.epoch;
    for (const percent of [1, 2]) {
      await broadcast(server, publisher, { room: "downloads", type: "download_progress", data: { download_id: "a", key: "k", percent } });
    }
    await until("seq 1 and 2", async () => (await got(page)).length === 2);

    // Three pings reach the server, whose replies the network then loses.
    proxy.holding = true;
    const before = await metric(server, "roomcast_messages_in_total");
    await page.evaluate(() => {
      const h = window.h;
      h.settle = (name, promise) =>
        promise.then(
          (reply) => (h.settled[name] = { ok: reply.type }),
          (error) => (h.settled[name] = { error: error.code }),
        );
      for (const n of [1, 2, 3]) h.settle(`in-flight-${n}`, h.client.request({ action: "ping" }));
    });
    await until("the pings at the server", async () => (await metric(server, "roomcast_messages_in_total")) >= before + 3);
    proxy.refusing = true;
    proxy.cut();
    await until("reconnecting", () => page.evaluate(() => window.h.client.state === "reconnecting"));
    await until("in-flight requests settled", () => page.evaluate(() => Object.keys(window.h.settled).length === 3));

    // While disconnected: two requests wait in the outbox (outboxMax 2), a
    // third is refused at once, and the room gets three broadcasts.
    await page.evaluate(() => {
      const h = window.h;
      h.settle("queued-1", h.client.request({ action: "ping" }));
      h.settle("queued-2", h.client.request({ action: "presence", data: { room: "downloads" } }));
      h.settle("over-the-bound", h.client.request({ action: "ping" }));
    });
    for (const percent of [3, 4, 5]) {
      await broadcast(server, publisher, { room: "downloads", type: "download_progress", data: { download_id: "a", key: "k", percent } });
    }
    await until("the server noticed the drop", async () => (await metric(server, "roomcast_connections")) === 0);
    assert.equal((await fetch(`${server.base}/healthz`)).status, 200);

    proxy.holding = false;
    proxy.refusing = false;
    await until("recovered and replayed", async () => (await got(page)).length === 6);
    const messages = await got(page);
    assert.deepEqual(messages[2].type, "roomcast:rejoined");
    assert.equal(messages[2].recovered, true);
    assert.equal(messages[2].data.epoch, epoch);
    const seqs = messages.filter((m) => m.type === "download_progress").map((m) => [m.seq, m.data.percent]);
    assert.deepEqual(seqs, [[1, 1], [2, 2], [3, 3], [4, 4], [5, 5]]);

    await until("queued requests settled", () => page.evaluate(() => Object.keys(window.h.settled).length === 6));
    const settled = await page.evaluate(() => window.h.settled);
    assert.deepEqual(settled, {
      "in-flight-1": { error: "DISCONNECTED" },
      "in-flight-2": { error: "DISCONNECTED" },
      "in-flight-3": { error: "DISCONNECTED" },
      "queued-1": { ok: "pong" },
      "queued-2": { ok: "presence" },
      "over-the-bound": { error: "OUTBOX_FULL" },
    });

    // An error frame settles its request; live delivery goes on after the replay.
    const error = await page.evaluate(() => window.h.client.request({ action: "subscribe" }).catch((e) => [e.code, e.reply.data.message]));
    assert.deepEqual(error, ["UNKNOWN_ACTION", "Unknown action: subscribe"]);
    await broadcast(server, publisher, { room: "downloads", type: "download_complete", data: { download_id: "a", key: "k" } });
    await until("seq 6", async () => (await got(page)).at(-1)?.seq === 6);

    // close(): what waits is rejected with CLOSED and nothing reconnects.
    proxy.refusing = true;
    proxy.cut();
    await until("reconnecting again", () => page.evaluate(() => window.h.client.state === "reconnecting"));
    const closed = await page.evaluate(async () => {
      const h = window.h;
      const waiting = h.client.request({ action: "ping" }).catch((e) => e.code);
      h.client.close();
      const afterClose = await h.client.request({ action: "ping" }).catch((e) => e.code);
      return [await waiting, afterClose, h.client.state];
    });
    assert.deepEqual(closed, ["CLOSED", "CLOSED", "closed"]);
    proxy.refusing = false;
    await new Promise((resolve) => setTimeout(resolve, 1000));
    assert.equal(proxy.connections(), 0, "no reconnect after close()");
    assert.deepEqual(unexpectedProblems(page), []);
  } finally {
    await page.close();
    await proxy.close();
    await server.stop();
  }
});

test("tokens go in the subprotocol, never in the URL; 4001 without getToken ends the client", async () => {
  const server = await startServer();
  const page = await newPage(browser);
  try {
    await openScriptPage(page, server.base);
    const short = token("alice", "", undefined, 2);
    const seen = await page.evaluate(
      async ({ url, short }) => {
        const { RoomcastClient } = await import("/client/roomcast.js");
        const opened = [];
        class Spy extends WebSocket {
          constructor(u, protocols) {
            super(u, protocols);
            opened.push({ url: u, protocols });
          }
        }
        const client = new RoomcastClient(url, { token: short, WebSocket: Spy, minDelayMs: 100 });
        const states = [];
        client.on("state", (s, info) => states.push([s, info.code ?? null]));
        const connected = await client.connect();
        await new Promise((resolve) => client.on("state", (s) => s === "closed" && resolve()));
        return { opened, user: connected.data.user_id, states };
      },
      { url: server.ws, short },
    );
    assert.equal(seen.user, "alice");
    assert.deepEqual(seen.opened, [{ url: server.ws, protocols: ["roomcast", `roomcast.bearer.${short}`] }]);
    assert.deepEqual(seen.states.at(-1), ["closed", 4001]);
    assert.deepEqual(unexpectedProblems(page), []);
  } finally {
    await page.close();
    await server.stop();
  }
});

test("getToken: a fresh token after 4001 reconnects", async () => {
  const server = await startServer();
  const page = await newPage(browser);
  try {
    await openScriptPage(page, server.base);
    const first = token("bob", "", undefined, 2);
    const second = token("bob", "", undefined, 3600);
    const result = await page.evaluate(
      async ({ url, first, second }) => {
        const { RoomcastClient } = await import("/client/roomcast.js");
        let calls = 0;
        const client = new RoomcastClient(url, {
          token: first,
          minDelayMs: 100,
          getToken: async () => (++calls === 1 ? first : second),
        });
        const codes = [];
        client.on("state", (s, info) => codes.push([s, info.code ?? null]));
        await client.connect();
        await client.join("downloads");
        await new Promise((resolve) => client.on("rejoin", resolve));
        return { codes, calls, user: client.connected.data.user_id };
      },
      { url: server.ws, first, second },
    );
    assert.equal(result.user, "bob");
    assert.ok(result.codes.some(([s, c]) => s === "reconnecting" && c === 4001), JSON.stringify(result.codes));
    assert.deepEqual(result.codes.at(-1), ["open", null]);
  } finally {
    await page.close();
    await server.stop();
  }
});

test("TOKEN_EXPIRING: getToken's new token is sent as a refresh and the connection stays", async () => {
  const server = await startServer();
  const page = await newPage(browser);
  try {
    await openScriptPage(page, server.base);
    const short = token("carol", "", undefined, 3);
    const long = token("carol", "", undefined, 3600);
    const result = await page.evaluate(
      async ({ url, short, long }) => {
        const { RoomcastClient } = await import("/client/roomcast.js");
        const client = new RoomcastClient(url, { token: short, getToken: async () => long });
        const states = [];
        client.on("state", (s, info) => states.push([s, info.code ?? null]));
        const warned = new Promise((resolve) => client.on("system_warning", (m) => resolve(m.data.code)));
        const refreshed = new Promise((resolve) => client.on("refreshed", (m) => resolve(m.data.message)));
        await client.connect();
        const result = { warning: await warned, refreshed: await refreshed };
        // Past the first token's expiry: still the same connection.
        await new Promise((resolve) => setTimeout(resolve, 4000));
        result.states = [...states];
        result.pong = (await client.request({ action: "ping" })).type;
        client.close();
        return result;
      },
      { url: server.ws, short, long },
    );
    assert.deepEqual(result, {
      warning: "TOKEN_EXPIRING",
      refreshed: "Token refreshed",
      states: [["connecting", null], ["open", null]],
      pong: "pong",
    });
    assert.deepEqual(unexpectedProblems(page), []);
  } finally {
    await page.close();
    await server.stop();
  }
});
