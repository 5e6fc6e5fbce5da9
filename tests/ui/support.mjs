// Support for the console's end-to-end tests: a real certvault server (the release binary by
// default) on a free loopback port with a temporary data directory, Debian's chromium driven by
// playwright-core, the admin API, screenshots.
import { spawn, execFileSync } from "node:child_process";
import fs from "node:fs";
import https from "node:https";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = path.dirname(fileURLToPath(import.meta.url));
export const ROOT = path.resolve(here, "..", "..");
export const BINARY = process.env.CERTVAULT_BIN || path.join(ROOT, "target", "release", "certvault");
export const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
export const DOMAIN = "kv.test";

export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** HTTPS request to the server, trusting its CA. Returns {status, headers, body (Buffer)}. */
export function request(srv, method, p, { token, json, headers = {} } = {}) {
  return new Promise((resolve, reject) => {
    const body = json === undefined ? undefined : Buffer.from(JSON.stringify(json));
    const h = { ...headers };
    if (token) h.authorization = `Bearer ${token}`;
    if (body) {
      h["content-type"] = "application/json";
      h["content-length"] = body.length;
    }
    const req = https.request(
      { host: "127.0.0.1", port: srv.port, method, path: p, headers: h, ca: srv.ca, servername: "localhost" },
      (res) => {
        const chunks = [];
        res.on("data", (c) => chunks.push(c));
        res.on("end", () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks) }));
      },
    );
    req.on("error", reject);
    if (body) req.write(body);
    req.end();
  });
}

export async function admin(srv, method, p, json) {
  const r = await request(srv, method, `/admin/v1${p}`, { token: srv.token, json });
  if (r.status >= 300) throw new Error(`admin ${method} ${p}: ${r.status} ${r.body}`);
  return r.body.length ? JSON.parse(r.body.toString()) : null;
}

export async function startServer() {
  if (!fs.existsSync(BINARY)) throw new Error(`certvault binary missing: ${BINARY} (build it: cargo build --release -p certvault)`);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "certvault-ui-"));
  const port = await freePort();
  const log = fs.openSync(path.join(dir, "server.log"), "a");
  const proc = spawn(
    BINARY,
    ["serve", "--data-dir", path.join(dir, "data"), "--listen", `127.0.0.1:${port}`, "--base-domain", DOMAIN],
    { stdio: ["ignore", log, log], env: { ...process.env, NO_COLOR: "1", CERTVAULT_LOG: "info,certvault_server=debug" } },
  );
  const srv = { dir, port, proc, url: `https://127.0.0.1:${port}`, ca: null, token: null };
  const deadline = Date.now() + 60_000;
  let last = "";
  while (Date.now() < deadline) {
    if (proc.exitCode !== null) throw new Error(`certvault exited (${proc.exitCode}):\n${serverLog(srv)}`);
    const caPath = path.join(dir, "data", "tls", "ca.pem");
    if (fs.existsSync(caPath)) {
      srv.ca = fs.readFileSync(caPath);
      try {
        const r = await request(srv, "GET", "/healthz");
        if (r.status === 200) {
          srv.token = fs.readFileSync(path.join(dir, "data", "admin.token"), "utf8").trim();
          return srv;
        }
        last = `healthz ${r.status}`;
      } catch (e) {
        last = String(e);
      }
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  proc.kill("SIGKILL");
  throw new Error(`certvault did not become healthy: ${last}\n${serverLog(srv)}`);
}

export function serverLog(srv) {
  try {
    return fs.readFileSync(path.join(srv.dir, "server.log"), "utf8").slice(-6000);
  } catch {
    return "";
  }
}

export async function stopServer(srv) {
  if (!srv) return;
  if (srv.proc.exitCode === null) {
    const done = new Promise((r) => srv.proc.once("exit", r));
    srv.proc.kill("SIGTERM");
    const t = setTimeout(() => srv.proc.kill("SIGKILL"), 10_000);
    await done;
    clearTimeout(t);
  }
  if (!process.env.KEEP_UI_DATA) fs.rmSync(srv.dir, { recursive: true, force: true });
}

export async function launchBrowser() {
  if (!fs.existsSync(CHROMIUM)) throw new Error(`chromium missing: ${CHROMIUM} (apt-get install chromium)`);
  // chromium.launch() starts chromium with a fresh temporary --user-data-dir of its own (and
  // removes it on close); passing one in `args` is refused by playwright.
  const args = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
  ];
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args });
}

export async function closeBrowser(browser) {
  if (!browser) return;
  await browser.close();
}

export async function newContext(browser) {
  return browser.newContext({ ignoreHTTPSErrors: true, acceptDownloads: true, viewport: { width: 1280, height: 900 } });
}

export const SHOTS = process.env.UI_SCREENSHOTS || path.join(ROOT, "tests", "ui", "screenshots");

export async function shot(page, name) {
  fs.mkdirSync(SHOTS, { recursive: true });
  await page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage: true });
}

export function openssl(args, input) {
  return execFileSync("openssl", args, { input, stdio: ["pipe", "pipe", "pipe"] }).toString();
}
