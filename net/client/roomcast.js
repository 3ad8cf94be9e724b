// roomcast.js: the browser client of roomcast (a dependency-free ES module).
//
// Served by every roomcast server at GET /client/roomcast.js; the source lives
// in the roomcast repository (net/client/roomcast.js). Copy it into a bundled
// application as is. The wire protocol it speaks is docs/protocol.md.
//
//   import { RoomcastClient } from "/client/roomcast.js";
//   const client = new RoomcastClient("ws://127.0.0.1:8080/ws/connect", { token, getToken });
//   client.on("state", (state, info) => ...);    // "connecting" | "open" | "reconnecting" | "closed"
//   client.on("download_progress", (msg) => ...); // any message type
//   await client.connect();                       // resolves on the server's `connected` message
//   const reply = await client.join("downloads", (msg) => ...); // the join reply
//   await client.leave("downloads");
//   const pong = await client.request({ action: "ping" });
//   client.close();
//
// The full reference is docs/client.md. In short:
//
// * Tokens travel in the subprotocol pair ["roomcast", "roomcast.bearer.<jwt>"],
//   never in the URL. `getToken` (async, optional) is asked for a fresh token
//   before every reconnect and when the server warns that the token expires
//   (`system_warning` TOKEN_EXPIRING), which the client answers with a
//   `refresh` request.
// * After an unexpected close the client reconnects with capped, jittered
//   exponential backoff. It does not reconnect after close(), nor after close
//   4001 (token expired) unless getToken gives it a different token.
// * After a reconnect it joins every room again with `since` = the last
//   (epoch, seq) it saw there. The room's handler is then called with
//   {type: "roomcast:rejoined", room, recovered, data} before anything else
//   of that room: `recovered: true` means every missed broadcast follows, in
//   order; `recovered: false` means some may be lost and the application
//   should reload its state. The client also emits "rejoin" with the same object.
// * When the server warns that messages of a room were lost for good
//   (`system_warning` ROOM_GAP), the room's handler gets
//   {type: "roomcast:gap", room, recovered: false, data}, the client emits
//   "gap", and the room continues from the (epoch, seq) the warning names.
// * A join answered HOOK_UNAVAILABLE (the application's join hook could not
//   decide) is sent again with the same capped, jittered backoff, up to
//   joinRetriesMax times (6 by default); then the join rejects with that
//   error. Other join errors (FORBIDDEN, ...) reject at once.
// * While not connected, request() calls wait in a bounded outbox (outboxMax,
//   64 by default) and are sent after the rooms are joined again; beyond the
//   bound they are refused at once (RoomcastError code OUTBOX_FULL). Every
//   request settles: with its reply, with the server's `error` (code = the
//   error's code), or with a rejection: DISCONNECTED (it was sent, the
//   connection dropped before its reply; it may or may not have been
//   executed), CLOSED (the client was closed) or TIMEOUT (requestTimeoutMs).

const SUBPROTOCOL = "roomcast";
const BEARER_PREFIX = "roomcast.bearer.";
const TOKEN_EXPIRED = 4001;

/** Why a request or connection attempt failed. `code` is the server's error
 * code (e.g. "FORBIDDEN") or one of the client's own: "OUTBOX_FULL",
 * "DISCONNECTED", "CLOSED", "TIMEOUT". `reply` is the server's error frame. */
export class RoomcastError extends Error {
  constructor(code, message, reply) {
    super(message);
    this.name = "RoomcastError";
    this.code = code;
    this.reply = reply;
  }
}

