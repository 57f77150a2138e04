// The npm `libretranslate` package against `precis serve`, then the requests
// of LibreTranslate's API documentation (docs.libretranslate.com, "API
// Usage"), verbatim but for the server's address. Run by
// tests/libretranslate_clients.rs as
//
//   node libretranslate_npm_check.cjs KEYED_BASE API_KEY OPEN_BASE
//
// with NODE_PATH naming the node_modules that holds the package. Exits
// non-zero, saying why, when an answer is not what is expected.
"use strict";
const assert = require("node:assert/strict");
const { translate } = require("libretranslate");

const [keyed, key, open] = process.argv.slice(2);
const cyrillic = (t) => typeof t === "string" && /[\u0400-\u04ff]/.test(t);

// The package does not look at statuses: record them.
const statuses = [];
const realFetch = globalThis.fetch;
globalThis.fetch = async (...args) => {
  const r = await realFetch(...args);
  statuses.push(r.status);
  return r;
};

async function client() {
  const one = await translate({ query: "The talks ended without a joint statement.", source: "en", target: "ru", apiurl: keyed, apiKey: key });
  assert.ok(cyrillic(one) && !one.includes("talks"), one);
  const auto = await translate({ query: "The ministers met on Thursday.", target: "hi", apiurl: keyed, apiKey: key });
  assert.ok(/[\u0900-\u097f]/.test(auto), auto);
  const many = await translate({ query: ["The talks ended.", "They will meet again."], source: "en", target: "ru", apiurl: keyed, apiKey: key });
  assert.ok(Array.isArray(many) && many.length === 2 && many.every(cyrillic), JSON.stringify(many));
  statuses.length = 0;
  const refused = await translate({ query: "Hello.", source: "en", target: "ru", apiurl: keyed, apiKey: "not-a-key" });
  assert.equal(refused, undefined);
  assert.deepEqual(statuses, [200, 403]);
}

// The documentation's examples, as written there (its host replaced), with
// the `fetch` they call given.
async function documented(base, fetch) {
  const shapes = [];
  {
    const res = await fetch(base + "/translate", {
      method: "POST",
      body: JSON.stringify({
        q: "Hello!",
        source: "en",
        target: "es",
        api_key: "xxxxxx", // can be optional with self-hosting
      }),
      headers: { "Content-Type": "application/json" },
    });
    shapes.push([res.status, await res.json()]);
  }
  {
    const res = await fetch(base + "/translate", {
      method: "POST",
      body: JSON.stringify({
        q: "Bonjour!",
        source: "auto",
        target: "en",
        api_key: "xxxxxx",
      }),
      headers: { "Content-Type": "application/json" },
    });
    shapes.push([res.status, await res.json()]);
  }
  {
    const res = await fetch(base + "/translate", {
      method: "POST",
      body: JSON.stringify({
        q: '<p class="green">Hello!</p>',
        source: "en",
        target: "es",
        format: "html",
        api_key: "xxxxxx",
      }),
      headers: { "Content-Type": "application/json" },
    });
    shapes.push([res.status, await res.json()]);
  }
  {
    const res = await fetch(base + "/translate", {
      method: "POST",
      body: JSON.stringify({
        q: "Hello",
        source: "en",
        target: "it",
        format: "text",
        alternatives: 3,
        api_key: "xxxxxx",
      }),
      headers: { "Content-Type": "application/json" },
    });
    shapes.push([res.status, await res.json()]);
  }
  return shapes;
}

async function main() {
  await client();
  // This server's models write English, Russian and Hindi: Spanish and
  // Italian are refused as LibreTranslate refuses a language it lacks.
  const [hello, bonjour, html, alternatives] = await documented(open, fetch);
  assert.deepEqual(hello, [400, { error: "es is not supported" }]);
  assert.equal(bonjour[0], 200);
  assert.deepEqual(Object.keys(bonjour[1]).sort(), ["detectedLanguage", "translatedText"]);
  assert.equal(typeof bonjour[1].detectedLanguage.confidence, "number");
  assert.deepEqual(html, [400, { error: "es is not supported" }]);
  assert.deepEqual(alternatives, [400, { error: "it is not supported" }]);
  console.log("documented examples as written:", JSON.stringify([hello, bonjour, html, alternatives]));
  // The same requests into a language the server writes.
  const intoRussian = (url, init) => {
    const body = JSON.parse(init.body);
    body.target = "ru";
    return fetch(url, { ...init, body: JSON.stringify(body) });
  };
  const [hello2, bonjour2, html2, alternatives2] = await documented(open, intoRussian);
  assert.equal(hello2[0], 200);
  assert.ok(cyrillic(hello2[1].translatedText), JSON.stringify(hello2));
  assert.equal(bonjour2[0], 200);
  assert.ok(bonjour2[1].detectedLanguage.language.length === 2, JSON.stringify(bonjour2));
  assert.equal(html2[0], 200);
  assert.match(html2[1].translatedText, /^<p class="green">[^<]*[\u0400-\u04ff][^<]*<\/p>$/);
  assert.equal(alternatives2[0], 200);
  assert.ok(cyrillic(alternatives2[1].translatedText) && Array.isArray(alternatives2[1].alternatives), JSON.stringify(alternatives2));
  console.log("documented examples into Russian:", JSON.stringify([hello2, bonjour2, html2, alternatives2]));
  console.log("libretranslate (npm): translate (string, auto, list), a wrong key (403), the documented examples: ok");
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
