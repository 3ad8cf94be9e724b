// Helpers of the browser tests: the real roomcast binary as a child process,
// tokens, the publish API, a TCP proxy that can cut connections, Chromium.

import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { mkdirSync, readFileSync } from "node:fs";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
/** Where test artifacts (screenshots) go. */
export const ARTIFACTS = path.join(ROOT, "target", "browser-tests");
export const SECRET = "roomcast-browser-test-secret-0123456789";
const BINARY = process.env.ROOMCAST_BIN ?? path.join(ROOT, "target", "debug", "roomcast");
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls `check` until it returns a truthy value (or throws after `ms`). */
export async function until(what, check, ms = 15000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

/** A free loopback port. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** An HS256 token signed with `secret`. */
export function token(sub, scope = "", secret = SECRET, ttlS = 3600) {
  const b64 = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const now = Math.floor(Date.now() / 1000);
  const claims = { sub, exp: now + ttlS, iat: now };
  if (scope) claims.scope = scope;
  const unsigned = `${b64({ alg: "HS256", typ: "JWT" })}.${b64(claims)}`;
  return `${unsigned}.${createHmac("sha256", secret).update(unsigned).digest("base64url")}`;
}

/**
 * The roomcast binary on 127.0.0.1:`port` (a fresh port by default).
 * `secret`: the HS256 secret (null: none, as on a first run).
 * Resolves once /healthz answers; `stdout` collects what it printed.
 */
export async function startServer({ port, secret = SECRET, config, env: extra = {} } = {}) {
  port ??= await freePort();
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("ROOMCAST_")));
  if (secret) env.ROOMCAST_JWT_SECRET = secret;
  env.ROOMCAST_LOG = "warn";
  Object.assign(env, extra);
  const args = ["serve", "--listen", `127.0.0.1:${port}`];
  if (config) args.push("--config", config);
  const child = spawn(BINARY, args, {
    env,
    stdio: ["ignore", "pipe", "pipe"],
  });
  const server = { child, port, base: `http://127.0.0.1:${port}`, stdout: "", stderr: "", exited: null };
  child.stdout.on("data", (d) => (server.stdout += d));
  child.stderr.on("data", (d) => (server.stderr += d));
  server.exit = new Promise((resolve) => child.on("exit", (code, signal) => resolve((server.exited = { code, signal }))));
  server.ws = `ws://127.0.0.1:${port}/ws/connect`;
  await until(`roomcast on port ${port}`, async () => {
    if (server.exited) throw new Error(`roomcast exited early: ${JSON.stringify(server.exited)}\n${server.stderr}`);
    try {
      return (await fetch(`${server.base}/healthz`)).ok;
    } catch {
      return false;
    }
  }, 30000);
  server.stop = async () => {
    if (!server.exited) child.kill("SIGTERM");
    return server.exit;
  };
  return server;
}

/** POST /api/broadcast; returns the parsed JSON answer (throws unless 200). */
export async function broadcast(server, bearer, body) {
  const response = await fetch(`${server.base}/api/broadcast`, {
    method: "POST",
    headers: { Authorization: `Bearer ${bearer}`, "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  const json = await response.json();
  if (response.status !== 200) throw new Error(`broadcast: ${response.status} ${JSON.stringify(json)}`);
  return json;
}

/** One sample of /metrics. */
export async function metric(server, name) {
  const text = await (await fetch(`${server.base}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(`${name} `));
  return line ? Number(line.split(" ")[1]) : null;
}

/**
 * A TCP proxy in front of `target` (a port on 127.0.0.1). `cut()` destroys
 * every proxied connection at once (a network drop, which the server
 * survives); while `refusing`, new connections are closed at once; while
 * `holding`, bytes from the server are dropped instead of forwarded.
 */
export async function startProxy(target) {
  const pairs = new Set();
  const proxy = { refusing: false, holding: false, port: 0 };
  const server = net.createServer((client) => {
    if (proxy.refusing) {
      client.destroy();
      return;
    }
    const upstream = net.connect(target, "127.0.0.1");
    const pair = { client, upstream };
    pairs.add(pair);
    client.on("data", (d) => upstream.write(d));
    upstream.on("data", (d) => {
      if (!proxy.holding) client.write(d);
    });
    const end = () => {
      pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on("close", end);
    upstream.on("close", end);
    client.on("error", end);
    upstream.on("error", end);
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  proxy.port = server.address().port;
  proxy.ws = `ws://127.0.0.1:${proxy.port}/ws/connect`;
  proxy.cut = () => {
    for (const { client, upstream } of pairs) {
      client.destroy();
      upstream.destroy();
    }
    pairs.clear();
  };
  proxy.connections = () => pairs.size;
  proxy.close = () => {
    proxy.cut();
    return new Promise((resolve) => server.close(resolve));
  };
  return proxy;
}

/** Debian's Chromium, headless. playwright-core gives every launch a fresh,
 * empty profile (--user-data-dir in a new temporary directory) by itself. */
export async function launchBrowser() {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
}

/**
 * A page of the browser whose console errors and uncaught exceptions are
 * collected in `page.problems`.
 */
export async function newPage(browser, viewport = { width: 1360, height: 860 }) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  page.problems = [];
  page.logs = [];
  page.on("console", (m) => {
    page.logs.push(m.text());
    if (m.type() === "error") page.problems.push(`console error: ${m.text()}`);
  });
  page.on("pageerror", (e) => page.problems.push(`uncaught: ${e.message}`));
  return page;
}

/**
 * Opens a page of the server's own origin (its /healthz answer), so the page
 * may import /client/roomcast.js and, being served from loopback, open
 * WebSockets to loopback (Chromium's local network access checks block that
 * for pages that do not come from a local address). `script`, if given, then
 * runs as a module script of that page.
 */
export async function openScriptPage(page, origin, script = "") {
  // A JSON answer has no <link rel="icon">: keep the browser's own request
  // for /favicon.ico (a 404 here) out of the console.
  await page.route("**/favicon.ico", (route) => route.fulfill({ status: 204 }));
  await page.goto(`${origin}/healthz`);
  if (script) {
    await page.evaluate((text) => {
      const element = document.createElement("script");
      element.type = "module";
      element.textContent = text;
      document.head.append(element);
    }, script);
  }
}

/** The problems of `page` other than Chromium's own report of WebSocket
 * connections that failed (expected while a test keeps the server away). */
export function unexpectedProblems(page) {
  return page.problems.filter((p) => !/WebSocket connection to .* failed/.test(p));
}

/** The fenced code blocks of README.md in `lang`, in order. */
export function readmeBlocks(lang) {
  const text = readFileSync(path.join(ROOT, "README.md"), "utf8");
  const blocks = [];
  const fence = new RegExp("^```" + lang + "\\n([\\s\\S]*?)^```$", "gm");
  for (const match of text.matchAll(fence)) blocks.push(match[1]);
  return blocks;
}

export function artifactPath(name) {
  mkdirSync(ARTIFACTS, { recursive: true });
  return path.join(ARTIFACTS, name);
}