/** A roomcast connection that reconnects, rejoins and recovers by itself. */
export class RoomcastClient {
  /**
   * @param {string} url ws:// or wss:// URL of /ws/connect
   * @param {object} [options]
   * @param {string} [options.token] a JWT for the first connection
   * @param {() => Promise<string|null>} [options.getToken] fresh tokens (reconnects, refresh)
   * @param {number} [options.minDelayMs=500] first reconnect delay
   * @param {number} [options.maxDelayMs=15000] longest reconnect delay
   * @param {number} [options.outboxMax=64] requests kept while disconnected
   * @param {number} [options.requestTimeoutMs=0] reject a request after this long (0 = never)
   * @param {number} [options.joinRetriesMax=6] retries of a join answered HOOK_UNAVAILABLE
   * @param {typeof WebSocket} [options.WebSocket] a WebSocket implementation (default: the global one)
   */
  constructor(url, options = {}) {
    this.url = url;
    this.token = options.token ?? null;
    this.getToken = options.getToken ?? null;
    this.minDelayMs = options.minDelayMs ?? 500;
    this.maxDelayMs = options.maxDelayMs ?? 15000;
    this.outboxMax = options.outboxMax ?? 64;
    this.requestTimeoutMs = options.requestTimeoutMs ?? 0;
    this.joinRetriesMax = options.joinRetriesMax ?? 6;
    this.WebSocket = options.WebSocket ?? globalThis.WebSocket;
    /** "idle" before connect(), then "connecting" | "open" | "reconnecting" | "closed". */
    this.state = "idle";
    /** The `connected` message of the current connection. */
    this.connected = null;
    /** How many times the client connected again after a drop. */
    this.reconnects = 0;
    this._listeners = new Map();
    this._rooms = new Map(); // room -> {handler, epoch, seq, waiters: [{resolve, reject}], hookRetries}
    this._pending = new Map(); // id -> {resolve, reject, timer}
    this._outbox = []; // [{message, resolve, reject, timer}]
    this._nextId = 1;
    this._ws = null;
    this._attempt = 0;
    this._retryTimer = null;
    this._connectWaiters = [];
    this._everConnected = false;
  }

  // ----- events ---------------------------------------------------------

