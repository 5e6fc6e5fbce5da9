// End-to-end: order a certificate from pebble through the console with an ACME issuer in
// notify mode. The test plays the user: when the certificate page shows the TXT record, it adds
// it to pebble-challtestsrv's DNS (pebble's VA resolves through it) via the management API,
// clicks "I have added the records", and watches the page reach Valid.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import fs from "node:fs";
import http from "node:http";
import https from "node:https";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import {
  closeBrowser, freePort, launchBrowser, newContext, request, serverLog, shot, startServer, stopServer,
} from "./support.mjs";

let srv;
let browser;
let peers;

function waitTcp(port, proc, what) {
  const deadline = Date.now() + 20_000;
  return new Promise((resolve, reject) => {
    const attempt = () => {
      if (proc.exitCode !== null) return reject(new Error(`${what} exited (${proc.exitCode})`));
      const s = net.connect(port, "127.0.0.1");
      s.once("connect", () => { s.destroy(); resolve(); });
      s.once("error", () => {
        s.destroy();
        if (Date.now() > deadline) reject(new Error(`${what} did not listen on ${port}`));
        else setTimeout(attempt, 100);
      });
    };
    attempt();
  });
}

async function startPeers() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "certvault-ui-pebble-"));
  const o = (args) => execFileSync("openssl", args, { cwd: dir, stdio: ["ignore", "pipe", "pipe"] });
  // a throwaway TLS CA and a leaf for 127.0.0.1 for pebble's ACME endpoint
  o(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "ca.key",
    "-out", "ca.pem", "-days", "2", "-subj", "/CN=certvault ui test pebble TLS CA",
    "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign"]);
  o(["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "key.pem",
    "-out", "leaf.csr", "-subj", "/CN=localhost"]);
  fs.writeFileSync(path.join(dir, "ext.cnf"), "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n");
  o(["x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "cert.pem",
    "-days", "2", "-extfile", "ext.cnf"]);
  const [dns, mgmt, acme, acmeMgmt, httpPort, tlsPort] = await Promise.all([1, 2, 3, 4, 5, 6].map(() => freePort()));
  const log = fs.openSync(path.join(dir, "peers.log"), "a");
  const challtest = spawn("pebble-challtestsrv", [
    "-dns01", `127.0.0.1:${dns}`, "-management", `127.0.0.1:${mgmt}`,
    "-http01", "", "-https01", "", "-tlsalpn01", "",
  ], { stdio: ["ignore", log, log] });
  fs.writeFileSync(path.join(dir, "pebble.json"), JSON.stringify({ pebble: {
    listenAddress: `127.0.0.1:${acme}`,
    managementListenAddress: `127.0.0.1:${acmeMgmt}`,
    certificate: path.join(dir, "cert.pem"),
    privateKey: path.join(dir, "key.pem"),
    httpPort, tlsPort, ocspResponderURL: "", externalAccountBindingRequired: false,
  } }));
  const pebble = spawn("pebble", ["-config", path.join(dir, "pebble.json"), "-dnsserver", `127.0.0.1:${dns}`], {
    stdio: ["ignore", log, log],
    env: { ...process.env, PEBBLE_VA_NOSLEEP: "1", PEBBLE_WFE_NONCEREJECT: "0", PEBBLE_AUTHZREUSE: "0" },
  });
  const p = { dir, challtest, pebble, mgmt, directory: `https://127.0.0.1:${acme}/dir`, caPem: fs.readFileSync(path.join(dir, "ca.pem"), "utf8") };
  await waitTcp(mgmt, challtest, "pebble-challtestsrv");
  await waitTcp(acme, pebble, "pebble");
  // the directory answers over TLS with our CA
  const deadline = Date.now() + 20_000;
  for (;;) {
    const ok = await new Promise((resolve) => {
      https.get(p.directory, { ca: p.caPem }, (res) => { res.resume(); resolve(res.statusCode === 200); })
        .on("error", () => resolve(false));
    });
    if (ok) break;
    if (Date.now() > deadline) throw new Error("pebble's directory did not answer");
    await new Promise((r) => setTimeout(r, 100));
  }
  return p;
}

