//! certvault-hsm against a real SoftHSM2 token.
//!
//! SoftHSM2 reads its configuration (where tokens live) from `SOFTHSM2_CONF` when the module
//! is initialised. Setting an environment variable inside a running test process is `unsafe`
//! in edition 2024 (and the workspace forbids `unsafe`), so this test binary has its own
//! `main` (`harness = false`) and runs in two stages:
//!
//! 1. launcher: makes a temp dir with a `softhsm2.conf` whose `directories.tokendir` points
//!    into it, initialises the tokens with `softhsm2-util --init-token --free`, then runs
//!    itself again with `SOFTHSM2_CONF` set (`Command::env`, no `unsafe`) and returns the
//!    child's exit status; the temp dir is removed afterwards;
//! 2. child: runs every test below, in parallel threads, and reports like libtest.
//!
//! Nothing is skipped: a missing `softhsm2-util` or module is a failure.
//! Arguments: substrings select tests by name (`cargo test -p certvault-hsm -- aes`);
//! `--list` lists them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use certvault_crypto::{
    CertParams, CryptoError, Curve, EncAlg, Jwk, KeyAlg, KeyUsage, PrivateKey, SignAlg, sha256,
};
use certvault_hsm::{Hsm, HsmConfig, HsmError, KeyRef, read_pin};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::object::{Attribute, AttributeType, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use zeroize::Zeroizing;

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// Marks the child process; holds the temp dir.
const CHILD_ENV: &str = "CERTVAULT_HSM_TEST_DIR";
/// A PIN handed to the child through its environment, for `read_pin`'s env source.
const PIN_ENV: &str = "CERTVAULT_HSM_TEST_PIN";
const TOKEN: &str = "certvault-test";
/// Only the wrong-PIN test logs in here (PKCS#11 login state is per process and token).
const PIN_TOKEN: &str = "certvault-pin";
const SO_PIN: &str = "so-12345678";
const PIN: &str = "user-1234";

type TestFn = fn();

/// `[(name, fn)]` from function names.
macro_rules! tests {
    ($($f:ident),* $(,)?) => {
        &[$((stringify!($f), $f as TestFn)),*]
    };
}

const TESTS: &[(&str, TestFn)] = tests![
    rsa_key_is_protected_and_matches,
    ec_keys_are_protected_and_match,
    rsa_sign_all_algs,
    ec_sign_all_curves,
    sign_parameter_errors,
    decrypt_all_algs,
    certificates_signed_in_token,
    aes_master_key,
    key_ref_round_trip,
    wrong_pin,
    unknown_token_and_module,
    pin_sources,
    concurrent_use,
    destroy_removes_key,
];

/// Run after the parallel ones, one at a time: they search the token through their own
/// cryptoki handle, outside the library's lock, which SoftHSM2 does not tolerate while other
/// threads create objects, or they log the whole process out.
const SEQUENTIAL: &[(&str, TestFn)] = tests![
    raw_reads_see_no_key_material,
    login_again_after_logout,
    timings,
];

fn main() -> ExitCode {
    match std::env::var_os(CHILD_ENV) {
        None => launch(),
        Some(_) => run_tests(),
    }
}

// ---------------------------------------------------------------------------------------------
// Stage 1: SoftHSM2 setup, then re-run this binary with SOFTHSM2_CONF
// ---------------------------------------------------------------------------------------------

fn launch() -> ExitCode {
    assert!(
        Path::new(MODULE).is_file(),
        "SoftHSM2 module {MODULE} is missing: apt-get install softhsm2"
    );
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::create_dir(&tokens).unwrap();
    let conf = dir.path().join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n\
             slots.removable = false\n",
            tokens.display()
        ),
    )
    .unwrap();
    for label in [TOKEN, PIN_TOKEN] {
        let out = Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", &conf)
            .args(["--init-token", "--free", "--label", label])
            .args(["--so-pin", SO_PIN, "--pin", PIN])
            .output()
            .unwrap_or_else(|e| panic!("cannot run softhsm2-util ({e}): apt-get install softhsm2"));
        assert!(
            out.status.success(),
            "softhsm2-util --init-token failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let status = Command::new(std::env::current_exe().unwrap())
        .args(std::env::args_os().skip(1))
        .env("SOFTHSM2_CONF", &conf)
        .env(CHILD_ENV, dir.path())
        .env(PIN_ENV, format!("{PIN}\n"))
        .status()
        .unwrap();
    drop(dir);
    match status.code() {
        Some(0) => ExitCode::SUCCESS,
        _ => ExitCode::from(101),
    }
}

// ---------------------------------------------------------------------------------------------
// Stage 2: a small parallel test runner
// ---------------------------------------------------------------------------------------------

fn run_tests() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        for (name, _) in TESTS.iter().chain(SEQUENTIAL) {
            println!("{name}: test");
        }
        return ExitCode::SUCCESS;
    }
    // Positional arguments are name filters; libtest flags (and their values) are ignored.
    let mut filters = Vec::new();
    let mut skip_value = false;
    for a in &args {
        if skip_value {
            skip_value = false;
        } else if matches!(
            a.as_str(),
            "--test-threads" | "--skip" | "--format" | "--color" | "-Z"
        ) {
            skip_value = true;
        } else if !a.starts_with('-') {
            filters.push(a.clone());
        }
    }
    let select = |tests: &[(&'static str, TestFn)]| -> Vec<(&'static str, TestFn)> {
        tests
            .iter()
            .copied()
            .filter(|(name, _)| filters.is_empty() || filters.iter().any(|f| name.contains(f)))
            .collect()
    };
    let parallel = select(TESTS);
    let sequential = select(SEQUENTIAL);
    println!(
        "\nrunning {} tests (SoftHSM2)",
        parallel.len() + sequential.len()
    );
    let start = Instant::now();
    let spawn = |name: &'static str, f: TestFn| {
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                let t = Instant::now();
                f();
                t.elapsed()
            })
            .unwrap()
    };
    let mut failed = Vec::new();
    let mut report = |name: &str, r: std::thread::Result<Duration>| match r {
        Ok(took) => println!("test {name} ... ok ({} ms)", took.as_millis()),
        Err(_) => {
            println!("test {name} ... FAILED");
            failed.push(name.to_string());
        }
    };
    let handles: Vec<_> = parallel.iter().map(|&(n, f)| (n, spawn(n, f))).collect();
    for (name, h) in handles {
        report(name, h.join());
    }
    for &(name, f) in &sequential {
        report(name, spawn(name, f).join());
    }
    println!(
        "\ntest result: {}. {} failed; finished in {:.2}s\n",
        if failed.is_empty() { "ok" } else { "FAILED" },
        failed.len(),
        start.elapsed().as_secs_f64()
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        println!("failures: {}", failed.join(", "));
        ExitCode::from(101)
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn config(label: &str, pin: &str, pool_size: usize) -> HsmConfig {
    HsmConfig {
        module: PathBuf::from(MODULE),
        token_label: label.to_string(),
        pin: Zeroizing::new(pin.to_string()),
        pool_size,
    }
}

/// The token every test shares (one login for the process).
fn hsm() -> &'static Hsm {
    static HSM: OnceLock<Hsm> = OnceLock::new();
    HSM.get_or_init(|| Hsm::open(config(TOKEN, PIN, 4)).unwrap())
}

