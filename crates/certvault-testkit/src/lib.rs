//! Test support: real protocol peers for certvault's integration tests.
//!
//! * [`Bind`]: BIND 9 (`named`) authoritative for one zone, with a TSIG hmac-sha256 key allowed
//!   to update TXT records (`update-policy { grant KEY zonesub TXT; }`);
//! * [`ChallTestSrv`]: `pebble-challtestsrv` as a DNS server whose TXT records are set over its
//!   HTTP API;
//! * [`Pebble`]: Debian's `pebble` ACME test CA, its VA resolving through either of the above;
//! * [`AriStandIn`]: a reverse proxy in front of pebble that adds ACME Renewal Information
//!   (RFC 9773), which Debian's pebble 2.4 lacks.
//!
//! Each one runs on free loopback ports with its own temporary directory and is killed (by its
//! PID) when dropped. A missing binary is a panic that says which Debian package to install:
//! tests fail loudly, they never skip.
//!
//! This is test code: it panics on any failure, with the component's log in the message.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::io::Read;
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use tempfile::TempDir;

mod ari;
pub use ari::{AriStandIn, Window};

/// The absolute path of a binary, or a panic naming the Debian package that provides it.
pub fn binary(name: &str, package: &str) -> PathBuf {
    let dirs = std::env::var("PATH").unwrap_or_default();
    let mut candidates: Vec<PathBuf> = std::env::split_paths(&dirs).collect();
    candidates.extend(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from));
    for d in candidates {
        let p = d.join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "required test binary `{name}` not found: install it with `apt-get install -y {package}` \
         (scripts/test-all.sh does this); this test does not skip"
    );
}

/// A loopback port free for both TCP and UDP at the time of the call.
pub fn free_port() -> u16 {
    for _ in 0..100 {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port for TCP and UDP");
}

/// `n` random bytes from the OS.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut buf)
        .unwrap();
    buf
}