  /** Listens to a message type ("download_progress", "error", ...), to
   * "message" (every server message), "state" or "rejoin". Returns a
   * function that removes the listener. */
  on(event, listener) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(listener);
    return () => this.off(event, listener);
  }

  off(event, listener) {
    this._listeners.get(event)?.delete(listener);
  }

  _emit(event, ...args) {
    for (const listener of [...(this._listeners.get(event) ?? [])]) {
      try {
        listener(...args);
      } catch (error) {
        setTimeout(() => {
          throw error;
        });
      }
    }
  }

  _setState(state, info = {}) {
    this.state = state;
    this._emit("state", state, info);
  }

  // ----- connecting -----------------------------------------------------

  /** Opens the connection. Resolves with the `connected` message (retrying
   * with backoff until one arrives); rejects only if the client is closed
   * first. Calling it again while connected resolves at once. */
  connect() {
    if (this.state === "open") return Promise.resolve(this.connected);
    const waiter = new Promise((resolve, reject) => this._connectWaiters.push({ resolve, reject }));
    if (this.state === "idle" || this.state === "closed") {
      this._attempt = 0;
      this._open("connecting");
    }
    return waiter;
  }

  async _open(state, tokenIsFresh = false) {
    if (this.state !== state) this._setState(state, { attempt: this._attempt });
    let token = this.token;
    if (this.getToken && !tokenIsFresh && (this._everConnected || !token)) {
      try {
        token = (await this.getToken()) ?? null;
      } catch (error) {
        this._emit("message", {
          type: "roomcast:token_error",
          data: { message: String(error?.message ?? error) },
        });
      }
      if (this.state === "closed") return;
      this.token = token;
    }
    const protocols = token ? [SUBPROTOCOL, BEARER_PREFIX + token] : [SUBPROTOCOL];
    let ws;
    try {
      ws = new this.WebSocket(this.url, protocols);
    } catch (error) {
      this._dropped(1006, String(error?.message ?? error), null);
      return;
    }
    this._ws = ws;
    ws.onmessage = (event) => this._receive(ws, event.data);
    ws.onclose = (event) => this._dropped(event.code, event.reason, ws);
  }

  _dropped(code, reason, ws) {
    if (ws && ws !== this._ws) return; // an old socket
    this._ws = null;
    this.connected = null;
    for (const [id, pending] of this._pending) {
      this._pending.delete(id);
      clearTimeout(pending.timer);
      if (pending.room) continue; // a join: settled by the rejoin
      pending.reject(
        new RoomcastError("DISCONNECTED", `connection lost (close ${code}) before the reply`),
      );
    }
    if (this.state === "closed") return;
    if (code === TOKEN_EXPIRED && !this.getToken) {
      this._shutdown(code, reason || "token expired");
      return;
    }
    const delayMs = this._backoff();
    this._attempt += 1;
    this._setState("reconnecting", { code, reason, attempt: this._attempt, delayMs });
    this._retryTimer = setTimeout(async () => {
      this._retryTimer = null;
      if (this.state === "closed") return;
      if (code === TOKEN_EXPIRED) {
        const old = this.token;
        let fresh = null;
        try {
          fresh = await this.getToken();
        } catch {
          fresh = null;
        }
        if (this.state === "closed") return;
        if (!fresh || fresh === old) {
          this._shutdown(code, "token expired and getToken gave no new token");
          return;
        }
        this.token = fresh;
        this._open("reconnecting", true);
        return;
      }
      this._open("reconnecting");
    }, delayMs);
  }

  _backoff(attempt = this._attempt) {
    const ceiling = Math.min(this.maxDelayMs, this.minDelayMs * 2 ** Math.min(attempt, 20));
    return Math.round(ceiling / 2 + Math.random() * (ceiling / 2));
  }

  // ----- receiving ------------------------------------------------------

  _receive(ws, text) {
    if (ws !== this._ws) return;
    let msg;
    try {
      msg = JSON.parse(text);
    } catch {
      return;
    }
    if (msg === null || typeof msg !== "object") return;
    if (msg.type === "connected") {
      this._onConnected(msg);
      return;
    }
    if (msg.id !== undefined && this._pending.has(msg.id)) {
      const pending = this._pending.get(msg.id);
      this._pending.delete(msg.id);
      clearTimeout(pending.timer);
      if (pending.room) this._onJoinReply(pending, msg);
      else if (msg.type === "error") pending.reject(serverError(msg));
      else pending.resolve(msg);
    }
    if (msg.type === "system_warning" && msg.data?.code === "ROOM_GAP") this._onGap(msg);
    if (typeof msg.room === "string" && typeof msg.seq === "number") {
      const room = this._rooms.get(msg.room);
      if (room) {
        if (room.seq !== null && msg.seq <= room.seq) return; // already seen
        room.seq = msg.seq;
        this._callRoom(room, msg);
      }
    }
    if (msg.type === "system_warning" && msg.data?.code === "TOKEN_EXPIRING") this._refresh();
    this._emit(msg.type, msg);
    this._emit("message", msg);
  }

  // The server lost messages of a room and cannot recover them: the room
  // continues after the (epoch, seq) it names. Its handler hears it as a
  // notice with `recovered: false`, like an unrecovered rejoin.
  _onGap(msg) {
    const data = msg.data;
    const room = this._rooms.get(data.room);
    if (!room) return;
    room.epoch = data.epoch ?? room.epoch;
    room.seq = typeof data.seq === "number" ? data.seq : room.seq;
    const notice = { type: "roomcast:gap", room: data.room, recovered: false, data };
    this._callRoom(room, notice);
    this._emit("gap", notice);
  }

  _onConnected(msg) {
    const reconnect = this._everConnected;
    this._everConnected = true;
    this._attempt = 0;
    this.connected = msg;
    if (reconnect) this.reconnects += 1;
    this._setState("open", { reconnect, connected: msg });
    this._emit("connected", msg);
    this._emit("message", msg);
    for (const waiter of this._connectWaiters.splice(0)) waiter.resolve(msg);
    // Rejoin every room first, then send what waited in the outbox.
    for (const [name, room] of this._rooms) this._sendJoin(name, room, true);
    for (const queued of this._outbox.splice(0)) this._transmit(queued);
  }

  _sendJoin(name, room, resume) {
    const data = { room: name };
    const resuming = resume && room.epoch !== null && room.seq !== null;
    if (resuming) data.since = { epoch: room.epoch, seq: room.seq };
    const id = this._id();
    this._pending.set(id, { room: name, resuming, timer: null });
    this._ws.send(JSON.stringify({ action: "join", data, id }));
  }

  _onJoinReply(pending, msg) {
    const room = this._rooms.get(pending.room);
    if (!room) return; // left meanwhile
    if (msg.type === "error" && msg.data?.code === "HOOK_UNAVAILABLE") {
      if ((room.hookRetries ?? 0) < this.joinRetriesMax) {
        this._retryJoin(pending, room);
        return;
      }
    }
    room.hookRetries = 0;
    const waiters = room.waiters.splice(0);
    if (msg.type === "error") {
      this._rooms.delete(pending.room);
      const error = serverError(msg);
      for (const w of waiters) w.reject(error);
      return;
    }
    const data = msg.data ?? {};
    const recovered = pending.resuming ? data.recovered === true : null;
    room.epoch = data.epoch ?? null;
    // A recovered join is followed by the replay from our seq on; otherwise
    // live delivery starts after the reply's seq.
    if (!recovered) room.seq = data.seq ?? null;
    if (pending.resuming) {
      const notice = { type: "roomcast:rejoined", room: pending.room, recovered, data };
      this._callRoom(room, notice);
      this._emit("rejoin", notice);
    }
    for (const w of waiters) w.resolve(msg);
  }

  // The application could not decide on the join now: ask again later, on
  // this connection (a reconnect rejoins every room by itself).
  _retryJoin(pending, room) {
    const delayMs = this._backoff(room.hookRetries ?? 0);
    room.hookRetries = (room.hookRetries ?? 0) + 1;
    const ws = this._ws;
    setTimeout(() => {
      if (this._ws !== ws || this.state !== "open") return;
      if (this._rooms.get(pending.room) !== room) return; // left meanwhile
      this._sendJoin(pending.room, room, pending.resuming);
    }, delayMs);
  }

  _callRoom(room, msg) {
    try {
      room.handler?.(msg);
    } catch (error) {
      setTimeout(() => {
        throw error;
      });
    }
  }

  async _refresh() {
    if (!this.getToken) return;
    let token;
    try {
      token = await this.getToken();
    } catch {
      return;
    }
    // The same token again cannot extend anything (and would be warned about again).
    if (!token || token === this.token || this.state !== "open") return;
    this.token = token;
    this.request({ action: "refresh", data: { token } }).then(
      (reply) => this._emit("refreshed", reply),
      (error) =>
        this._emit("message", {
          type: "roomcast:token_error",
          data: { message: error.message, code: error.code },
        }),
    );
  }

  // ----- requests -------------------------------------------------------

  _id() {
    return `rc-${this._nextId++}`;
  }

  /** Sends one request ({action, data}) and resolves with its reply; an
   * `id` is assigned (one you set is replaced). Rejects with a
   * RoomcastError: the server's error code, or OUTBOX_FULL, DISCONNECTED,
   * CLOSED, TIMEOUT. */
  request(message) {
    return new Promise((resolve, reject) => {
      if (this.state === "closed" || this.state === "idle") {
        reject(new RoomcastError("CLOSED", "the client is not connected: call connect() first"));
        return;
      }
      const queued = { message: { ...message, id: this._id() }, resolve, reject, timer: null };
      if (this.requestTimeoutMs > 0) {
        queued.timer = setTimeout(() => {
          const index = this._outbox.indexOf(queued);
          if (index >= 0) this._outbox.splice(index, 1);
          this._pending.delete(queued.message.id);
          reject(new RoomcastError("TIMEOUT", `no reply within ${this.requestTimeoutMs} ms`));
        }, this.requestTimeoutMs);
      }
      if (this.state === "open") {
        this._transmit(queued);
      } else if (this._outbox.length >= this.outboxMax) {
        clearTimeout(queued.timer);
        reject(
          new RoomcastError(
            "OUTBOX_FULL",
            `not connected and ${this.outboxMax} requests already wait`,
          ),
        );
      } else {
        this._outbox.push(queued);
      }
    });
  }

  _transmit(queued) {
    const { message, resolve, reject, timer } = queued;
    this._pending.set(message.id, { resolve, reject, timer });
    this._ws.send(JSON.stringify(message));
  }

  /** Joins `room`; `handler` gets its broadcasts (and "roomcast:rejoined"
   * notices after reconnects). Resolves with the join reply. While not
   * connected, the join waits for the connection. */
  join(room, handler) {
    return new Promise((resolve, reject) => {
      if (this.state === "closed" || this.state === "idle") {
        reject(new RoomcastError("CLOSED", "the client is not connected: call connect() first"));
        return;
      }
      let entry = this._rooms.get(room);
      if (entry) {
        entry.handler = handler ?? entry.handler;
      } else {
        entry = { handler, epoch: null, seq: null, waiters: [], hookRetries: 0 };
        this._rooms.set(room, entry);
      }
      entry.waiters.push({ resolve, reject });
      if (this.state === "open") this._sendJoin(room, entry, false);
    });
  }

  /** Leaves `room`: its handler gets nothing more. Resolves with the leave
   * reply, or with null when not connected (the server forgot the
   * membership with the connection). */
  leave(room) {
    const entry = this._rooms.get(room);
    this._rooms.delete(room);
    if (entry) {
      for (const w of entry.waiters.splice(0)) {
        w.reject(new RoomcastError("CLOSED", `left ${room} before the join completed`));
      }
    }
    if (this.state !== "open") return Promise.resolve(null);
    return this.request({ action: "leave", data: { room } });
  }

  /** The rooms this client is in (or joining), with the last epoch and seq seen. */
  rooms() {
    return [...this._rooms].map(([room, r]) => ({ room, epoch: r.epoch, seq: r.seq }));
  }

  /** Closes for good: no reconnect; every unsettled request and join is
   * rejected with CLOSED. */
  close(code = 1000, reason = "client closed") {
    this._shutdown(code, reason, true);
  }

  _shutdown(code, reason, byClient = false) {
    // (the socket, if any, is only still open when the application closes)
    if (this.state === "closed") return;
    clearTimeout(this._retryTimer);
    this._retryTimer = null;
    const ws = this._ws;
    this._ws = null;
    this.connected = null;
    this._setState("closed", { code, reason, byClient });
    if (ws) {
      try {
        ws.close(code, reason);
      } catch {
        ws.close();
      }
    }
    const closed = () => new RoomcastError("CLOSED", `the client is closed (${code} ${reason})`);
    for (const [id, pending] of this._pending) {
      this._pending.delete(id);
      clearTimeout(pending.timer);
      if (!pending.room) pending.reject(closed());
    }
    for (const queued of this._outbox.splice(0)) {
      clearTimeout(queued.timer);
      queued.reject(closed());
    }
    for (const room of this._rooms.values()) {
      for (const w of room.waiters.splice(0)) w.reject(closed());
    }
    for (const waiter of this._connectWaiters.splice(0)) waiter.reject(closed());
  }
}

function serverError(msg) {
  const code = msg.data?.code ?? "SERVER_ERROR";
  return new RoomcastError(code, msg.data?.message ?? code, msg);
}
