// End-to-end tests of the console's list order and search, dashboard, audit log and admin pages:
// the real certvault binary, Debian's chromium.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import {
  SHOTS, admin, closeBrowser, launchBrowser, newContext, request, serverLog, shot, startServer, stopServer,
} from "./support.mjs";

let srv;
let browser;
let ctx;
let page;

before(async () => {
  srv = await startServer();
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
});

async function signIn(p, token) {
  await p.goto(`${srv.url}/ui/login`);
  await p.getByLabel("Access token").fill(token);
  await p.getByRole("button", { name: "Sign in" }).click();
  await p.waitForURL(/\/ui\/v\/default\//);
}

/** Creates a self-signed certificate through the API and waits until it is issued. */
async function createCert(name, months, dns) {
  const policy = {
    key_props: { kty: "EC", crv: "P-256", exportable: true, reuse_key: false },
    secret_props: { contentType: "application/x-pem-file" },
    x509_props: { subject: `CN=${dns[0]}`, sans: { dns_names: dns }, validity_months: months },
    issuer: { name: "Self" },
  };
  const r = await request(srv, "POST", `/certificates/${name}/create?api-version=7.4`, { token: srv.token, json: { policy } });
  assert.ok(r.status === 202 || r.status === 200, `create ${name}: ${r.status} ${r.body}`);
  for (let i = 0; i < 100; i++) {
    const g = await request(srv, "GET", `/certificates/${name}?api-version=7.4`, { token: srv.token });
    if (g.status === 200 && JSON.parse(g.body).cer) return;
    await new Promise((res) => setTimeout(res, 100));
  }
  throw new Error(`${name} was not issued`);
}

async function listedNames(p) {
  return p.locator("main table tbody tr td:first-child a").allTextContents();
}

test("the list sorts by expiry both ways and search finds a certificate by a SAN", async () => {
  await createCert("exp-late", 12, ["late.example.org"]);
  await createCert("exp-soon", 1, ["soon.example.org", "unique-san.example.net"]);
  await createCert("exp-mid", 2, ["mid.example.org"]);
  await page.goto(`${srv.url}/ui/v/default/certificates`);
  assert.deepEqual(await listedNames(page), ["exp-late", "exp-mid", "exp-soon"], "name order by default");
  await page.getByLabel("Sort").selectOption("expiry");
  await page.getByRole("button", { name: "Apply" }).click();
  await page.waitForURL(/sort=expiry/);
  assert.deepEqual(await listedNames(page), ["exp-soon", "exp-mid", "exp-late"], "soonest expiry first");
  await shot(page, "30-list-by-expiry");
  await page.goto(`${srv.url}/ui/v/default/certificates?sort=-expiry`);
  assert.deepEqual(await listedNames(page), ["exp-late", "exp-mid", "exp-soon"], "latest expiry first");
  await page.getByLabel("Search").fill("UNIQUE-SAN.example");
  await page.getByRole("button", { name: "Apply" }).click();
  await page.waitForURL(/q=UNIQUE-SAN/);
  assert.deepEqual(await listedNames(page), ["exp-soon"], "found by its second DNS name, any case");
  await shot(page, "31-search-by-san");
  await page.goto(`${srv.url}/ui/v/default/certificates?q=example.org&sort=expiry`);
  assert.deepEqual(await listedNames(page), ["exp-soon", "exp-mid", "exp-late"], "search keeps the order");
});

test("the dashboard shows the counts and the next expiries", async () => {
  await page.goto(`${srv.url}/ui/v/default/dashboard`);
  const count = async (k) => Number(await page.getByTestId(`count-${k}`).locator(".n").textContent());
  assert.equal(await count("all"), 3);
  assert.equal((await count("valid")) + (await count("expiring")), 3);
  assert.equal(await count("expired"), 0);
  assert.equal(await count("pending"), 0);
  assert.equal(await page.getByTestId("expiring-90").textContent(), "(2)", "1- and 2-month certificates expire within 90 days");
  const next = await page.locator("main section table tbody tr td:first-child a").allTextContents();
  assert.deepEqual(next.slice(0, 2), ["exp-soon", "exp-mid"]);
  assert.equal(await page.locator("svg.timeline rect.bar").count(), 13, "one bar per week");
  assert.ok(await page.getByRole("heading", { name: "Notification channels" }).isVisible(), "administrators see channel health");
  await shot(page, "32-dashboard");
});

test("the audit page filters by operation", async () => {
  await page.goto(`${srv.url}/ui/v/default/audit`);
  await page.getByLabel("Operation").fill("certificates.create");
  await page.getByRole("button", { name: "Apply" }).click();
  await page.waitForURL(/operation=certificates.create/);
  const ops = await page.locator("table[data-testid=audit] td.op").allTextContents();
  assert.ok(ops.length >= 3, `three creates at least: ${ops}`);
  assert.ok(ops.every((o) => o === "certificates.create"), ops.join(","));
  await shot(page, "33-audit-filtered");
  await page.getByLabel("Result").selectOption("denied");
  await page.getByRole("button", { name: "Apply" }).click();
  await page.waitForURL(/result=denied/);
  assert.equal(await page.locator("table[data-testid=audit] td.op").count(), 0, "no denied creates");
});

test("an administrator creates a principal and its policy; it signs in with exactly those rights", async () => {
  await page.goto(`${srv.url}/ui/admin/principals`);
  await shot(page, "34-admin-principals");
  await page.getByLabel("Name", { exact: true }).fill("ops reader");
  await page.getByRole("button", { name: "Create principal" }).click();
  await page.getByRole("alert").waitFor();
  assert.match(await page.getByRole("alert").textContent(), /not a valid principal name/);
  await page.getByLabel("Name", { exact: true }).fill("ops-reader");
  await page.getByRole("button", { name: "Create principal" }).click();
  const token = (await page.getByTestId("new-token").textContent()).trim();
  assert.match(token, /^cvt_/);
  await shot(page, "35-admin-principal-created");
  await page.reload();
  assert.equal(await page.getByTestId("new-token").count(), 0, "the token is shown once");

  await page.goto(`${srv.url}/ui/admin/vaults/default/policies`);
  await page.getByLabel("Principal").selectOption("ops-reader");
  await page.locator("#perm-certificates-get").check();
  await page.locator("#perm-certificates-list").check();
  await page.getByRole("button", { name: "Save access policy" }).click();
  await page.waitForURL(/done=policy/);
  const row = page.locator('table[data-testid=policies] tr[data-principal="ops-reader"]');
  assert.match(await row.locator("td").nth(1).textContent(), /get, list/);
  await shot(page, "36-admin-policies");
  const pol = await admin(srv, "GET", "/vaults/default/access-policies/ops-reader");
  assert.deepEqual(pol.permissions.certificates.sort(), ["get", "list"]);
  assert.deepEqual(pol.permissions.secrets, []);

  // the new principal signs in and can do exactly that
  const rctx = await newContext(browser);
  const rp = await rctx.newPage();
  await signIn(rp, token);
  await rp.goto(`${srv.url}/ui/v/default/certificates`);
  assert.deepEqual(await listedNames(rp), ["exp-late", "exp-mid", "exp-soon"], "it may list");
  assert.equal(await rp.getByRole("link", { name: "Create certificate" }).count(), 0, "it may not create");
  assert.equal(await rp.getByRole("link", { name: "Admin" }).count(), 0, "no admin link");
  assert.equal(await rp.getByRole("link", { name: "Audit log" }).count(), 0, "no audit link");
  await rp.goto(`${srv.url}/ui/v/default/certificates/exp-soon`);
  assert.equal(await rp.getByRole("button", { name: "Delete", exact: true }).count(), 0);
  await shot(rp, "37-new-principal-detail");
  const p403 = await rp.goto(`${srv.url}/ui/admin/principals`);
  assert.equal(p403.status(), 403);
  await shot(rp, "38-non-admin-403");
  assert.equal((await rp.goto(`${srv.url}/ui/v/default/audit`)).status(), 403);
  const csrf = await rp.locator('form.signout input[name="csrf"]').inputValue();
  const before = (await admin(srv, "GET", "/principals")).principals.length;
  for (const [path, form] of [
    ["/ui/admin/principals", { name: "sneaky", admin: "1" }],
    ["/ui/admin/principals/ops-reader/delete", {}],
    ["/ui/admin/vaults", { name: "sneaky-vault" }],
    ["/ui/admin/vaults/default/delete", {}],
    ["/ui/admin/vaults/default/policies", { principal: "ops-reader", certificates: "all", secrets: "get" }],
    ["/ui/v/default/certificates/exp-soon/delete", {}],
  ]) {
    const r = await rp.request.post(`${srv.url}${path}`, { form: { csrf, ...form }, maxRedirects: 0 });
    assert.equal(r.status(), 403, `${path} is refused`);
  }
  assert.equal((await admin(srv, "GET", "/principals")).principals.length, before, "no principal made");
  assert.deepEqual((await admin(srv, "GET", "/vaults")).vaults.map((v) => v.name), ["default"], "vaults unchanged");
  const still = await admin(srv, "GET", "/vaults/default/access-policies/ops-reader");
  assert.deepEqual(still.permissions.certificates.sort(), ["get", "list"], "policy unchanged");
  const audit = await admin(srv, "GET", "/audit?principal=ops-reader");
  const ops = audit.records.map((e) => `${e.operation}:${e.outcome}`);
  assert.ok(ops.includes("admin.principals.create:denied"), ops.join(" "));
  assert.ok(ops.includes("certificates.delete:denied"), ops.join(" "));

  // disabling the principal in the console ends its session at once
  await page.goto(`${srv.url}/ui/admin/principals`);
  await page.locator('tr[data-principal="ops-reader"]').getByRole("button", { name: /Disable/ }).click();
  await page.waitForURL(/done=disabled/);
  await rp.goto(`${srv.url}/ui/v/default/certificates`);
  assert.match(rp.url(), /\/ui\/login$/);
  await rctx.close();
});

test("an administrator creates and deletes a vault", async () => {
  await page.goto(`${srv.url}/ui/admin/vaults`);
  await page.getByLabel("Name", { exact: true }).fill("team-b");
  await page.getByRole("button", { name: "Create vault" }).click();
  await page.waitForURL(/done=vault-created/);
  assert.equal(await page.locator('tr[data-vault="team-b"]').count(), 1);
  await shot(page, "39-admin-vaults");
  await page.locator('tr[data-vault="team-b"]').getByRole("button", { name: /Delete/ }).click();
  await page.waitForURL(/done=vault-deleted/);
  assert.equal(await page.locator('tr[data-vault="team-b"]').count(), 0);
  const deleted = await admin(srv, "GET", "/deleted-vaults");
  assert.deepEqual(deleted.vaults.map((v) => v.name), ["team-b"]);
});

process.on("exit", (code) => {
  if (code !== 0 && srv) console.error(`--- server log ---\n${serverLog(srv)}`);
});