/// A child process killed by PID on drop.
struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &'static str, cmd: &mut Command, log: PathBuf) -> Self {
        let out = fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Self { name, child, log }
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn fail(&mut self, what: &str) -> ! {
        let status = self.child.try_wait().ok().flatten();
        panic!(
            "{} {what} (exit status: {status:?}); its log:\n{}",
            self.name,
            self.log_text()
        );
    }

    fn check_alive(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            self.fail("exited early");
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_tcp(proc: &mut Proc, port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        proc.check_alive();
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    proc.fail(&format!("did not open {what} port {port} within 20 s"));
}

// ---------------------------------------------------------------------------------------- bind

/// BIND 9 authoritative for one zone on a free loopback port (UDP and TCP).
pub struct Bind {
    /// The port.
    pub port: u16,
    /// `127.0.0.1:<port>`.
    pub addr: String,
    /// The zone, without the trailing dot (`acme-1.test`).
    pub zone: String,
    /// The TSIG key's name.
    pub key_name: String,
    /// The TSIG key's secret, base64.
    pub key_secret: String,
    proc: Proc,
    _dir: TempDir,
}

impl Bind {
    /// Starts `named` for `zone` (SOA/NS `ns.<zone>` → 127.0.0.1, plus A records for
    /// `<zone>` and `www.<zone>`).
    pub fn start(zone: &str) -> Self {
        let named = binary("named", "bind9");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let port = free_port();
        let key_name = "certvault-test".to_owned();
        let key_secret = base64::engine::general_purpose::STANDARD.encode(random_bytes(32));
        let zone_file = d.join("zone.db");
        fs::write(
            &zone_file,
            format!(
                "$TTL 60\n\
                 @ IN SOA ns.{zone}. hostmaster.{zone}. 1 3600 600 86400 60\n\
                 @ IN NS ns.{zone}.\n\
                 @ IN A 127.0.0.1\n\
                 ns IN A 127.0.0.1\n\
                 www IN A 127.0.0.1\n"
            ),
        )
        .unwrap();
        let dp = d.display();
        let conf = format!(
            r#"options {{
    directory "{dp}";
    pid-file "{dp}/named.pid";
    session-keyfile "{dp}/session.key";
    managed-keys-directory "{dp}";
    listen-on port {port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    recursion no;
    allow-query {{ any; }};
    dnssec-validation no;
    notify no;
}};
controls {{ }};
key "{key_name}" {{
    algorithm hmac-sha256;
    secret "{key_secret}";
}};
zone "{zone}" {{
    type primary;
    file "{zf}";
    update-policy {{ grant {key_name} zonesub TXT; }};
}};
"#,
            zf = zone_file.display()
        );
        let conf_path = d.join("named.conf");
        fs::write(&conf_path, conf).unwrap();
        let mut cmd = Command::new(named);
        cmd.arg("-g").arg("-4").arg("-c").arg(&conf_path);
        let mut proc = Proc::spawn("named (bind9)", &mut cmd, d.join("named.log"));
        wait_tcp(&mut proc, port, "DNS");
        // TCP opens before the zone is loaded; wait for "running".
        let deadline = Instant::now() + Duration::from_secs(20);
        while !proc.log_text().contains("running") {
            proc.check_alive();
            if Instant::now() > deadline {
                proc.fail("did not report `running` within 20 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // "running" can come before the zone answers (SERVFAIL while it loads): wait until an
        // independent client gets the zone's SOA.
        let dig = binary("dig", "bind9-dnsutils");
        loop {
            let out = Command::new(&dig)
                .args(["+short", "+norecurse", "+time=1", "+tries=1", "-p"])
                .arg(port.to_string())
                .arg("@127.0.0.1")
                .arg(zone)
                .arg("SOA")
                .output()
                .unwrap();
            if out.status.success() && !out.stdout.is_empty() {
                break;
            }
            proc.check_alive();
            if Instant::now() > deadline {
                proc.fail("did not serve the zone's SOA within 20 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            port,
            addr: format!("127.0.0.1:{port}"),
            zone: zone.to_owned(),
            key_name,
            key_secret,
            proc,
            _dir: dir,
        }
    }

    /// The TXT values at `name`, asked with `dig` (an independent client), without recursion.
    pub fn dig_txt(&self, name: &str) -> Vec<String> {
        let dig = binary("dig", "bind9-dnsutils");
        // Over TCP (no stray UDP datagram can be taken for the answer), and again when dig
        // reports a problem with the answer instead of printing records.
        let mut last = String::new();
        for _ in 0..5 {
            let out = Command::new(&dig)
                .args(["+short", "+tcp", "+norecurse", "-p"])
                .arg(self.port.to_string())
                .arg("@127.0.0.1")
                .arg(name)
                .arg("TXT")
                .output()
                .unwrap();
            assert!(out.status.success(), "dig failed: {out:?}");
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if text.lines().any(|l| l.starts_with(';')) {
                last = text;
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
            let mut v: Vec<String> = text
                .lines()
                .map(|l| l.trim().trim_matches('"').to_owned())
                .filter(|l| !l.is_empty())
                .collect();
            v.sort();
            return v;
        }
        panic!("dig kept reporting problems: {last}");
    }

    /// named's log so far.
    pub fn log(&self) -> String {
        self.proc.log_text()
    }
}

// -------------------------------------------------------------------------------- challtestsrv

/// `pebble-challtestsrv` serving DNS on a free port; TXT records are set over its HTTP API.
pub struct ChallTestSrv {
    /// `127.0.0.1:<dns port>`.
    pub dns_addr: String,
    /// `http://127.0.0.1:<management port>`.
    pub management_url: String,
    http: reqwest::Client,
    _proc: Proc,
    _dir: TempDir,
}

impl ChallTestSrv {
    /// Starts it with only the DNS responder (the HTTP-01/TLS-ALPN-01 responders are off).
    pub fn start() -> Self {
        let bin = binary("pebble-challtestsrv", "pebble");
        let dir = tempfile::tempdir().unwrap();
        let dns_port = free_port();
        let mgmt_port = free_port();
        let mut cmd = Command::new(bin);
        cmd.arg("-dns01")
            .arg(format!("127.0.0.1:{dns_port}"))
            .arg("-management")
            .arg(format!("127.0.0.1:{mgmt_port}"))
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""]);
        let mut proc = Proc::spawn(
            "pebble-challtestsrv",
            &mut cmd,
            dir.path().join("challtestsrv.log"),
        );
        wait_tcp(&mut proc, mgmt_port, "management");
        wait_tcp(&mut proc, dns_port, "DNS");
        Self {
            dns_addr: format!("127.0.0.1:{dns_port}"),
            management_url: format!("http://127.0.0.1:{mgmt_port}"),
            http: reqwest::Client::new(),
            _proc: proc,
            _dir: dir,
        }
    }

    /// Adds a TXT value at `host` (a trailing dot is added when missing).
    pub async fn set_txt(&self, host: &str, value: &str) {
        self.post(
            "set-txt",
            serde_json::json!({"host": fqdn(host), "value": value}),
        )
        .await;
    }

    /// Removes every TXT value at `host`.
    pub async fn clear_txt(&self, host: &str) {
        self.post("clear-txt", serde_json::json!({"host": fqdn(host)}))
            .await;
    }

    async fn post(&self, path: &str, body: serde_json::Value) {
        let r = self
            .http
            .post(format!("{}/{path}", self.management_url))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(
            r.status().is_success(),
            "challtestsrv /{path}: {}",
            r.status()
        );
    }
}

fn fqdn(host: &str) -> String {
    if host.ends_with('.') {
        host.to_owned()
    } else {
        format!("{host}.")
    }
}

// -------------------------------------------------------------------------------------- pebble

/// How to run pebble.
#[derive(Clone, Debug)]
pub struct PebbleOptions {
    /// The DNS server its VA asks (`127.0.0.1:port` of a [`Bind`] or [`ChallTestSrv`]).
    pub dns_server: String,
    /// Require External Account Binding with these `(kid, base64url HMAC key)` pairs.
    pub eab: Option<Vec<(String, String)>>,
    /// `PEBBLE_WFE_NONCEREJECT`: percent of valid nonces rejected (pebble's default is 5).
    pub nonce_reject_percent: u8,
    /// `PEBBLE_AUTHZREUSE`: percent of valid authorizations reused (pebble's default is 50;
    /// 0 here, so each order needs its own validation).
    pub authz_reuse_percent: u8,
    /// `PEBBLE_ALTERNATE_ROOTS`: number of alternate chains offered.
    pub alternate_roots: u8,
    /// Let the VA sleep 0–5 s before each lookup (pebble's default; off here), so that tests
    /// can act while an order waits for validation.
    pub va_sleep: bool,
    /// `certificateValidityPeriod` (seconds) of the issued certificates (pebble's default: 5
    /// years).
    pub validity_seconds: Option<u64>,
}

impl PebbleOptions {
    /// Pebble resolving through `dns_server`, no EAB, no nonce rejection, no authz reuse.
    pub fn new(dns_server: &str) -> Self {
        Self {
            dns_server: dns_server.to_owned(),
            eab: None,
            nonce_reject_percent: 0,
            authz_reuse_percent: 0,
            alternate_roots: 0,
            va_sleep: false,
            validity_seconds: None,
        }
    }
}

/// A running pebble.
pub struct Pebble {
    /// The ACME directory URL.
    pub directory_url: String,
    /// The management interface (`https://127.0.0.1:<port>`).
    pub management_url: String,
    /// The CA certificate (PEM) that signed pebble's HTTPS certificate: the trust root for the
    /// ACME client's TLS. Not the issuing root.
    pub tls_ca_pem: String,
    http: reqwest::Client,
    proc: Proc,
    dir: TempDir,
}

impl Pebble {
    /// Starts pebble with `opts` (VA sleep off: `PEBBLE_VA_NOSLEEP=1`) and waits until its
    /// directory answers.
    pub async fn start(opts: &PebbleOptions) -> Self {
        let bin = binary("pebble", "pebble");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (ca_pem, cert_pem, key_pem) = tls_material();
        fs::write(d.join("ca.pem"), &ca_pem).unwrap();
        fs::write(d.join("cert.pem"), &cert_pem).unwrap();
        fs::write(d.join("key.pem"), &key_pem).unwrap();
        let port = free_port();
        let mgmt = free_port();
        let mac_keys: serde_json::Map<String, serde_json::Value> = opts
            .eab
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        let mut config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{port}"),
                "managementListenAddress": format!("127.0.0.1:{mgmt}"),
                "certificate": d.join("cert.pem"),
                "privateKey": d.join("key.pem"),
                "httpPort": free_port(),
                "tlsPort": free_port(),
                "ocspResponderURL": "",
                "externalAccountBindingRequired": opts.eab.is_some(),
                "externalAccountMACKeys": mac_keys,
            }
        });
        if let Some(v) = opts.validity_seconds {
            config["pebble"]["certificateValidityPeriod"] = serde_json::json!(v);
        }
        let conf_path = d.join("pebble.json");
        fs::write(&conf_path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        let mut cmd = Command::new(bin);
        cmd.arg("-config")
            .arg(&conf_path)
            .arg("-dnsserver")
            .arg(&opts.dns_server)
            .current_dir(d)
            .env_remove("PEBBLE_VA_NOSLEEP")
            .env("PEBBLE_VA_ALWAYS_VALID", "0")
            .env(
                "PEBBLE_WFE_NONCEREJECT",
                opts.nonce_reject_percent.to_string(),
            )
            .env("PEBBLE_AUTHZREUSE", opts.authz_reuse_percent.to_string())
            .env("PEBBLE_ALTERNATE_ROOTS", opts.alternate_roots.to_string());
        if !opts.va_sleep {
            cmd.env("PEBBLE_VA_NOSLEEP", "1");
        }
        let mut proc = Proc::spawn("pebble", &mut cmd, d.join("pebble.log"));
        wait_tcp(&mut proc, port, "ACME");
        wait_tcp(&mut proc, mgmt, "management");
        let http = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap()])
            .build()
            .unwrap();
        let directory_url = format!("https://127.0.0.1:{port}/dir");
        let mut last: String;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match http.get(&directory_url).send().await {
                Ok(r) if r.status().is_success() => break,
                Ok(r) => last = format!("HTTP {}", r.status()),
                Err(e) => last = e.to_string(),
            }
            if Instant::now() > deadline {
                proc.fail(&format!("directory did not answer within 20 s ({last})"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Self {
            directory_url,
            management_url: format!("https://127.0.0.1:{mgmt}"),
            tls_ca_pem: ca_pem,
            http,
            proc,
            dir,
        }
    }

    /// The issuing root `i` (0: the default chain's) from the management interface, PEM.
    pub async fn root_pem(&self, i: usize) -> String {
        self.mgmt_get(&format!("roots/{i}")).await
    }

    /// The intermediate `i` from the management interface, PEM.
    pub async fn intermediate_pem(&self, i: usize) -> String {
        self.mgmt_get(&format!("intermediates/{i}")).await
    }

    async fn mgmt_get(&self, path: &str) -> String {
        let r = self
            .http
            .get(format!("{}/{path}", self.management_url))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "pebble /{path}: {}", r.status());
        r.text().await.unwrap()
    }

    /// pebble's log so far.
    pub fn log(&self) -> String {
        self.proc.log_text()
    }

    /// How many orders pebble created (counted in its log: one "Added order" line each).
    pub fn orders_created(&self) -> usize {
        self.log().matches("Added order").count()
    }

    /// pebble's temporary directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// A throwaway CA and a leaf for `localhost` / `127.0.0.1` signed by it (rustls refuses a
/// self-signed CA certificate used as a server certificate). Returns (CA, leaf, leaf key) PEM.
pub fn tls_material() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "certvault test TLS CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    leaf.subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
    (ca_cert.pem(), leaf_cert.pem(), leaf_key.serialize_pem())
}

// ------------------------------------------------------------------------------------- openssl

/// `openssl verify -CAfile root -untrusted <intermediates> leaf` on a PEM chain (leaf first).
/// Returns openssl's output; panics when verification fails.
pub fn openssl_verify(chain_pem: &str, root_pem: &str) -> String {
    let openssl = binary("openssl", "openssl");
    let dir = tempfile::tempdir().unwrap();
    let blocks: Vec<&str> = chain_pem
        .split_inclusive("-----END CERTIFICATE-----")
        .map(str::trim)
        .filter(|b| b.contains("BEGIN CERTIFICATE"))
        .collect();
    assert!(!blocks.is_empty(), "no certificate in the chain");
    let leaf = dir.path().join("leaf.pem");
    let inter = dir.path().join("inter.pem");
    let root = dir.path().join("root.pem");
    fs::write(&leaf, format!("{}\n", blocks[0])).unwrap();
    fs::write(&inter, blocks[1..].join("\n") + "\n").unwrap();
    fs::write(&root, root_pem).unwrap();
    let mut cmd = Command::new(openssl);
    cmd.arg("verify").arg("-CAfile").arg(&root);
    if blocks.len() > 1 {
        cmd.arg("-untrusted").arg(&inter);
    }
    let out = cmd.arg(&leaf).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "openssl verify failed: {text}");
    text
}

/// The DNS names in the leaf's subjectAltName, as `openssl x509 -ext subjectAltName` prints
/// them, sorted.
pub fn openssl_sans(chain_pem: &str) -> Vec<String> {
    let openssl = binary("openssl", "openssl");
    let dir = tempfile::tempdir().unwrap();
    let leaf = dir.path().join("leaf.pem");
    fs::write(&leaf, chain_pem).unwrap();
    let out = Command::new(openssl)
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
        .arg(&leaf)
        .output()
        .unwrap();
    assert!(out.status.success(), "openssl x509 failed: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut names: Vec<String> = text
        .split([',', '\n'])
        .filter_map(|p| p.trim().strip_prefix("DNS:").map(str::to_owned))
        .collect();
    names.sort();
    names
}

// ------------------------------------------------------------------------------------ postgres

/// Where Debian's PostgreSQL 15 server binaries live (package `postgresql`).
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

fn pg_binary(name: &str) -> PathBuf {
    let p = Path::new(PG_BIN).join(name);
    if !p.is_file() {
        panic!(
            "required test binary `{}` not found: install PostgreSQL 15 with \
             `apt-get install -y postgresql` (scripts/test-all.sh does this); this test does not skip",
            p.display()
        );
    }
    p
}

/// The uid and gid of the `postgres` user, when running as root (PostgreSQL refuses to run as
/// root); `None` when not root (the server then runs as the current user).
fn postgres_ids() -> Option<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    let me = fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(1);
    if me != 0 {
        return None;
    }
    let passwd = fs::read_to_string("/etc/passwd").unwrap();
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() > 3 && f[0] == "postgres" {
            return Some((f[2].parse().unwrap(), f[3].parse().unwrap()));
        }
    }
    panic!(
        "running as root but there is no `postgres` user: install PostgreSQL with \
         `apt-get install -y postgresql` (it creates the user); this test does not skip"
    );
}

