// docs/asyncapi.yaml is a valid AsyncAPI 3.0 document for @asyncapi/parser
// (the cross-check against the code is tests/tests/asyncapi.rs).

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { Parser } from "@asyncapi/parser";
import { ROOT } from "./lib.mjs";

test("docs/asyncapi.yaml parses and validates without errors or warnings", async () => {
  const text = readFileSync(path.join(ROOT, "docs", "asyncapi.yaml"), "utf8");
  const { document, diagnostics } = await new Parser().parse(text);
  // severity 0 = error, 1 = warning (2 = information, 3 = hint).
  const serious = diagnostics.filter((d) => d.severity <= 1).map((d) => `${d.code} at ${d.path.join(".")}: ${d.message}`);
  assert.deepEqual(serious, []);
  assert.ok(document, "the parser returned no document");
  assert.equal(document.version(), "3.0.0");
  const channel = document.channels().get("connection");
  assert.equal(channel.address(), "/ws/connect");
  assert.equal(channel.messages().length, 28);
  const sends = document.operations().filterBySend().map((o) => o.id());
  assert.deepEqual(sends.sort(), ["sendJoin", "sendLeave", "sendPing", "sendPresence", "sendPublish", "sendRefresh"]);
});
