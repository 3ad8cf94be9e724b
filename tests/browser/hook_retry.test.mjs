// roomcast.js in Node with a scripted WebSocket: a join answered
// HOOK_UNAVAILABLE is sent again with backoff until it is answered, and
// rejects once joinRetriesMax retries were answered HOOK_UNAVAILABLE too;
// other join errors reject at once.

import assert from "node:assert/strict";
import { test } from "node:test";
import { RoomcastClient } from "../../net/client/roomcast.js";

class ScriptedSocket {
  static last = null;
  constructor(url, protocols) {
    this.url = url;
    this.protocols = protocols;
    this.sent = [];
    ScriptedSocket.last = this;
  }
  send(text) {
    this.sent.push(JSON.parse(text));
  }
  close() {}
  deliver(message) {
    this.onmessage({ data: JSON.stringify(message) });
  }
}

const unavailable = (id) => ({
  type: "error",
  id,
  data: { code: "HOOK_UNAVAILABLE", message: "the application could not decide" },
});

async function connected(options = {}) {
  const client = new RoomcastClient("ws://test/ws/connect", {
    WebSocket: ScriptedSocket,
    minDelayMs: 5,
    maxDelayMs: 20,
    ...options,
  });
  const opened = client.connect();
  const ws = ScriptedSocket.last;
  ws.deliver({ type: "connected", data: { connection_id: "c" } });
  await opened;
  return { client, ws };
}

/** Waits until the socket has sent `n` messages (a retry is due). */
async function sentCount(ws, n) {
  for (let i = 0; i < 500 && ws.sent.length < n; i++) {
    await new Promise((resolve) => setTimeout(resolve, 2));
  }
  assert.equal(ws.sent.length, n, `expected ${n} sent messages`);
}

test("a HOOK_UNAVAILABLE join is retried with backoff until it is answered", async () => {
  const { client, ws } = await connected();
  const joined = client.join("team:42", () => {});
  ws.deliver(unavailable(ws.sent.at(-1).id));
  await sentCount(ws, 2);
  ws.deliver(unavailable(ws.sent.at(-1).id));
  await sentCount(ws, 3);
  const retry = ws.sent.at(-1);
  assert.deepEqual([retry.action, retry.data.room], ["join", "team:42"]);
  ws.deliver({ type: "system_info", id: retry.id, data: { room: "team:42", seq: 0, epoch: "e" } });
  const reply = await joined;
  assert.equal(reply.data.room, "team:42");
  assert.deepEqual(client.rooms(), [{ room: "team:42", epoch: "e", seq: 0 }]);
  client.close();
});

test("after joinRetriesMax retries the join rejects with HOOK_UNAVAILABLE", async () => {
  const { client, ws } = await connected({ joinRetriesMax: 2 });
  const joined = client.join("team:42", () => {});
  for (let n = 1; n <= 3; n++) {
    await sentCount(ws, n);
    ws.deliver(unavailable(ws.sent.at(-1).id));
  }
  await assert.rejects(joined, (error) => error.code === "HOOK_UNAVAILABLE");
  assert.deepEqual(client.rooms(), []);
  client.close();
});

test("FORBIDDEN rejects at once, and a room left meanwhile is not retried", async () => {
  const { client, ws } = await connected();
  const forbidden = client.join("team:1", () => {});
  ws.deliver({ type: "error", id: ws.sent.at(-1).id, data: { code: "FORBIDDEN", message: "no" } });
  await assert.rejects(forbidden, (error) => error.code === "FORBIDDEN");
  const left = client.join("team:2", () => {});
  ws.deliver(unavailable(ws.sent.at(-1).id));
  client.leave("team:2").catch(() => {}); // its reply never comes here
  await assert.rejects(left, (error) => error.code === "CLOSED");
  const before = ws.sent.length;
  await new Promise((resolve) => setTimeout(resolve, 60));
  assert.equal(ws.sent.length, before, "no join sent for a room that was left");
  client.close();
});
