// End-to-end tests of the web console: the real certvault binary, Debian's chromium.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import {
  SHOTS, admin, closeBrowser, launchBrowser, newContext, openssl, request, serverLog, shot, startServer, stopServer,
} from "./support.mjs";

let srv;
let browser;
let ctx; // the administrator's browser context
let page;
const CERT = "web-console";

before(async () => {
  srv = await startServer();
  browser = await launchBrowser();
  ctx = await newContext(browser);
  page = await ctx.newPage();
  page.on("dialog", (d) => d.accept());
  console.log(`screenshots: ${SHOTS}`);
});

after(async () => {
  await closeBrowser(browser);
  await stopServer(srv);
});

async function signIn(p, token) {
  await p.goto(`${srv.url}/ui/`);
  assert.match(p.url(), /\/ui\/login$/, "an unauthenticated request is sent to the sign-in page");
  await p.getByLabel("Access token").fill(token);
  await p.getByRole("button", { name: "Sign in" }).click();
  await p.waitForURL(/\/ui\/v\/default\/certificates/);
}

async function versionCount(p) {
  return Number(await p.getByTestId("version-count").textContent());
}

async function csrfOf(p) {
  return p.locator('form.signout input[name="csrf"]').inputValue();
}

test("an unauthenticated request gets the sign-in page, not the Key Vault challenge", async () => {
  const r = await request(srv, "GET", "/ui/v/default/certificates");
  assert.equal(r.status, 303);
  assert.equal(r.headers.location, "/ui/login");
  assert.equal(r.headers["www-authenticate"], undefined);
  const bad = await request(srv, "POST", "/ui/login", {
    headers: { "content-type": "application/x-www-form-urlencoded" },
  });
  assert.equal(bad.status, 401);
  const api = await request(srv, "GET", "/certificates?api-version=7.4");
  assert.equal(api.status, 401, "the API keeps its challenge");
  assert.ok(api.headers["www-authenticate"]);
});

test("sign in with a token; the session cookie is HttpOnly, Secure, SameSite=Strict", async () => {
  await page.goto(`${srv.url}/ui/login`);
  await shot(page, "01-login");
  await page.getByLabel("Access token").fill("cvt_not-a-real-token");
  await page.getByRole("button", { name: "Sign in" }).click();
  await assert.doesNotReject(page.getByText("The token was not accepted.").waitFor());
  await signIn(page, srv.token);
  const cookies = await ctx.cookies();
  const c = cookies.find((x) => x.name === "__Host-certvault_session");
  assert.ok(c, "session cookie set");
  assert.equal(c.httpOnly, true);
  assert.equal(c.secure, true);
  assert.equal(c.sameSite, "Strict");
  assert.equal(c.path, "/");
  await shot(page, "02-certificates-empty");
});

test("the create form validates each field before anything is sent", async () => {
  await page.goto(`${srv.url}/ui/v/default/certificates/new`);
  await shot(page, "03-create-form");
  await page.getByLabel("Name").fill("bad name!");
  await page.getByLabel("Primary domain").fill("exa mple.com");
  await page.getByLabel("Validity (months)").fill("0");
  await page.getByRole("button", { name: "Create" }).click();
  await page.locator("#name-err").waitFor();
  assert.match(await page.locator("#name-err").textContent(), /invalid/);
  assert.match(await page.locator("#domain-err").textContent(), /not a domain name/);
  assert.match(await page.locator("#validity-err").textContent(), /1 to 1200/);
  assert.equal(await page.getByLabel("Name").getAttribute("aria-invalid"), "true");
  await shot(page, "04-create-form-errors");
  const list = await admin(srv, "GET", "/vaults/default/events").catch(() => null);
  void list;
  const r = await request(srv, "GET", "/certificates/bad?api-version=7.4", { token: srv.token });
  assert.equal(r.status, 404, "nothing was created");
});