fn unique(prefix: &str) -> String {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{prefix}-{n}")
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn params(subject: &str) -> CertParams {
    let nb = now() - 60;
    CertParams {
        subject: subject.to_string(),
        dns_names: vec!["hsm.example.com".into()],
        key_usage: vec![KeyUsage::DigitalSignature, KeyUsage::KeyEncipherment],
        ekus: vec!["1.3.6.1.5.5.7.3.1".into()],
        not_before: nb,
        not_after: nb + 365 * 86400,
        ..CertParams::default()
    }
}

fn digest(alg: SignAlg, data: &[u8]) -> Vec<u8> {
    // Any bytes of the right length are a valid digest input.
    let base = sha256(data);
    base.iter()
        .cycle()
        .take(alg.digest_len())
        .copied()
        .collect()
}

/// Reads attributes of the key's private (or secret) object through an independent cryptoki
/// handle on the same module: what any other code in the process could see.
fn raw_attributes(key: &KeyRef, class: ObjectClass, types: &[AttributeType]) -> Vec<Attribute> {
    let session = raw_session(key.token());
    let objects = session
        .find_objects(&[Attribute::Class(class), Attribute::Id(key.id().to_vec())])
        .unwrap();
    assert_eq!(objects.len(), 1);
    session.get_attributes(objects[0], types).unwrap()
}

/// A logged-in session on `token` through an independent cryptoki handle.
fn raw_session(token: &str) -> cryptoki::session::Session {
    let ctx = Pkcs11::new(MODULE).unwrap();
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) => {}
        Err(cryptoki::error::Error::Pkcs11(
            cryptoki::error::RvError::CryptokiAlreadyInitialized,
            _,
        )) => {}
        Err(e) => panic!("{e}"),
    }
    let slot = ctx
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).unwrap().label() == token)
        .unwrap();
    let session = ctx.open_ro_session(slot).unwrap();
    match session.login(UserType::User, Some(&AuthPin::from(PIN))) {
        Ok(()) => {}
        Err(cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::UserAlreadyLoggedIn, _)) => {}
        Err(e) => panic!("{e}"),
    }
    session
}