function setTxt(p, host, value) {
  return new Promise((resolve, reject) => {
    const body = JSON.stringify({ host: host.endsWith(".") ? host : `${host}.`, value });
    const req = http.request({ host: "127.0.0.1", port: p.mgmt, method: "POST", path: "/set-txt",
      headers: { "content-type": "application/json", "content-length": Buffer.byteLength(body) } }, (res) => {
      res.resume();
      res.on("end", () => (res.statusCode === 200 ? resolve() : reject(new Error(`set-txt ${res.statusCode}`))));
    });
    req.on("error", reject);
    req.end(body);
  });
}

// What the certificate page offers, read from one DOM snapshot (the page may reload itself
// while an order is pending).
function actionsSnapshot(page) {
  return page.evaluate(() => ({
    renew: [...document.querySelectorAll("button")].some((b) => b.textContent.trim() === "Renew now"),
    blocked: document.querySelector('[data-testid="renew-blocked"]') !== null,
    enabledBox: document.getElementById("enabled") !== null,
    enabledPending: document.querySelector('[data-testid="enabled-pending"]') !== null,
    toggle: document.querySelector('form[action$="/enable"]') !== null,
  }));
}

function stopPeers(p) {
  if (!p) return;
  for (const proc of [p.pebble, p.challtest]) if (proc.exitCode === null) proc.kill("SIGTERM");
  if (!process.env.KEEP_UI_DATA) fs.rmSync(p.dir, { recursive: true, force: true });
}

before(async () => {
  peers = await startPeers();
  srv = await startServer();
  browser = await launchBrowser();
});

after(async () => {
  await closeBrowser(browser);
  await stopServer(srv);
  stopPeers(peers);
});

test("order from pebble with the notify flow: records shown, user adds them, acknowledges, Valid", async () => {
  const put = await request(srv, "PUT", "/certificates/issuers/pebble-notify?api-version=7.4", {
    token: srv.token,
    json: { provider: "acme", acme: { directory: peers.directory, terms_agreed: true, ca_pem: peers.caPem, dns: { mode: "notify" } } },
  });
  assert.equal(put.status, 200, put.body.toString());
  const ctx = await newContext(browser);
  const page = await ctx.newPage();
  await page.goto(`${srv.url}/ui/login`);
  await page.getByLabel("Access token").fill(srv.token);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.waitForURL(/\/ui\/v\/default\/certificates/);
  await page.goto(`${srv.url}/ui/v/default/certificates/new`);
  await page.getByLabel("Name").fill("acme-ui");
  await page.getByLabel("Issuer").selectOption("pebble-notify");
  await page.getByLabel("Primary domain").fill("shop.example.test");
  await page.getByLabel("Alternative domains").fill("*.shop.example.test");
  await page.getByLabel("Key algorithm").selectOption("EC-P-256");
  await page.getByRole("button", { name: "Create" }).click();
  await page.waitForURL(/\/certificates\/acme-ui/);
  // the page polls and reloads when the order moves on; the records appear
  await page.getByTestId("txt-value").first().waitFor({ timeout: 90_000 });
  await shot(page, "20-acme-pending-records");
  const names = await page.getByTestId("txt-name").allTextContents();
  const values = await page.getByTestId("txt-value").allTextContents();
  assert.equal(values.length, 2, "apex and wildcard: two values");
  assert.match(await page.getByTestId("time-left").textContent(), /\d+ min \d+ s left/);
  assert.deepEqual([...new Set(names)], ["_acme-challenge.shop.example.test"]);
  // While the order is pending the page offers no "Renew now" (the API refuses it with 409)
  // and shows the pending version's Enabled attribute as pending, without a checkbox.
  const whilePending = await actionsSnapshot(page);
  assert.deepEqual(whilePending, { renew: false, blocked: true, enabledBox: false, enabledPending: true, toggle: false },
    JSON.stringify(whilePending));
  const refused = await request(srv, "POST", "/certificates/acme-ui/renew?api-version=7.4", { token: srv.token, json: {} });
  assert.equal(refused.status, 409, refused.body.toString());
  for (let i = 0; i < values.length; i++) await setTxt(peers, names[i], values[i]);
  await page.getByRole("button", { name: "I have added the records" }).click();
  await page.waitForURL(/done=acknowledged/);
  await page.waitForFunction(
    () => document.querySelector('[data-testid="state"]')?.textContent === "Valid",
    null, { timeout: 120_000, polling: 1000 },
  );
  await shot(page, "21-acme-valid");
  await page.reload();
  const whenValid = await actionsSnapshot(page);
  assert.deepEqual(whenValid, { renew: true, blocked: false, enabledBox: true, enabledPending: false, toggle: true },
    JSON.stringify(whenValid));
  assert.equal(await page.locator("#enabled").isChecked(), true);
  const r = await request(srv, "GET", "/certificates/acme-ui?api-version=7.4", { token: srv.token });
  const cert = JSON.parse(r.body);
  assert.ok(cert.cer, "issued");
  const pem = `-----BEGIN CERTIFICATE-----\n${cert.cer.match(/.{1,64}/g).join("\n")}\n-----END CERTIFICATE-----\n`;
  const text = execFileSync("openssl", ["x509", "-noout", "-issuer", "-ext", "subjectAltName"], { input: pem }).toString();
  assert.match(text, /Pebble/i, text);
  assert.match(text, /\*\.shop\.example\.test/);
  // A renewal order in progress: still no "Renew now"; the current version keeps its Enabled
  // checkbox and its Disable action, the pending version gets neither.
  await page.getByRole("button", { name: "Renew now" }).click();
  await page.waitForURL(/done=renewed/);
  await page.getByTestId("renew-blocked").waitFor({ timeout: 30_000 });
  const renewing = await actionsSnapshot(page);
  assert.deepEqual(renewing, { renew: false, blocked: true, enabledBox: true, enabledPending: false, toggle: true },
    JSON.stringify(renewing));
  const pendingBlock = await page.evaluate(() => [...document.querySelectorAll("details.version")]
    .filter((d) => d.querySelector(".state")?.textContent === "Pending")
    .map((d) => d.querySelectorAll('form[action$="/enable"]').length));
  assert.deepEqual(pendingBlock, [0], "one pending version, without an enable/disable action");
  await ctx.close();
});