fn as_postgres(cmd: &mut Command, ids: Option<(u32, u32)>) -> &mut Command {
    use std::os::unix::process::CommandExt;
    if let Some((uid, gid)) = ids {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

/// A private PostgreSQL 15 server: `initdb` into a temporary directory, `postgres` on a free
/// loopback port with its socket in that directory and durability off (`fsync=off`: test data
/// only), trust authentication for the `postgres` role. Stopped (immediate shutdown) on drop.
///
/// Tests share one server per test process through [`Postgres::shared`] and take a database
/// each ([`Postgres::database`]), so they run in parallel without seeing each other's rows.
pub struct Postgres {
    proc: Proc,
    /// Stops the server and removes its directory when this test process is gone, even if it
    /// never dropped it (a server kept in a static, a test process killed).
    watchdog: Child,
    port: u16,
    ids: Option<(u32, u32)>,
    /// Extra `-c name=value` settings (kept for [`Postgres::start_again`]).
    settings: Vec<(String, String)>,
    _dir: TempDir,
}

/// Starts `postgres` on `dir/data` at `port` (logging to `dir/log_name`) and its watchdog.
fn launch_postgres(
    dir: &Path,
    port: u16,
    ids: Option<(u32, u32)>,
    settings: &[(String, String)],
    log_name: &str,
) -> (Proc, Child) {
    let postgres = pg_binary("postgres");
    let data = dir.join("data");
    let log = dir.join(log_name);
    let mut cmd = Command::new(&postgres);
    as_postgres(&mut cmd, ids)
        .arg("-D")
        .arg(&data)
        .args(["-p", &port.to_string(), "-h", "127.0.0.1", "-k"])
        .arg(dir)
        .args([
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "max_connections=200",
            "-c",
            "shared_buffers=32MB",
        ]);
    for (k, v) in settings {
        cmd.arg("-c").arg(format!("{k}={v}"));
    }
    // The log file is created by us (root) and written by the server through its stdout.
    let proc = Proc::spawn("postgres", &mut cmd, log);
    let watchdog = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "while kill -0 {me} 2>/dev/null; do sleep 1; done; kill -QUIT {pg} 2>/dev/null; \
             while kill -0 {pg} 2>/dev/null; do sleep 0.2; done; rm -rf '{dir}'",
            me = std::process::id(),
            pg = proc.child.id(),
            dir = dir.display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start the PostgreSQL watchdog: {e}"));
    (proc, watchdog)
}

impl Postgres {
    /// Stops the server (fast shutdown: sessions are cut, the data is checkpointed), keeping
    /// its data directory and port for [`Postgres::start_again`].
    pub fn stop(&mut self) {
        let _ = self.watchdog.kill();
        let _ = self.watchdog.wait();
        let pid = self.proc.child.id().to_string();
        let _ = Command::new("kill").args(["-INT", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.proc.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.proc.fail("did not stop within 30 s");
    }

    /// Starts the server stopped by [`Postgres::stop`] again on the same port and data
    /// directory; returns once it accepts sessions.
    pub fn start_again(&mut self) {
        let (proc, watchdog) = launch_postgres(
            self._dir.path(),
            self.port,
            self.ids,
            &self.settings,
            "postgres-again.log",
        );
        self.proc = proc;
        self.watchdog = watchdog;
        wait_tcp(&mut self.proc, self.port, "PostgreSQL");
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.psql("postgres", "SELECT 1").is_err() {
            if Instant::now() > deadline {
                self.proc
                    .fail("did not accept sessions within 30 s after a restart");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts a new server (a few seconds: initdb, then start-up).
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// As [`Self::start`], with extra `-c name=value` settings given after the test defaults
    /// (a later setting wins), e.g. `("fsync", "on")` for a durable server in a benchmark.
    pub fn start_with(settings: &[(&str, &str)]) -> Self {
        let initdb = pg_binary("initdb");
        let ids = postgres_ids();
        let dir = tempfile::Builder::new()
            .prefix("certvault-pg-")
            .tempdir()
            .unwrap();
        if let Some((uid, gid)) = ids {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        let data = dir.path().join("data");
        let out = as_postgres(&mut Command::new(&initdb), ids)
            .args(["-D"])
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "--no-locale",
                "-E",
                "UTF8",
                "--no-sync",
            ])
            .env("TZ", "UTC")
            .output()
            .unwrap_or_else(|e| panic!("cannot run initdb: {e}"));
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let settings: Vec<(String, String)> = settings
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let (mut proc, watchdog) =
            launch_postgres(dir.path(), port, ids, &settings, "postgres.log");
        wait_tcp(&mut proc, port, "PostgreSQL");
        let pg = Self {
            proc,
            watchdog,
            port,
            ids,
            settings,
            _dir: dir,
        };
        // Ready once it accepts a real session (TCP opens during recovery already).
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if pg.psql("postgres", "SELECT 1").is_ok() {
                break;
            }
            if Instant::now() > deadline {
                let mut proc = pg;
                proc.proc.fail("did not accept sessions within 30 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        pg
    }

    /// The server shared by this test process, started on first use and stopped when the last
    /// holder drops it.
    pub fn shared() -> std::sync::Arc<Self> {
        use std::sync::{Arc, Mutex, Weak};
        static SHARED: Mutex<Weak<Postgres>> = Mutex::new(Weak::new());
        let mut slot = SHARED.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(pg) = slot.upgrade() {
            return pg;
        }
        let pg = Arc::new(Self::start());
        *slot = Arc::downgrade(&pg);
        pg
    }

    /// The process id of the postmaster (its backends are its children).
    pub fn pid(&self) -> u32 {
        self.proc.child.id()
    }

    /// The server's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of database `db` as the `postgres` role.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Runs one SQL command with `psql` in database `db`; its output, or the error text.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let out = as_postgres(&mut Command::new(pg_psql()), self.ids)
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
            ])
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                db,
                "-c",
                sql,
            ])
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Creates a fresh, empty database with a unique name; returns its URL.
    pub fn database(&self) -> String {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!(
            "cv_{}_{n}_{}",
            std::process::id(),
            hex_lower(&random_bytes(4))
        );
        self.psql("postgres", &format!("CREATE DATABASE {name}"))
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name} failed: {e}"));
        self.url(&name)
    }

    /// The server's data directory (tables, WAL).
    pub fn data_dir(&self) -> PathBuf {
        self._dir.path().join("data")
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        self.proc.log_text()
    }
}

fn pg_psql() -> PathBuf {
    // psql comes with postgresql-client-15, a dependency of `postgresql`.
    let p = Path::new(PG_BIN).join("psql");
    if p.is_file() {
        p
    } else {
        binary("psql", "postgresql")
    }
}

fn hex_lower(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.watchdog.kill();
        let _ = self.watchdog.wait();
        // Immediate shutdown (SIGQUIT): the postmaster takes its backends down with it.
        let pid = self.proc.child.id().to_string();
        let _ = Command::new("kill").args(["-QUIT", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.proc.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Proc's own drop kills whatever is left.
    }
}

/// The database the server integration tests run against for the data directory `dir`, from
/// `CERTVAULT_TEST_DATABASE`: unset or `sqlite` → `None` (SQLite in the data directory);
/// `postgres` → a database on this test process's private PostgreSQL server, the same one
/// each time for the same `dir` (a restarted server finds its data), a fresh one for a new
/// `dir`. The server is kept for the life of the process (its watchdog stops it when the
/// process ends). Anything else is a panic.
pub fn test_database(dir: &Path) -> Option<String> {
    use std::collections::HashMap;
    use std::sync::Mutex;
    static DATABASES: Mutex<Option<HashMap<PathBuf, String>>> = Mutex::new(None);
    match std::env::var("CERTVAULT_TEST_DATABASE").as_deref() {
        Err(_) | Ok("" | "sqlite") => None,
        Ok("postgres") => {
            let mut dbs = DATABASES.lock().unwrap_or_else(|p| p.into_inner());
            let url = dbs
                .get_or_insert_with(HashMap::new)
                .entry(dir.to_owned())
                .or_insert_with(|| test_server().database())
                .clone();
            Some(url)
        }
        Ok(other) => panic!("CERTVAULT_TEST_DATABASE must be sqlite or postgres, not {other:?}"),
    }
}

/// The PostgreSQL server of [`test_database`], started on first use.
fn test_server() -> &'static std::sync::Arc<Postgres> {
    static SERVER: std::sync::OnceLock<std::sync::Arc<Postgres>> = std::sync::OnceLock::new();
    SERVER.get_or_init(Postgres::shared)
}

/// When `CERTVAULT_TEST_DATABASE=postgres`: the data directory of the PostgreSQL server the
/// databases of [`test_database`] live in (to scan its files); `None` otherwise.
pub fn test_database_dir() -> Option<PathBuf> {
    match std::env::var("CERTVAULT_TEST_DATABASE").as_deref() {
        Ok("postgres") => Some(test_server().data_dir()),
        _ => None,
    }
}
