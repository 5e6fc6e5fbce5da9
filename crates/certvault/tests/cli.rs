//! The binary end to end: `certvault serve` in a child process, driven by the `certvault cert`
//! client commands.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_certvault");

struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(dir: &Path) -> Server {
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--base-domain",
            "cli.test",
        ])
        .arg("--data-dir")
        .arg(dir)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            if let Some(url) = line.strip_prefix("certvault listening on ") {
                return Server {
                    child,
                    url: url.trim().to_owned(),
                };
            }
            seen.push(line);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("server did not start: {seen:?}");
}

fn cli(srv: &Server, dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env("CERTVAULT_URL", &srv.url)
        .env("CERTVAULT_TOKEN_FILE", dir.join("admin.token"))
        .env("CERTVAULT_CACERT", dir.join("tls/ca.pem"))
        .env_remove("CERTVAULT_TOKEN")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn create_list_download_import_delete() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let srv = serve(&dir);
    assert!(dir.join("master.key").exists() && dir.join("tls/ca.pem").exists());

    let (ok, out, err) = cli(
        &srv,
        &dir,
        &[
            "cert",
            "create",
            "web",
            "--subject",
            "CN=web.example.test",
            "--dns",
            "web.example.test",
            "--key-type",
            "EC",
            "--tag",
            "env=test",
        ],
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("issuer:      Self") && out.contains("env=test"),
        "{out}"
    );

    let (ok, out, err) = cli(&srv, &dir, &["cert", "list", "--json"]);
    assert!(ok, "{err}");
    let items: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(items.as_array().unwrap().len(), 1);
    assert!(
        items[0]["id"]
            .as_str()
            .unwrap()
            .ends_with("/certificates/web")
    );

    // download as PFX, then import that PFX under a new name
    let pfx = tmp.path().join("web.pfx");
    let (ok, _, err) = cli(
        &srv,
        &dir,
        &[
            "cert",
            "download",
            "web",
            "--format",
            "pfx",
            "--out",
            pfx.to_str().unwrap(),
        ],
    );
    assert!(ok, "{err}");
    let bundle = certvault_crypto::parse_pfx(&std::fs::read(&pfx).unwrap(), "").unwrap();
    assert!(bundle.key.is_some() && bundle.certs.len() == 1);
    let (ok, out, err) = cli(
        &srv,
        &dir,
        &["cert", "import", "copy", "--file", pfx.to_str().unwrap()],
    );
    assert!(ok, "{err}");
    assert!(out.contains("issuer:      Unknown"), "{out}");

    // the PEM download carries the same key
    let (ok, pem, err) = cli(&srv, &dir, &["cert", "download", "copy", "--format", "pem"]);
    assert!(ok, "{err}");
    let pem_bundle = certvault_crypto::parse_pem(pem.as_bytes()).unwrap();
    assert_eq!(
        pem_bundle.key.unwrap().public_key().spki_der(),
        bundle.key.unwrap().public_key().spki_der()
    );

    let (ok, out, err) = cli(&srv, &dir, &["cert", "versions", "web"]);
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 2, "{out}");

    let (ok, _, err) = cli(&srv, &dir, &["cert", "delete", "web", "--purge"]);
    assert!(ok, "{err}");
    let (ok, _, err) = cli(&srv, &dir, &["cert", "get", "web"]);
    assert!(!ok);
    assert!(err.contains("404 CertificateNotFound"), "{err}");

    // a wrong token is refused with the server's message
    let out = Command::new(BIN)
        .args(["cert", "list"])
        .env("CERTVAULT_URL", &srv.url)
        .env("CERTVAULT_TOKEN", "wrong")
        .env("CERTVAULT_CACERT", dir.join("tls/ca.pem"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401 Unauthorized"));
}

#[test]
fn serve_refuses_bad_settings() {
    let tmp = tempfile::tempdir().unwrap();
    for args in [
        vec!["serve", "--base-domain", "bad domain"],
        vec!["serve", "--recoverable-days", "3"],
        vec!["serve", "--listen", "not-an-address"],
    ] {
        let out = Command::new(BIN)
            .args(&args)
            .arg("--data-dir")
            .arg(tmp.path().join("d"))
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
    }
    let cfg = tmp.path().join("c.toml");
    std::fs::write(&cfg, "unknown_key = 1\n").unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field"));
}

#[test]
fn key_commands_sign_verify_encrypt_decrypt_wrap_unwrap() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let srv = serve(&dir);
    let (ok, _, err) = cli(
        &srv,
        &dir,
        &[
            "cert",
            "create",
            "k",
            "--subject",
            "CN=k.example.test",
            "--key-usage",
            "digitalSignature",
            "--key-usage",
            "keyEncipherment",
            "--key-usage",
            "dataEncipherment",
        ],
    );
    assert!(ok, "{err}");
    let (ok, out, err) = cli(&srv, &dir, &["key", "get", "k"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("key_ops:     sign, verify, encrypt, decrypt, wrapKey, unwrapKey"),
        "{out}"
    );

    let data = tmp.path().join("data.bin");
    std::fs::write(&data, b"hello certvault").unwrap();
    let (ok, sig, err) = cli(
        &srv,
        &dir,
        &[
            "key",
            "sign",
            "k",
            "--alg",
            "PS256",
            "--in",
            data.to_str().unwrap(),
        ],
    );
    assert!(ok, "{err}");
    let sig = sig.trim().to_owned();
    let (ok, out, err) = cli(
        &srv,
        &dir,
        &[
            "key",
            "verify",
            "k",
            "--alg",
            "PS256",
            "--in",
            data.to_str().unwrap(),
            "--signature",
            &sig,
        ],
    );
    assert!(ok && out.trim() == "valid", "{out}{err}");
    std::fs::write(&data, b"tampered").unwrap();
    let (ok, out, _) = cli(
        &srv,
        &dir,
        &[
            "key",
            "verify",
            "k",
            "--alg",
            "PS256",
            "--in",
            data.to_str().unwrap(),
            "--signature",
            &sig,
        ],
    );
    assert!(!ok && out.trim() == "invalid", "{out}");

    let secret = tmp.path().join("secret.bin");
    std::fs::write(&secret, b"a data key").unwrap();
    for (enc, dec, alg) in [
        ("encrypt", "decrypt", "RSA-OAEP-256"),
        ("wrap", "unwrap", "RSA-OAEP"),
    ] {
        let (ok, ct, err) = cli(
            &srv,
            &dir,
            &[
                "key",
                enc,
                "k",
                "--alg",
                alg,
                "--in",
                secret.to_str().unwrap(),
            ],
        );
        assert!(ok, "{err}");
        let out = tmp.path().join(format!("{dec}.bin"));
        let (ok, _, err) = cli(
            &srv,
            &dir,
            &[
                "key",
                dec,
                "k",
                "--alg",
                alg,
                "--value",
                ct.trim(),
                "--out",
                out.to_str().unwrap(),
            ],
        );
        assert!(ok, "{err}");
        assert_eq!(std::fs::read(&out).unwrap(), b"a data key");
    }

    // An EC key only signs: encrypt is refused with the server's 403.
    let (ok, _, err) = cli(
        &srv,
        &dir,
        &[
            "cert",
            "create",
            "e",
            "--subject",
            "CN=e.example.test",
            "--key-type",
            "EC",
        ],
    );
    assert!(ok, "{err}");
    let (ok, _, err) = cli(
        &srv,
        &dir,
        &[
            "key", "encrypt", "e", "--alg", "RSA-OAEP", "--value", "AAAA",
        ],
    );
    assert!(!ok);
    assert!(err.contains("403 Forbidden"), "{err}");
}

#[test]
fn vaults_principals_tokens_and_policies() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let srv = serve(&dir);
    let (ok, out, err) = cli(
        &srv,
        &dir,
        &["vault", "create", "team", "--recoverable-days", "30"],
    );
    assert!(ok, "{err}");
    assert!(out.contains("https://team.cli.test:"), "{out}");
    let (ok, out, err) = cli(&srv, &dir, &["principal", "create", "reader", "--json"]);
    assert!(ok, "{err}");
    let created: serde_json::Value = serde_json::from_str(&out).unwrap();
    let token = created["token"]["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("cvt_"));
    let (ok, _, err) = cli(
        &srv,
        &dir,
        &[
            "policy",
            "set",
            "--vault",
            "default",
            "--principal",
            "reader",
            "--certificates",
            "get,list",
        ],
    );
    assert!(ok, "{err}");
    let (ok, out, err) = cli(&srv, &dir, &["policy", "list", "--vault", "default"]);
    assert!(
        ok && out.contains("reader") && out.contains("get,list"),
        "{out}{err}"
    );

    let as_reader = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(args)
            .env("CERTVAULT_URL", &srv.url)
            .env("CERTVAULT_TOKEN", &token)
            .env("CERTVAULT_CACERT", dir.join("tls/ca.pem"))
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = as_reader(&["cert", "list"]);
    assert!(ok, "{err}");
    let (ok, err) = as_reader(&["cert", "create", "x", "--subject", "CN=x"]);
    assert!(
        !ok && err.contains("403 Forbidden") && err.contains("certificates/create"),
        "{err}"
    );
    let (ok, err) = as_reader(&["principal", "list"]);
    assert!(!ok && err.contains("not an administrator"), "{err}");

    // revoking the token (and disabling the principal) locks it out at once
    let (ok, out, err) = cli(&srv, &dir, &["principal", "token-list", "reader", "--json"]);
    assert!(ok, "{err}");
    let tokens: serde_json::Value = serde_json::from_str(&out).unwrap();
    let id = tokens["tokens"][0]["id"].to_string();
    let (ok, _, err) = cli(&srv, &dir, &["principal", "token-revoke", "reader", &id]);
    assert!(ok, "{err}");
    let (ok, err) = as_reader(&["cert", "list"]);
    assert!(!ok && err.contains("401"), "{err}");

    // the last administrator cannot be disabled
    let (ok, _, err) = cli(&srv, &dir, &["principal", "disable", "admin"]);
    assert!(!ok && err.contains("last enabled administrator"), "{err}");

    // vault soft delete, recover, delete, purge
    for (args, want) in [
        (vec!["vault", "delete", "team"], true),
        (vec!["vault", "get", "team"], false),
        (vec!["vault", "recover", "team"], true),
        (vec!["vault", "get", "team"], true),
        (vec!["vault", "delete", "team"], true),
        (vec!["vault", "purge", "team"], true),
        (vec!["vault", "recover", "team"], false),
        (vec!["vault", "delete", "default"], false),
    ] {
        let (ok, out, err) = cli(&srv, &dir, &args);
        assert_eq!(ok, want, "{args:?}: {out}{err}");
    }
}
