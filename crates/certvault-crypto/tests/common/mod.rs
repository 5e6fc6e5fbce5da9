//! Shared helpers for the integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use certvault_crypto::{CertParams, KeyAlg, KeyUsage, PrivateKey};

pub const FIXTURE_PASS: &str = "Fixture-Pass1";

pub fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixture_path(name)).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

/// DER of the single certificate in a PEM fixture.
pub fn fixture_cert(name: &str) -> Vec<u8> {
    let b = certvault_crypto::parse_pem(&fixture(name)).unwrap();
    assert_eq!(b.certs.len(), 1);
    b.certs[0].clone()
}

pub fn rsa2048() -> PrivateKey {
    PrivateKey::generate(KeyAlg::Rsa(2048)).unwrap()
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

pub fn params(subject: &str) -> CertParams {
    let nb = now() - 60;
    CertParams {
        subject: subject.to_string(),
        dns_names: vec!["www.example.com".into()],
        key_usage: vec![KeyUsage::DigitalSignature, KeyUsage::KeyEncipherment],
        ekus: vec!["1.3.6.1.5.5.7.3.1".into()],
        not_before: nb,
        not_after: nb + 365 * 86400,
        ..CertParams::default()
    }
}

pub fn ca_params(subject: &str) -> CertParams {
    let nb = now() - 60;
    CertParams {
        subject: subject.to_string(),
        key_usage: vec![
            KeyUsage::KeyCertSign,
            KeyUsage::CrlSign,
            KeyUsage::DigitalSignature,
        ],
        is_ca: true,
        not_before: nb,
        not_after: nb + 10 * 365 * 86400,
        ..CertParams::default()
    }
}

/// Fails the test loudly when the openssl CLI is missing (the test command installs it).
pub fn require_openssl() {
    let ok = Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "the openssl CLI is required: run scripts/test-all.sh, which installs it"
    );
}

/// The Python interpreter with `cryptography`: `CERTVAULT_TEST_PYTHON` (set by the test
/// command to its venv), else `python3`.
pub fn python_bin() -> String {
    std::env::var("CERTVAULT_TEST_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

/// Fails the test loudly when Python's `cryptography` package is missing.
pub fn require_python_cryptography() {
    let ok = Command::new(python_bin())
        .args(["-c", "import cryptography"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "Python with the cryptography package is required: run scripts/test-all.sh (it sets \
         CERTVAULT_TEST_PYTHON to its venv), or set CERTVAULT_TEST_PYTHON"
    );
}

/// Runs `python3 -c script` with `stdin` piped in; returns (success, stdout+stderr).
pub fn python(script: &str, stdin: &[u8]) -> (bool, String) {
    let mut child = Command::new(python_bin())
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