test("create a self-signed certificate", async () => {
  await page.goto(`${srv.url}/ui/v/default/certificates/new`);
  await page.getByLabel("Name").fill(CERT);
  await page.getByLabel("Primary domain").fill("www.example.com");
  await page.getByLabel("Alternative domains").fill("api.example.com\n*.apps.example.com");
  await page.getByLabel("Key algorithm").selectOption("EC-P-256");
  await page.getByLabel("Validity (months)").fill("6");
  await page.getByRole("button", { name: "Create" }).click();
  await page.waitForURL(new RegExp(`/ui/v/default/certificates/${CERT}\\?done=created`));
  assert.equal(await page.getByTestId("state").textContent(), "Valid");
  assert.equal(await versionCount(page), 1);
  assert.match(await page.getByTestId("keytype").first().textContent(), /P-256/);
  const t = await page.locator("time[data-local]").first();
  assert.match(await t.getAttribute("title"), /Z \(UTC\)$/, "UTC on hover");
  await shot(page, "05-certificate-detail");
  // the API sees it with the same policy
  const r = await request(srv, "GET", `/certificates/${CERT}?api-version=7.4`, { token: srv.token });
  assert.equal(r.status, 200);
  const body = JSON.parse(r.body);
  assert.deepEqual(body.policy.x509_props.sans.dns_names, ["www.example.com", "api.example.com", "*.apps.example.com"]);
  // the list shows it, search finds it by domain, a non-matching search does not
  await page.goto(`${srv.url}/ui/v/default/certificates?q=apps.example`);
  await page.getByRole("link", { name: CERT }).waitFor();
  await shot(page, "06-certificates-list");
  await page.goto(`${srv.url}/ui/v/default/certificates?q=nothing-like-this`);
  assert.equal(await page.getByRole("link", { name: CERT }).count(), 0);
  await page.goto(`${srv.url}/ui/v/default/dashboard`);
  await shot(page, "07-dashboard");
});

test("renew with rekey makes a second version with a different key", async () => {
  await page.goto(`${srv.url}/ui/v/default/certificates/${CERT}`);
  const before = await page.getByTestId("spki").first().textContent();
  await page.getByLabel("Rekey (new key pair)").check();
  await page.getByRole("button", { name: "Renew now" }).click();
  await page.waitForURL(/done=renewed/);
  let n = 0;
  for (let i = 0; i < 50; i++) {
    await page.reload();
    n = await versionCount(page);
    if (n === 2 && (await page.getByTestId("state").textContent()) === "Valid") break;
    await page.waitForTimeout(200);
  }
  assert.equal(n, 2);
  const keys = await page.getByTestId("spki").allTextContents();
  assert.equal(keys.length, 2);
  assert.notEqual(keys[0], keys[1], "rekey gives a new key");
  assert.ok(keys.includes(before));
  await shot(page, "08-renewed");
});

test("download a PFX and open it with the password", async () => {
  await page.goto(`${srv.url}/ui/v/default/certificates/${CERT}`);
  await page.getByLabel("Format").selectOption("pfx");
  await page.getByLabel("PFX password").fill("s3cret-Pfx!");
  const [dl] = await Promise.all([page.waitForEvent("download"), page.getByRole("button", { name: "Download" }).click()]);
  const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), "certvault-ui-pfx-")), "c.pfx");
  await dl.saveAs(file);
  const data = fs.readFileSync(file);
  const out = openssl(["pkcs12", "-in", file, "-passin", "pass:s3cret-Pfx!", "-nodes"]);
  assert.match(out, /BEGIN PRIVATE KEY/);
  assert.match(out, /BEGIN CERTIFICATE/);
  assert.match(out, /www\.example\.com/);
  assert.throws(() => openssl(["pkcs12", "-in", file, "-passin", "pass:wrong", "-nodes"]), "a wrong password fails");
  assert.throws(() => openssl(["pkcs12", "-in", file, "-passin", "pass:", "-nodes"]), "an empty password fails");
  assert.ok(data.length > 100);
  fs.rmSync(path.dirname(file), { recursive: true, force: true });
});

test("a form without its CSRF token is refused and changes nothing", async () => {
  const csrf = await csrfOf(page);
  assert.ok(csrf.length > 20);
  for (const form of [{}, { csrf: "wrong" }]) {
    const r = await page.request.post(`${srv.url}/ui/v/default/certificates/${CERT}/delete`, { form, maxRedirects: 0 });
    assert.equal(r.status(), 403);
    assert.match(await r.text(), /security token/);
  }
  const r = await request(srv, "GET", `/certificates/${CERT}?api-version=7.4`, { token: srv.token });
  assert.equal(r.status, 200, "still there");
  // a cross-site post is refused even with the token
  const x = await page.request.post(`${srv.url}/ui/v/default/certificates/${CERT}/delete`, {
    form: { csrf }, headers: { origin: "https://evil.example" }, maxRedirects: 0,
  });
  assert.equal(x.status(), 403);
  const r2 = await request(srv, "GET", `/certificates/${CERT}?api-version=7.4`, { token: srv.token });
  assert.equal(r2.status, 200, "still there");
});

