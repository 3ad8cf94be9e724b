// roomcast.js in Node with a scripted WebSocket: a ROOM_GAP warning reaches
// the room's handler as an unrecovered notice, and the room continues from
// the position it names (a new epoch restarts seq at 1; nothing is dropped
// as "already seen").

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

test("a ROOM_GAP warning is a notice and the room continues after it", async () => {
  const client = new RoomcastClient("ws://test/ws/connect", { WebSocket: ScriptedSocket });
  const connected = client.connect();
  const ws = ScriptedSocket.last;
  ws.deliver({ type: "connected", data: { connection_id: "c" } });
  await connected;
  const got = [];
  const gaps = [];
  client.on("gap", (notice) => gaps.push(notice));
  const joined = client.join("downloads", (msg) => got.push(msg));
  const join = ws.sent.at(-1);
  ws.deliver({ type: "system_info", id: join.id, data: { room: "downloads", seq: 4, epoch: "e-1" } });
  await joined;
  ws.deliver({ type: "queue_status", room: "downloads", seq: 5, data: {} });
  ws.deliver({
    type: "system_warning",
    data: { code: "ROOM_GAP", room: "downloads", epoch: "e-2", seq: 0, message: "lost" },
  });
  ws.deliver({ type: "queue_status", room: "downloads", seq: 1, data: {} });
  assert.deepEqual(
    got.map((m) => [m.type, m.seq ?? null, m.recovered ?? null]),
    [
      ["queue_status", 5, null],
      ["roomcast:gap", null, false],
      ["queue_status", 1, null],
    ],
  );
  assert.equal(gaps.length, 1);
  assert.deepEqual(client.rooms(), [{ room: "downloads", epoch: "e-2", seq: 1 }]);
  client.close();
});
