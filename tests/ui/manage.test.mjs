// End-to-end tests of the console's manage pages (import, issuers, contacts, notification
// channels): the real certvault binary, Debian's chromium, a real webhook receiver.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import crypto from "node:crypto";
import fs from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import {
  SHOTS, admin, closeBrowser, freePort, launchBrowser, newContext, openssl, request, serverLog, shot, startServer, stopServer,
} from "./support.mjs";

let srv;
let browser;
let ctx;
let page;
let tmp;
let hook; // the webhook receiver
const received = [];
let deadPort;

before(async () => {
  // One attempt per delivery: a failing channel is dead at once (the knob the server has for it).
  process.env.CERTVAULT_DELIVERY_MAX_ATTEMPTS = "1";
  srv = await startServer();
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), "certvault-ui-manage-"));
  hook = http.createServer((req, res) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      received.push({ path: req.url, headers: req.headers, body: Buffer.concat(chunks).toString() });
      res.writeHead(200, { "content-type": "text/plain" });
      res.end("ok");
    });
  });
  await new Promise((r) => hook.listen(0, "127.0.0.1", r));
  deadPort = await freePort(); // nothing listens there
  browser = await launchBrowser();
  ctx = await newContext(browser);
  page = await ctx.newPage();
  page.on("dialog", (d) => d.accept());
  console.log(`screenshots: ${SHOTS}`);
  await signIn(page, srv.token);
});