/// Keys whose raw attributes `raw_reads_see_no_key_material` checks after the parallel phase.
fn raw_checks() -> &'static std::sync::Mutex<Vec<(KeyRef, ObjectClass)>> {
    static CHECKS: OnceLock<std::sync::Mutex<Vec<(KeyRef, ObjectClass)>>> = OnceLock::new();
    CHECKS.get_or_init(Default::default)
}

fn check_raw_later(key: &KeyRef, class: ObjectClass) {
    raw_checks().lock().unwrap().push((key.clone(), class));
}

fn assert_private_key_hidden(key: &KeyRef) {
    let attrs = raw_attributes(
        key,
        ObjectClass::PRIVATE_KEY,
        &[
            AttributeType::Value,
            AttributeType::PrivateExponent,
            AttributeType::Prime1,
            AttributeType::Sensitive,
            AttributeType::Extractable,
        ],
    );
    // The secret attributes are silently omitted; the flags are there.
    assert!(
        attrs.iter().all(|a| matches!(
            a,
            Attribute::Sensitive(true) | Attribute::Extractable(false)
        )),
        "{attrs:?}"
    );
    assert_eq!(attrs.len(), 2, "{attrs:?}");
}

fn assert_protected(key: &KeyRef) {
    let p = hsm().key_attributes(key).unwrap();
    assert!(p.sensitive, "{p:?}");
    assert!(!p.extractable, "{p:?}");
    assert!(p.never_extractable, "{p:?}");
    assert!(p.always_sensitive, "{p:?}");
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

fn rsa_key_is_protected_and_matches() {
    let hsm = hsm();
    let (key, public) = hsm.generate(KeyAlg::Rsa(2048), "rsa-protect").unwrap();
    assert_eq!(key.token(), TOKEN);
    assert_eq!(key.id().len(), 16);
    assert_eq!(public.alg(), KeyAlg::Rsa(2048));
    assert_protected(&key);
    check_raw_later(&key, ObjectClass::PRIVATE_KEY);
    assert_eq!(hsm.public_key(&key).unwrap(), public);
    match public.jwk() {
        Jwk::Rsa { n, e } => {
            assert_eq!(n.len(), 256);
            assert_eq!(e, vec![1, 0, 1]);
        }
        other => panic!("{other:?}"),
    }
    // A fresh Hsm (no cache) reads the same public key back from the token.
    let again = Hsm::open(config(TOKEN, PIN, 1)).unwrap();
    assert_eq!(again.public_key(&key).unwrap(), public);
    // The token's public key object is checked against the JWK later.
    check_raw_later(&key, ObjectClass::PUBLIC_KEY);
}

fn ec_keys_are_protected_and_match() {
    let hsm = hsm();
    for (curve, w) in [(Curve::P256, 32), (Curve::P384, 48), (Curve::P521, 66)] {
        let (key, public) = hsm.generate(KeyAlg::Ec(curve), "ec-protect").unwrap();
        assert_eq!(public.alg(), KeyAlg::Ec(curve));
        assert_protected(&key);
        check_raw_later(&key, ObjectClass::PRIVATE_KEY);
        let fresh = Hsm::open(config(TOKEN, PIN, 1)).unwrap();
        assert_eq!(fresh.public_key(&key).unwrap(), public);
        match public.jwk() {
            Jwk::Ec { crv, x, y } => {
                assert_eq!(crv, curve);
                assert_eq!((x.len(), y.len()), (w, w));
            }
            other => panic!("{other:?}"),
        }
    }
}

fn rsa_sign_all_algs() {
    let hsm = hsm();
    let (key, public) = hsm.generate(KeyAlg::Rsa(2048), "rsa-sign").unwrap();
    for alg in SignAlg::ALL.into_iter().filter(|a| a.is_rsa()) {
        let d = digest(alg, alg.as_str().as_bytes());
        let sig = hsm.sign(&key, alg, &d).unwrap();
        assert_eq!(sig.len(), 256, "{alg}");
        assert!(
            certvault_crypto::verify(&public, alg, &d, &sig).unwrap(),
            "{alg}"
        );
        let mut other = d.clone();
        other[0] ^= 1;
        assert!(
            !certvault_crypto::verify(&public, alg, &other, &sig).unwrap(),
            "{alg}"
        );
    }
    // PKCS#1 v1.5 is deterministic.
    let d = digest(SignAlg::RS256, b"x");
    assert_eq!(
        hsm.sign(&key, SignAlg::RS256, &d).unwrap(),
        hsm.sign(&key, SignAlg::RS256, &d).unwrap()
    );
}

fn ec_sign_all_curves() {
    let hsm = hsm();
    for (curve, alg, len) in [
        (Curve::P256, SignAlg::ES256, 64),
        (Curve::P384, SignAlg::ES384, 96),
        (Curve::P521, SignAlg::ES512, 132),
    ] {
        let (key, public) = hsm.generate(KeyAlg::Ec(curve), "ec-sign").unwrap();
        for i in 0..5u8 {
            let d = digest(alg, &[i]);
            let sig = hsm.sign(&key, alg, &d).unwrap();
            assert_eq!(sig.len(), len, "{alg}");
            assert!(
                certvault_crypto::verify(&public, alg, &d, &sig).unwrap(),
                "{alg}"
            );
        }
    }
}

fn sign_parameter_errors() {
    let hsm = hsm();
    let (rsa, _) = hsm.generate(KeyAlg::Rsa(2048), "rsa-errors").unwrap();
    let (ec, _) = hsm.generate(KeyAlg::Ec(Curve::P256), "ec-errors").unwrap();
    let bad = |r: Result<Vec<u8>, HsmError>, want: &str| match r {
        Err(HsmError::Crypto(CryptoError::BadParameter(m))) => {
            assert!(m.contains(want), "{m}")
        }
        other => panic!("expected BadParameter({want}), got {other:?}"),
    };
    bad(
        hsm.sign(&rsa, SignAlg::RS256, &[0; 31]),
        "must be 32 bytes, got 31",
    );
    bad(
        hsm.sign(&rsa, SignAlg::PS512, &[0; 32]),
        "must be 64 bytes, got 32",
    );
    bad(hsm.sign(&ec, SignAlg::ES256, &[0; 48]), "must be 32 bytes");
    bad(
        hsm.sign(&rsa, SignAlg::ES256, &[0; 32]),
        "requires an EC key",
    );
    bad(
        hsm.sign(&ec, SignAlg::RS256, &[0; 32]),
        "requires an RSA key",
    );
    bad(
        hsm.sign(&ec, SignAlg::PS256, &[0; 32]),
        "requires an RSA key",
    );
    bad(
        hsm.sign(&ec, SignAlg::ES384, &[0; 48]),
        "requires a P-384 key",
    );
    match hsm.decrypt(&ec, EncAlg::RsaOaep, &[0; 64]) {
        Err(HsmError::Crypto(CryptoError::BadParameter(m))) => {
            assert!(m.contains("requires an RSA key"), "{m}")
        }
        other => panic!("{other:?}"),
    }
    match hsm.decrypt(&rsa, EncAlg::RsaOaep, &[0; 255]) {
        Err(HsmError::Crypto(CryptoError::BadParameter(m))) => {
            assert!(m.contains("must be 256 bytes"), "{m}")
        }
        other => panic!("{other:?}"),
    }
    // Bad key parameters for generation.
    assert!(matches!(
        hsm.generate(KeyAlg::Rsa(1024), "x"),
        Err(HsmError::Crypto(CryptoError::BadParameter(_)))
    ));
    assert!(matches!(
        hsm.generate(KeyAlg::Ec(Curve::P256K), "x"),
        Err(HsmError::Crypto(CryptoError::Unsupported(_)))
    ));
    // A reference to another token, and to a key that does not exist.
    let foreign = KeyRef::new("other-token", rsa.id().to_vec()).unwrap();
    let e = hsm.sign(&foreign, SignAlg::RS256, &[0; 32]).unwrap_err();
    assert!(matches!(e, HsmError::BadKeyRef(_)), "{e}");
    assert!(e.to_string().contains("'other-token'"), "{e}");
    let missing = KeyRef::new(TOKEN, vec![0xee; 16]).unwrap();
    let e = hsm.sign(&missing, SignAlg::RS256, &[0; 32]).unwrap_err();
    assert!(matches!(e, HsmError::KeyNotFound { .. }), "{e}");
    assert_eq!(
        e.to_string(),
        format!("HSM key {missing} not found in the token")
    );
}

fn decrypt_all_algs() {
    let hsm = hsm();
    let (key, public) = hsm.generate(KeyAlg::Rsa(2048), "rsa-decrypt").unwrap();
    // SoftHSM2 2.6 does OAEP with SHA-1 only; RSA-OAEP-256 is refused at C_DecryptInit.
    for alg in [EncAlg::Rsa15, EncAlg::RsaOaep] {
        let msg = format!("secret for {alg}");
        let ct = certvault_crypto::encrypt(&public, alg, msg.as_bytes()).unwrap();
        let pt = hsm.decrypt(&key, alg, &ct).unwrap();
        assert_eq!(pt.as_slice(), msg.as_bytes(), "{alg}");
        // Longest plaintext.
        let long = vec![0x5a; alg.max_plaintext_len(256)];
        let ct = certvault_crypto::encrypt(&public, alg, &long).unwrap();
        assert_eq!(hsm.decrypt(&key, alg, &ct).unwrap().as_slice(), &long[..]);
    }
    let ct = certvault_crypto::encrypt(&public, EncAlg::RsaOaep256, b"abc").unwrap();
    let e = hsm.decrypt(&key, EncAlg::RsaOaep256, &ct).unwrap_err();
    assert!(matches!(e, HsmError::Unsupported(_)), "{e:?}");
    assert_eq!(
        e.to_string(),
        "the PKCS#11 token does not support RSA-OAEP-256 decryption \
         (C_DecryptInit answered CKR_ARGUMENTS_BAD)"
    );

    // Wrong algorithm and corrupt ciphertext fail as "decryption failed".
    let ct = certvault_crypto::encrypt(&public, EncAlg::Rsa15, b"abc").unwrap();
    let e = hsm.decrypt(&key, EncAlg::RsaOaep, &ct).unwrap_err();
    assert!(matches!(e, HsmError::Decrypt), "{e:?}");
    let ct = certvault_crypto::encrypt(&public, EncAlg::RsaOaep, b"abc").unwrap();
    let e = hsm.decrypt(&key, EncAlg::Rsa15, &ct).unwrap_err();
    assert!(matches!(e, HsmError::Decrypt), "{e:?}");
    let mut bad = ct.clone();
    bad[10] ^= 0xff;
    let e = hsm.decrypt(&key, EncAlg::RsaOaep, &bad).unwrap_err();
    assert!(matches!(e, HsmError::Decrypt), "{e:?}");
    // The sessions are still usable afterwards.
    assert_eq!(
        hsm.decrypt(&key, EncAlg::RsaOaep, &ct).unwrap().as_slice(),
        b"abc"
    );
}

fn openssl_req_verify(csr_der: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("req.der");
    std::fs::write(&path, csr_der).unwrap();
    let out = Command::new("openssl")
        .args(["req", "-verify", "-noout", "-inform", "DER", "-in"])
        .arg(&path)
        .output()
        .expect("openssl CLI (apt-get install openssl)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "openssl req -verify: {text}");
    assert!(text.contains("verify OK"), "{text}");
}

fn certificates_signed_in_token() {
    let hsm = hsm();
    for alg in [
        KeyAlg::Rsa(2048),
        KeyAlg::Ec(Curve::P256),
        KeyAlg::Ec(Curve::P384),
        KeyAlg::Ec(Curve::P521),
    ] {
        let (key, public) = hsm.generate(alg, "cert").unwrap();
        let signer = hsm.signer(&key).unwrap();
        assert_eq!(signer.key(), &key);

        let cert =
            certvault_crypto::self_signed_with(&signer, &params("CN=hsm.example.com")).unwrap();
        let info = certvault_crypto::parse_certificate(&cert).unwrap();
        assert_eq!(info.public_key, public, "{alg}");
        assert_eq!(info.subject, "CN=hsm.example.com");
        assert!(info.self_issued);
        assert!(
            certvault_crypto::verify_signed_by(&cert, &cert).unwrap(),
            "{alg}"
        );

        let csr = certvault_crypto::csr_with(&signer, &params("CN=csr.example.com")).unwrap();
        openssl_req_verify(&csr);

        // The HSM key as a CA: issue a leaf for a software key.
        let mut ca_params = params("CN=HSM CA");
        ca_params.is_ca = true;
        ca_params.key_usage = vec![KeyUsage::KeyCertSign, KeyUsage::CrlSign];
        ca_params.ekus.clear();
        let ca = certvault_crypto::self_signed_with(&signer, &ca_params).unwrap();
        let leaf_key = PrivateKey::generate(KeyAlg::Ec(Curve::P256)).unwrap();
        let leaf = certvault_crypto::issue_with(
            &signer,
            &ca,
            &leaf_key.public_key(),
            &params("CN=leaf.example.com"),
        )
        .unwrap();
        assert!(
            certvault_crypto::verify_signed_by(&leaf, &ca).unwrap(),
            "{alg}"
        );
        let leaf_info = certvault_crypto::parse_certificate(&leaf).unwrap();
        assert_eq!(leaf_info.issuer, "CN=HSM CA");
    }
}

fn aes_master_key() {
    let hsm = hsm();
    let label = unique("master");
    assert_eq!(hsm.find_aes_key(&label).unwrap(), None);
    let key = hsm.generate_aes_key(&label).unwrap();
    assert_eq!(hsm.find_aes_key(&label).unwrap(), Some(key.clone()));
    let e = hsm.generate_aes_key(&label).unwrap_err();
    assert!(matches!(e, HsmError::AlreadyExists { .. }), "{e}");
    // A fresh Hsm finds it by label too.
    let fresh = Hsm::open(config(TOKEN, PIN, 1)).unwrap();
    assert_eq!(fresh.find_aes_key(&label).unwrap(), Some(key.clone()));

    // Protection: sensitive, never extractable, and CKA_VALUE is not readable.
    assert_protected(&key);
    check_raw_later(&key, ObjectClass::SECRET_KEY);

    let aad = b"certvault/vault-key/v1/default";
    let vault_key = [7u8; 32];
    let sealed = hsm.aes_seal(&key, aad, &vault_key).unwrap();
    assert_eq!(sealed.len(), 1 + 12 + 32 + 16);
    assert_eq!(sealed[0], 0x10);
    assert_eq!(
        hsm.aes_open(&key, aad, &sealed).unwrap().as_slice(),
        &vault_key
    );
    assert_eq!(
        fresh.aes_open(&key, aad, &sealed).unwrap().as_slice(),
        &vault_key
    );
    // Random IV: sealing twice differs.
    assert_ne!(sealed, hsm.aes_seal(&key, aad, &vault_key).unwrap());
    // Empty plaintext and empty AAD work.
    let empty = hsm.aes_seal(&key, b"", b"").unwrap();
    assert!(hsm.aes_open(&key, b"", &empty).unwrap().is_empty());

    let e = hsm.aes_open(&key, b"other aad", &sealed).unwrap_err();
    assert!(matches!(e, HsmError::Decrypt), "{e:?}");
    let mut tampered = sealed.clone();
    tampered[20] ^= 1;
    let e = hsm.aes_open(&key, aad, &tampered).unwrap_err();
    assert!(matches!(e, HsmError::Decrypt), "{e:?}");
    let e = hsm.aes_open(&key, aad, &sealed[..20]).unwrap_err();
    assert!(matches!(e, HsmError::Malformed(_)), "{e:?}");
    let mut wrong_format = sealed.clone();
    wrong_format[0] = 0x01;
    let e = hsm.aes_open(&key, aad, &wrong_format).unwrap_err();
    assert!(matches!(e, HsmError::Malformed(_)), "{e:?}");

    // Another AES key cannot open it.
    let other = hsm.generate_aes_key(&unique("master-other")).unwrap();
    let e = hsm.aes_open(&other, aad, &sealed).unwrap_err();
    assert!(matches!(e, HsmError::Decrypt), "{e:?}");

    // Key kinds do not mix.
    let e = hsm.sign(&key, SignAlg::RS256, &[0; 32]).unwrap_err();
    assert!(matches!(e, HsmError::WrongKeyKind { .. }), "{e}");
    let (pair, _) = hsm.generate(KeyAlg::Ec(Curve::P256), "not-aes").unwrap();
    let e = hsm.aes_seal(&pair, aad, b"x").unwrap_err();
    assert!(matches!(e, HsmError::WrongKeyKind { .. }), "{e}");
}

fn key_ref_round_trip() {
    let (key, _) = hsm().generate(KeyAlg::Ec(Curve::P256), "keyref").unwrap();
    let s = key.to_string();
    assert!(s.starts_with("pkcs11:token=certvault-test;id=%"), "{s}");
    let parsed: KeyRef = s.parse().unwrap();
    assert_eq!(parsed, key);
    // The parsed reference is usable.
    let d = digest(SignAlg::ES256, b"keyref");
    let sig = hsm().sign(&parsed, SignAlg::ES256, &d).unwrap();
    assert!(
        certvault_crypto::verify(&hsm().public_key(&key).unwrap(), SignAlg::ES256, &d, &sig)
            .unwrap()
    );
    assert!(matches!(
        "pkcs11:token=x".parse::<KeyRef>(),
        Err(HsmError::BadKeyRef(_))
    ));
}

fn wrong_pin() {
    let secret = "not-the-pin-9876";
    let e = Hsm::open(config(PIN_TOKEN, secret, 2)).unwrap_err();
    assert!(matches!(e, HsmError::WrongPin { .. }), "{e:?}");
    let msg = e.to_string();
    assert_eq!(msg, "wrong PIN for PKCS#11 token 'certvault-pin'");
    assert!(!format!("{e:?}").contains(secret));
    // The right PIN still works afterwards (SoftHSM2 has no lock-out by default).
    let ok = Hsm::open(config(PIN_TOKEN, PIN, 1)).unwrap();
    assert_eq!(ok.token_label(), PIN_TOKEN);
    // Debug output of the config never shows the PIN.
    let dbg = format!("{:?}", config(PIN_TOKEN, secret, 1));
    assert!(!dbg.contains(secret), "{dbg}");
    assert!(dbg.contains("[redacted]"), "{dbg}");
}

fn unknown_token_and_module() {
    let e = Hsm::open(config("no-such-token", PIN, 1)).unwrap_err();
    assert!(matches!(e, HsmError::TokenNotFound { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.starts_with(
            "PKCS#11 token 'no-such-token' not found in module /usr/lib/softhsm/libsofthsm2.so"
        ),
        "{msg}"
    );
    assert!(msg.contains("'certvault-test'"), "{msg}");

    let mut cfg = config(TOKEN, PIN, 1);
    cfg.module = PathBuf::from("/nonexistent/libpkcs11.so");
    let e = Hsm::open(cfg).unwrap_err();
    assert!(matches!(e, HsmError::ModuleLoad { .. }), "{e:?}");
    assert!(
        e.to_string()
            .starts_with("could not load PKCS#11 module /nonexistent/libpkcs11.so"),
        "{e}"
    );
    // A file that is not a PKCS#11 module.
    let mut cfg = config(TOKEN, PIN, 1);
    cfg.module = PathBuf::from("/etc/hostname");
    let e = Hsm::open(cfg).unwrap_err();
    assert!(matches!(e, HsmError::ModuleLoad { .. }), "{e:?}");

    for (pool, label, pin) in [(0, TOKEN, PIN), (1, "", PIN), (1, TOKEN, "")] {
        let e = Hsm::open(config(label, pin, pool)).unwrap_err();
        assert!(matches!(e, HsmError::Config(_)), "{e:?}");
    }
}

fn pin_sources() {
    // The launcher passes the PIN with a trailing newline in the environment.
    let pin = read_pin(None, Some(PIN_ENV)).unwrap();
    assert_eq!(pin.as_str(), PIN);
    let hsm = Hsm::open(HsmConfig {
        module: PathBuf::from(MODULE),
        token_label: TOKEN.to_string(),
        pin,
        pool_size: 1,
    })
    .unwrap();
    assert_eq!(hsm.token_label(), TOKEN);
}

fn concurrent_use() {
    // A small pool shared by more threads than sessions.
    let hsm = Hsm::open(config(TOKEN, PIN, 2)).unwrap();
    let (ec, ec_pub) = hsm.generate(KeyAlg::Ec(Curve::P256), "concurrent").unwrap();
    let (rsa, rsa_pub) = hsm.generate(KeyAlg::Rsa(2048), "concurrent").unwrap();
    std::thread::scope(|scope| {
        for t in 0..8u8 {
            let (hsm, ec, rsa, ec_pub, rsa_pub) = (&hsm, &ec, &rsa, &ec_pub, &rsa_pub);
            scope.spawn(move || {
                for i in 0..10u8 {
                    let d = digest(SignAlg::ES256, &[t, i]);
                    let sig = hsm.sign(ec, SignAlg::ES256, &d).unwrap();
                    assert!(certvault_crypto::verify(ec_pub, SignAlg::ES256, &d, &sig).unwrap());
                    let d = digest(SignAlg::PS256, &[t, i]);
                    let sig = hsm.sign(rsa, SignAlg::PS256, &d).unwrap();
                    assert!(certvault_crypto::verify(rsa_pub, SignAlg::PS256, &d, &sig).unwrap());
                }
            });
        }
    });
}

fn destroy_removes_key() {
    let hsm = hsm();
    let (key, _) = hsm.generate(KeyAlg::Ec(Curve::P384), "destroy").unwrap();
    let d = digest(SignAlg::ES384, b"d");
    hsm.sign(&key, SignAlg::ES384, &d).unwrap();
    hsm.destroy(&key).unwrap();
    for e in [
        hsm.sign(&key, SignAlg::ES384, &d).unwrap_err(),
        hsm.public_key(&key).unwrap_err(),
        hsm.destroy(&key).unwrap_err(),
    ] {
        assert!(matches!(e, HsmError::KeyNotFound { .. }), "{e:?}");
    }
    // Another Hsm that had the key cached sees it gone as well.
    let other = Hsm::open(config(TOKEN, PIN, 1)).unwrap();
    let (key2, _) = other.generate(KeyAlg::Ec(Curve::P256), "destroy2").unwrap();
    other.public_key(&key2).unwrap();
    let d = digest(SignAlg::ES256, b"d");
    hsm.sign(&key2, SignAlg::ES256, &d).unwrap();
    other.destroy(&key2).unwrap();
    let e = hsm.sign(&key2, SignAlg::ES256, &d).unwrap_err();
    assert!(matches!(e, HsmError::KeyNotFound { .. }), "{e:?}");
    // The AES key too.
    let aes = hsm.generate_aes_key(&unique("destroy-aes")).unwrap();
    hsm.destroy(&aes).unwrap();
    assert!(matches!(
        hsm.aes_seal(&aes, b"", b"x"),
        Err(HsmError::KeyNotFound { .. })
    ));
}

fn raw_reads_see_no_key_material() {
    let checks = raw_checks().lock().unwrap().clone();
    // Every parallel test that makes keys registered some (when it ran).
    for (key, class) in checks {
        if class == ObjectClass::PRIVATE_KEY {
            assert_private_key_hidden(&key);
        } else if class == ObjectClass::SECRET_KEY {
            let attrs = raw_attributes(
                &key,
                ObjectClass::SECRET_KEY,
                &[AttributeType::Value, AttributeType::ValueLen],
            );
            // CKA_VALUE is silently left out; CKA_VALUE_LEN is there.
            assert_eq!(attrs, vec![Attribute::ValueLen(32u64.into())]);
        } else {
            let Jwk::Rsa { n, .. } = hsm().public_key(&key).unwrap().jwk() else {
                panic!("RSA key expected")
            };
            let attrs = raw_attributes(&key, ObjectClass::PUBLIC_KEY, &[AttributeType::Modulus]);
            assert_eq!(attrs, vec![Attribute::Modulus(n)]);
        }
    }
}

fn login_again_after_logout() {
    let hsm = hsm();
    let (key, public) = hsm.generate(KeyAlg::Ec(Curve::P256), "relogin").unwrap();
    let aes = hsm.generate_aes_key(&unique("relogin")).unwrap();
    // C_Logout on any session logs the whole process out of the token.
    raw_session(TOKEN).logout().unwrap();
    // The pool notices CKR_USER_NOT_LOGGED_IN, logs in again and retries.
    let d = digest(SignAlg::ES256, b"relogin");
    let sig = hsm.sign(&key, SignAlg::ES256, &d).unwrap();
    assert!(certvault_crypto::verify(&public, SignAlg::ES256, &d, &sig).unwrap());
    raw_session(TOKEN).logout().unwrap();
    let sealed = hsm.aes_seal(&aes, b"a", b"b").unwrap();
    assert_eq!(hsm.aes_open(&aes, b"a", &sealed).unwrap().as_slice(), b"b");

    // Logged out, a token hides private objects from searches; "not found" must not be the
    // answer (the server would think the key or the master key is gone).
    let other = Hsm::open(config(TOKEN, PIN, 1)).unwrap();
    let (uncached, uncached_pub) = other.generate(KeyAlg::Rsa(2048), "relogin").unwrap();
    let label = unique("relogin-master");
    let master = other.generate_aes_key(&label).unwrap();
    raw_session(TOKEN).logout().unwrap();
    assert_eq!(hsm.public_key(&uncached).unwrap(), uncached_pub);
    raw_session(TOKEN).logout().unwrap();
    assert_eq!(hsm.find_aes_key(&label).unwrap(), Some(master.clone()));
    raw_session(TOKEN).logout().unwrap();
    hsm.destroy(&master).unwrap();
    assert_eq!(hsm.find_aes_key(&label).unwrap(), None);
}

fn timings() {
    let hsm = hsm();
    let time = |f: &mut dyn FnMut()| {
        let t = Instant::now();
        f();
        t.elapsed()
    };
    let mut rsa = None;
    let rsa_gen = time(&mut || rsa = Some(hsm.generate(KeyAlg::Rsa(2048), "timing").unwrap().0));
    let mut ec = None;
    let ec_gen =
        time(&mut || ec = Some(hsm.generate(KeyAlg::Ec(Curve::P256), "timing").unwrap().0));
    let (rsa, ec) = (rsa.unwrap(), ec.unwrap());
    let n = 50u32;
    let d = digest(SignAlg::RS256, b"t");
    let rsa_sign = time(&mut || {
        for _ in 0..n {
            hsm.sign(&rsa, SignAlg::RS256, &d).unwrap();
        }
    }) / n;
    let ec_sign = time(&mut || {
        for _ in 0..n {
            hsm.sign(&ec, SignAlg::ES256, &d).unwrap();
        }
    }) / n;
    println!(
        "SoftHSM2 timings: RSA-2048 keygen {} ms, P-256 keygen {} ms, RS256 sign {} µs, \
         ES256 sign {} µs (mean of {n}, incl. verification)",
        rsa_gen.as_millis(),
        ec_gen.as_millis(),
        rsa_sign.as_micros(),
        ec_sign.as_micros()
    );
    assert!(rsa_sign < Duration::from_secs(1));
}