test("a limited principal does not see forbidden actions and is refused when it posts them", async () => {
  const made = await admin(srv, "POST", "/principals", { name: "reader", admin: false, token: true });
  const token = made.token.token;
  await admin(srv, "PUT", "/vaults/default/access-policies/reader", { certificates: ["get", "list"], keys: [], secrets: [] });
  const rctx = await newContext(browser);
  const rp = await rctx.newPage();
  await signIn(rp, token);
  await rp.goto(`${srv.url}/ui/v/default/certificates`);
  assert.equal(await rp.getByRole("link", { name: "Create certificate" }).count(), 0);
  await rp.goto(`${srv.url}/ui/v/default/certificates/${CERT}`);
  await shot(rp, "09-limited-principal-detail");
  for (const name of ["Renew now", "Delete", "Save policy", "Save"]) {
    assert.equal(await rp.getByRole("button", { name, exact: true }).count(), 0, `no ${name} button`);
  }
  const formats = await rp.getByLabel("Format").locator("option").allTextContents();
  assert.deepEqual(formats, ["Certificate only (PEM)"], "no private key download without secrets/get");
  const before = await versionCount(rp);
  const csrf = await csrfOf(rp);
  for (const [action, form] of [
    ["renew", { rekey: "1" }],
    ["delete", {}],
    ["policy", { policy: "{}" }],
    ["download", { format: "pfx", password: "x" }],
  ]) {
    const r = await rp.request.post(`${srv.url}/ui/v/default/certificates/${CERT}/${action}`, {
      form: { csrf, ...form }, maxRedirects: 0,
    });
    assert.equal(r.status(), 403, `${action} is refused`);
  }
  const c = await rp.request.post(`${srv.url}/ui/v/default/certificates/new`, {
    form: { csrf, name: "sneaky", domain: "a.example.com", key: "RSA-2048", validity: "12", action: "AutoRenew", trigger: "percentage", trigger_value: "80", issuer: "Self" },
    maxRedirects: 0,
  });
  assert.equal(c.status(), 403);
  await rp.reload();
  assert.equal(await versionCount(rp), before, "nothing changed");
  const gone = await request(srv, "GET", "/certificates/sneaky?api-version=7.4", { token: srv.token });
  assert.equal(gone.status, 404);
  // the refusals are in the audit trail like the API's
  const audit = await admin(srv, "GET", "/audit?principal=reader");
  const ops = (audit.value || audit.records || audit).map((e) => `${e.operation}:${e.outcome}`);
  assert.ok(ops.includes("certificates.renew:denied"), JSON.stringify(ops));
  assert.ok(ops.includes("certificates.delete:denied"), JSON.stringify(ops));
  await rctx.close();
});

test("delete, recover and purge with confirmation", async () => {
  await page.goto(`${srv.url}/ui/v/default/certificates/${CERT}`);
  await page.getByRole("button", { name: "Delete" }).click();
  await page.waitForURL(/\/deleted\?done=deleted/);
  await shot(page, "10-deleted");
  await page.getByRole("button", { name: "Recover" }).click();
  await page.waitForURL(/done=recovered/);
  await page.getByRole("button", { name: "Delete" }).click();
  await page.waitForURL(/\/deleted\?done=deleted/);
  // purge refuses without the confirmation box (sent by hand: the browser enforces `required`)
  const csrf = await csrfOf(page);
  const r = await page.request.post(`${srv.url}/ui/v/default/deleted/${CERT}/purge`, { form: { csrf }, maxRedirects: 0 });
  assert.equal(r.status(), 400);
  await page.getByLabel("I understand this cannot be undone").check();
  await page.getByRole("button", { name: "Purge" }).click();
  await page.waitForURL(/done=purged/);
  const gone = await request(srv, "GET", `/deletedcertificates/${CERT}?api-version=7.4`, { token: srv.token });
  assert.equal(gone.status, 404);
});

test("the page works on a 360 px wide screen", async () => {
  await page.setViewportSize({ width: 360, height: 740 });
  await page.goto(`${srv.url}/ui/v/default/certificates/new`);
  const width = await page.evaluate(() => document.documentElement.scrollWidth);
  assert.ok(width <= 360, `no horizontal scrolling (${width})`);
  await shot(page, "11-narrow-create");
  await page.setViewportSize({ width: 1280, height: 900 });
});

test("sign-out ends the session", async () => {
  await page.goto(`${srv.url}/ui/v/default/certificates`);
  const cookie = (await ctx.cookies()).find((x) => x.name === "__Host-certvault_session");
  await page.getByRole("button", { name: "Sign out" }).click();
  await page.waitForURL(/\/ui\/login$/);
  await page.goto(`${srv.url}/ui/v/default/certificates`);
  assert.match(page.url(), /\/ui\/login$/);
  // the old cookie no longer works anywhere
  const r = await request(srv, "GET", "/ui/v/default/certificates", {
    headers: { cookie: `__Host-certvault_session=${cookie.value}` },
  });
  assert.equal(r.status, 303);
  assert.equal(r.headers.location, "/ui/login");
});

process.on("exit", (code) => {
  if (code !== 0 && srv) console.error(`--- server log ---\n${serverLog(srv)}`);
});