after(async () => {
  await closeBrowser(browser);
  await stopServer(srv);
  if (hook) await new Promise((r) => hook.close(r));
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

async function signIn(p, token) {
  await p.goto(`${srv.url}/ui/login`);
  await p.getByLabel("Access token").fill(token);
  await p.getByRole("button", { name: "Sign in" }).click();
  await p.waitForURL(/\/ui\/v\/default\/certificates/);
}

async function csrfOf(p) {
  return p.locator('form.signout input[name="csrf"]').inputValue();
}

async function kv(method, p, json) {
  const sep = p.includes("?") ? "&" : "?";
  return request(srv, method, `${p}${sep}api-version=7.4`, { token: srv.token, json });
}

function makeCert(cn) {
  const key = path.join(tmp, `${cn}.key`);
  const crt = path.join(tmp, `${cn}.crt`);
  openssl(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", crt,
    "-subj", `/CN=${cn}`, "-days", "365", "-addext", `subjectAltName=DNS:${cn}`]);
  return { key, crt };
}

async function until(what, fn, ms = 30_000) {
  const end = Date.now() + ms;
  let last;
  while (Date.now() < end) {
    last = await fn();
    if (last) return last;
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(`timed out waiting for ${what}`);
}

test("the header shows the manage pages to an administrator", async () => {
  await page.goto(`${srv.url}/ui/v/default/certificates`);
  const nav = page.getByRole("navigation", { name: "Main" });
  for (const name of ["Import", "Issuers", "Contacts", "Notifications"]) {
    assert.equal(await nav.getByRole("link", { name, exact: true }).count(), 1, `${name} link`);
  }
});

test("import a PEM file with tags and see it in the list", async () => {
  const { key, crt } = makeCert("pem.example.com");
  const pem = path.join(tmp, "bundle.pem");
  fs.writeFileSync(pem, fs.readFileSync(crt, "utf8") + fs.readFileSync(key, "utf8"));
  await page.goto(`${srv.url}/ui/v/default/import`);
  await shot(page, "manage-01-import");
  await page.getByLabel("Name", { exact: true }).fill("pem-import");
  await page.getByLabel("Certificate file (PEM or PFX)").setInputFiles(pem);
  await page.getByLabel("Tags (optional)").fill("env=test\nowner=ops");
  await page.getByRole("button", { name: "Import" }).click();
  await page.waitForURL(/\/ui\/v\/default\/certificates\/pem-import\?done=/);
  assert.equal(await page.getByTestId("state").textContent(), "Valid");
  const r = await kv("GET", "/certificates/pem-import");
  assert.equal(r.status, 200);
  const body = JSON.parse(r.body);
  assert.deepEqual(body.tags, { env: "test", owner: "ops" });
  assert.equal(body.policy.x509_props.subject, "CN=pem.example.com");
  await page.goto(`${srv.url}/ui/v/default/certificates`);
  await page.getByRole("link", { name: "pem-import" }).waitFor();
});

test("a PFX with the wrong password shows the error and stores nothing; the right one imports", async () => {
  const { key, crt } = makeCert("pfx.example.com");
  const pfx = path.join(tmp, "c.pfx");
  openssl(["pkcs12", "-export", "-in", crt, "-inkey", key, "-passout", "pass:Right-Pass-1", "-out", pfx]);
  await page.goto(`${srv.url}/ui/v/default/import`);
  await page.getByLabel("Name", { exact: true }).fill("pfx-import");
  await page.getByLabel("Certificate file (PEM or PFX)").setInputFiles(pfx);
  await page.getByLabel("PFX password").fill("wrong-password");
  await page.getByRole("button", { name: "Import" }).click();
  await page.locator("#password-err").waitFor();
  assert.match(await page.locator("#password-err").textContent(), /password is wrong/);
  assert.match(await page.getByRole("alert").first().textContent(), /Nothing was imported/);
  assert.equal(await page.getByLabel("PFX password").inputValue(), "", "the password is not echoed");
  assert.ok(!(await page.content()).includes("wrong-password"));
  await shot(page, "manage-02-import-wrong-password");
  const none = await kv("GET", "/certificates/pfx-import");
  assert.equal(none.status, 404, "nothing stored");
  // a file that is neither PEM nor PFX
  const junk = path.join(tmp, "junk.bin");
  fs.writeFileSync(junk, crypto.randomBytes(300));
  await page.getByLabel("Certificate file (PEM or PFX)").setInputFiles(junk);
  await page.getByRole("button", { name: "Import" }).click();
  await page.getByRole("alert").first().waitFor();
  assert.match(await page.getByRole("alert").first().textContent(), /Nothing was imported/);
  assert.equal((await kv("GET", "/certificates/pfx-import")).status, 404, "still nothing stored");
  // the right password
  await page.getByLabel("Certificate file (PEM or PFX)").setInputFiles(pfx);
  await page.getByLabel("PFX password").fill("Right-Pass-1");
  await page.getByRole("button", { name: "Import" }).click();
  await page.waitForURL(/\/ui\/v\/default\/certificates\/pfx-import\?done=/);
  assert.match(await page.getByTestId("keytype").first().textContent(), /P-256/);
  await page.goto(`${srv.url}/ui/v/default/certificates`);
  await page.getByRole("link", { name: "pfx-import" }).waitFor();
  await page.getByRole("link", { name: "pem-import" }).waitFor();
  await shot(page, "manage-03-list-after-import");
});

test("create an ACME issuer with EAB: the HMAC key never comes back into the page", async () => {
  const hmac = crypto.randomBytes(32).toString("base64url");
  await page.goto(`${srv.url}/ui/v/default/issuers`);
  await shot(page, "manage-04-issuers-empty");
  await page.getByLabel("Name", { exact: true }).fill("acme-eab");
  await page.getByLabel("Type").selectOption("acme");
  await page.getByLabel("Directory URL or preset").fill("https://acme.example.test/directory");
  await page.getByLabel("Account contact e-mail").fill("pki@example.com");
  await page.getByLabel("I agree to the CA's terms of service").check();
  await page.getByLabel("EAB key id").fill("kid-123");
  await page.getByLabel("EAB HMAC key").fill(hmac);
  await page.getByLabel("DNS-01 records").selectOption("notify");
  await page.getByLabel("Notify: validation window (seconds)").fill("900");
  await page.getByRole("button", { name: "Add issuer" }).click();
  await page.waitForURL(/\/ui\/v\/default\/issuers\/acme-eab\?done=issuer-saved/);
  const html = await page.content();
  assert.ok(!html.includes(hmac), "the HMAC key is not in the page");
  assert.equal(await page.getByLabel("EAB HMAC key").inputValue(), "");
  assert.match(html, /A value is stored \(not shown\)/);
  assert.equal(await page.getByLabel("EAB key id").inputValue(), "kid-123");
  assert.equal(await page.getByLabel("Notify: validation window (seconds)").inputValue(), "900");
  await shot(page, "manage-05-issuer-edit");
  const r = await kv("GET", "/certificates/issuers/acme-eab");
  assert.equal(r.status, 200);
  const j = JSON.parse(r.body);
  assert.equal(j.provider, "acme");
  assert.equal(j.acme.eab_kid, "kid-123");
  assert.equal(j.acme.eab_hmac_key_set, true);
  assert.ok(!r.body.toString().includes(hmac));
  // editing without retyping the key keeps it
  await page.getByLabel("Account contact e-mail").fill("pki2@example.com");
  await page.getByRole("button", { name: "Save issuer" }).click();
  await page.waitForURL(/done=issuer-saved/);
  const r2 = JSON.parse((await kv("GET", "/certificates/issuers/acme-eab")).body);
  assert.equal(r2.acme.email, "pki2@example.com");
  assert.equal(r2.acme.eab_hmac_key_set, true, "the stored HMAC key stays");
  // a bad EAB key is refused with the API's message and nothing changes
  await page.getByLabel("EAB HMAC key").fill("not base64url!!");
  await page.getByRole("button", { name: "Save issuer" }).click();
  await page.getByRole("alert").first().waitFor();
  assert.match(await page.getByRole("alert").first().textContent(), /Nothing was saved/);
  const r3 = JSON.parse((await kv("GET", "/certificates/issuers/acme-eab")).body);
  assert.equal(r3.acme.email, "pki2@example.com");
  // the list shows it; the create form offers it
  await page.goto(`${srv.url}/ui/v/default/issuers`);
  await page.getByRole("link", { name: "acme-eab" }).waitFor();
  assert.ok(!(await page.content()).includes(hmac));
  await shot(page, "manage-06-issuers");
  await page.goto(`${srv.url}/ui/v/default/certificates/new`);
  const issuers = await page.getByLabel("Issuer").locator("option").allTextContents();
  assert.ok(issuers.includes("acme-eab"), JSON.stringify(issuers));
});

test("add, then delete an issuer of another provider", async () => {
  await page.goto(`${srv.url}/ui/v/default/issuers`);
  await page.getByLabel("Name", { exact: true }).fill("other-ca");
  await page.getByLabel("Type").selectOption("other");
  await page.getByLabel("Provider name").fill("DigiCert");
  await page.getByLabel("Account id").fill("acct-1");
  await page.getByLabel("Account password / API key").fill("api-key-secret-123");
  await page.getByRole("button", { name: "Add issuer" }).click();
  await page.waitForURL(/\/issuers\/other-ca\?done=issuer-saved/);
  assert.ok(!(await page.content()).includes("api-key-secret-123"));
  assert.equal(JSON.parse((await kv("GET", "/certificates/issuers/other-ca")).body).provider, "DigiCert");
  await page.getByRole("button", { name: "Delete issuer" }).click();
  await page.waitForURL(/\/issuers\?done=issuer-deleted/);
  assert.equal((await kv("GET", "/certificates/issuers/other-ca")).status, 404);
});

test("set the vault's contacts", async () => {
  await page.goto(`${srv.url}/ui/v/default/contacts`);
  await page.getByLabel("Contacts").fill("not-an-address");
  await page.getByRole("button", { name: "Save contacts" }).click();
  await page.locator("#contacts-err").waitFor();
  assert.equal((await kv("GET", "/certificates/contacts")).status, 404, "nothing set");
  await page.getByLabel("Contacts").fill("ops@example.com, Ops team, +1 555 0100\nsecurity@example.com");
  await page.getByRole("button", { name: "Save contacts" }).click();
  await page.waitForURL(/done=contacts-saved/);
  assert.deepEqual(await page.getByTestId("contact-email").allTextContents(), ["ops@example.com", "security@example.com"]);
  await shot(page, "manage-07-contacts");
  const j = JSON.parse((await kv("GET", "/certificates/contacts")).body);
  assert.deepEqual(j.contacts, [
    { email: "ops@example.com", name: "Ops team", phone: "+1 555 0100" },
    { email: "security@example.com" },
  ]);
});

test("a webhook channel: send test, and the delivery history shows a delivered event", async () => {
  const url = `http://127.0.0.1:${hook.address().port}/hook`;
  await page.goto(`${srv.url}/ui/v/default/channels`);
  await page.getByLabel("Name", { exact: true }).fill("hook");
  await page.getByLabel("Type").selectOption("webhook");
  await page.getByLabel("URL").fill(url);
  await page.getByRole("button", { name: "Add channel" }).click();
  // the generated signing secret is shown once
  await page.locator("#new-secret").waitFor();
  const secret = await page.locator("#new-secret").textContent();
  assert.match(secret, /^cvs_[0-9a-f]{64}$/);
  await page.getByRole("link", { name: "Open the channel" }).click();
  assert.ok(!(await page.content()).includes(secret), "the secret is not shown again");
  const before = received.length;
  await page.getByRole("button", { name: "Send test" }).click();
  await page.getByText(/The test notification was delivered \(HTTP 200/).waitFor();
  assert.equal(received.length, before + 1, "the receiver got the test");
  const got = received[received.length - 1];
  assert.equal(got.path, "/hook");
  assert.equal(JSON.parse(got.body).event_type, "test");
  // the receiver can check the signature with the secret shown once
  const ts = got.headers["x-certvault-timestamp"];
  const mac = crypto.createHmac("sha256", secret).update(`${ts}.${got.body}`).digest("hex");
  assert.equal(got.headers["x-certvault-signature"], `v1=${mac}`);
  // the closed-port channel, then an event both get
  await page.goto(`${srv.url}/ui/v/default/channels`);
  await page.getByLabel("Name", { exact: true }).fill("dead-end");
  await page.getByLabel("URL").fill(`http://127.0.0.1:${deadPort}/nobody`);
  await page.getByLabel("Signing secret (optional)").fill("a-signing-secret-0123456789");
  await page.getByRole("button", { name: "Add channel" }).click();
  await page.waitForURL(/\/channels\/dead-end\?done=channel-added/);
  assert.ok(!(await page.content()).includes("a-signing-secret-0123456789"));
  const c = await kv("POST", "/certificates/notified/create", {
    policy: { x509_props: { subject: "CN=notified.example.com", validity_months: 1 }, issuer: { name: "Self" } },
  });
  assert.ok([200, 202].includes(c.status), c.body.toString());
  await until("the issued event at the receiver", () => received.some((x) => JSON.parse(x.body).event_type === "issued"));
  await page.goto(`${srv.url}/ui/v/default/channels/hook`);
  await until("a delivered row", async () => {
    await page.reload();
    return (await page.getByTestId("delivery-status").allTextContents()).includes("delivered");
  });
  const row = page.locator("tr", { hasText: "issued" });
  assert.match(await row.textContent(), /notified/);
  assert.match(await row.textContent(), /HTTP 200/);
  await shot(page, "manage-08-channel-history");
});

test("a channel on a closed port ends in dead letters; Replay queues it again", async () => {
  const dead = await until("a dead delivery", async () => {
    const d = await admin(srv, "GET", "/vaults/default/deliveries?status=dead");
    return d.value.find((x) => x.channel === "dead-end");
  });
  assert.equal(dead.attempts, 1);
  await page.goto(`${srv.url}/ui/v/default/channels`);
  const row = page.getByTestId(`delivery-${dead.id}`);
  await row.waitFor();
  assert.match(await row.textContent(), /dead/);
  assert.match(await row.textContent(), /dead-end/);
  await shot(page, "manage-09-dead-letters");
  await row.getByRole("button", { name: "Replay" }).click();
  await page.waitForURL(/done=replayed/);
  // it is sent again (and, the port still being closed, dies again after one more attempt;
  // a replay starts the attempt count afresh, the history keeps both)
  const again = await until("the second attempt", async () => {
    const d = await admin(srv, "GET", `/vaults/default/deliveries/${dead.id}`);
    return d.history.length >= 2 && d.status === "dead" ? d : null;
  });
  assert.equal(again.history.length, 2);
  assert.equal(again.attempts, 1);
  // the channel page shows the history of that channel
  await page.goto(`${srv.url}/ui/v/default/channels/dead-end`);
  await page.getByTestId(`delivery-${dead.id}`).waitFor();
  // replaying a delivery that is not dead is refused and changes nothing
  const ok = (await admin(srv, "GET", "/vaults/default/deliveries?status=delivered")).value[0];
  const csrf = await csrfOf(page);
  const r = await page.request.post(`${srv.url}/ui/v/default/deliveries/${ok.id}/replay`, { form: { csrf }, maxRedirects: 0 });
  assert.equal(r.status(), 409);
  assert.equal((await admin(srv, "GET", `/vaults/default/deliveries/${ok.id}`)).status, "delivered");
});

test("a limited principal does not see the manage actions and gets 403 when posting them", async () => {
  const made = await admin(srv, "POST", "/principals", { name: "clerk", admin: false, token: true });
  await admin(srv, "PUT", "/vaults/default/access-policies/clerk", { certificates: ["get", "list"], keys: [], secrets: [] });
  const cctx = await newContext(browser);
  const cp = await cctx.newPage();
  await signIn(cp, made.token.token);
  const nav = cp.getByRole("navigation", { name: "Main" });
  for (const name of ["Import", "Issuers", "Contacts", "Notifications"]) {
    assert.equal(await nav.getByRole("link", { name, exact: true }).count(), 0, `no ${name} link`);
  }
  await shot(cp, "manage-10-limited-principal");
  for (const p of ["import", "issuers", "issuers/acme-eab", "contacts", "channels", "channels/hook"]) {
    const r = await cp.goto(`${srv.url}/ui/v/default/${p}`);
    assert.equal(r.status(), 403, `GET ${p}`);
  }
  const csrf = await csrfOf(cp);
  const posts = [
    ["import", { name: "sneaky", file: Buffer.from("x").toString("base64") }],
    ["issuers", { name: "sneaky", kind: "other", provider: "X", enabled: "1" }],
    ["issuers/acme-eab", { kind: "acme", directory: "https://evil.example/directory", dns_mode: "notify" }],
    ["issuers/acme-eab/delete", {}],
    ["contacts", { contacts: "evil@example.com" }],
    ["contacts/delete", {}],
    ["channels", { name: "sneaky", type: "webhook", url: "https://evil.example/hook" }],
    ["channels/hook/test", {}],
    ["channels/hook/delete", {}],
    ["deliveries/1/replay", {}],
  ];
  for (const [p, form] of posts) {
    const r = await cp.request.post(`${srv.url}/ui/v/default/${p}`, { form: { csrf, ...form }, maxRedirects: 0 });
    assert.equal(r.status(), 403, `POST ${p}`);
  }
  // nothing changed
  assert.equal((await kv("GET", "/certificates/sneaky")).status, 404);
  assert.equal((await kv("GET", "/certificates/issuers/sneaky")).status, 404);
  assert.equal(JSON.parse((await kv("GET", "/certificates/issuers/acme-eab")).body).acme.directory_url, "https://acme.example.test/directory");
  assert.equal(JSON.parse((await kv("GET", "/certificates/contacts")).body).contacts.length, 2);
  const chans = (await admin(srv, "GET", "/vaults/default/channels")).value.map((c) => c.name).sort();
  assert.deepEqual(chans, ["dead-end", "hook"]);
  // the refusals are in the audit trail
  const audit = await admin(srv, "GET", "/audit?principal=clerk");
  const ops = (audit.value || audit.records || audit).map((e) => `${e.operation}:${e.outcome}`);
  for (const op of ["certificates.import", "certificates.issuers.set", "certificates.issuers.update", "certificates.issuers.delete",
    "certificates.contacts.set", "certificates.contacts.delete", "admin.channels.create", "admin.channels.test", "admin.deliveries.replay"]) {
    assert.ok(ops.includes(`${op}:denied`), `${op} denied in ${JSON.stringify(ops)}`);
  }
  await cctx.close();
});

test("a manage form without its CSRF token is refused", async () => {
  for (const p of ["contacts/delete", "channels/hook/delete", "issuers/acme-eab/delete"]) {
    const r = await page.request.post(`${srv.url}/ui/v/default/${p}`, { form: {}, maxRedirects: 0 });
    assert.equal(r.status(), 403, p);
  }
  assert.equal((await kv("GET", "/certificates/contacts")).status, 200);
  assert.equal((await kv("GET", "/certificates/issuers/acme-eab")).status, 200);
});

test("the manage pages work on a 360 px wide screen", async () => {
  await page.setViewportSize({ width: 360, height: 740 });
  for (const p of ["import", "issuers", "contacts", "channels"]) {
    await page.goto(`${srv.url}/ui/v/default/${p}`);
    const width = await page.evaluate(() => document.documentElement.scrollWidth);
    assert.ok(width <= 360, `${p}: no horizontal scrolling (${width})`);
    await shot(page, `manage-11-narrow-${p}`);
  }
  await page.setViewportSize({ width: 1280, height: 900 });
});

process.on("exit", (code) => {
  if (code !== 0 && srv) console.error(`--- server log ---\n${serverLog(srv)}`);
});