test("an order whose notify window passes shows on the dashboard as a recent failure", async () => {
  const put = await request(srv, "PUT", "/certificates/issuers/pebble-short?api-version=7.4", {
    token: srv.token,
    json: { provider: "acme", acme: { directory: peers.directory, terms_agreed: true, ca_pem: peers.caPem, dns: { mode: "notify", window_seconds: 10 } } },
  });
  assert.equal(put.status, 200, put.body.toString());
  const policy = {
    key_props: { kty: "EC", crv: "P-256", exportable: true, reuse_key: false },
    x509_props: { subject: "CN=late.example.test", sans: { dns_names: ["late.example.test"] } },
    issuer: { name: "pebble-short" },
  };
  const c = await request(srv, "POST", "/certificates/late-ui/create?api-version=7.4", { token: srv.token, json: { policy } });
  assert.equal(c.status, 202, c.body.toString());
  let op;
  for (let i = 0; i < 240; i++) {
    const r = await request(srv, "GET", "/certificates/late-ui/pending?api-version=7.4", { token: srv.token });
    op = JSON.parse(r.body);
    if (op.status && op.status !== "inProgress") break;
    await new Promise((res) => setTimeout(res, 500));
  }
  assert.equal(op.status, "failed", JSON.stringify(op));
  const ctx = await newContext(browser);
  const page = await ctx.newPage();
  await page.goto(`${srv.url}/ui/login`);
  await page.getByLabel("Access token").fill(srv.token);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.waitForURL(/\/ui\/v\/default\//);
  await page.goto(`${srv.url}/ui/v/default/dashboard`);
  const row = page.locator("table[data-testid=failures] tbody tr").filter({ hasText: "late-ui" });
  assert.equal(await row.count(), 1, "the failed order is listed");
  assert.match(await row.textContent(), /Order failed/);
  assert.match(await row.textContent(), /not visible/, "with the CA's / validator's reason");
  await shot(page, "22-dashboard-failure");
  await ctx.close();
});

process.on("exit", (code) => {
  if (code !== 0 && srv) console.error(`--- server log ---\n${serverLog(srv)}`);
  if (code !== 0 && peers) {
    try { console.error(fs.readFileSync(path.join(peers.dir, "peers.log"), "utf8").slice(-4000)); } catch {}
  }
});
