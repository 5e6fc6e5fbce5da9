//! PEM containers: a private key plus certificates.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use zeroize::Zeroizing;

use crate::keys::PrivateKey;
use crate::{Bundle, CryptoError};

/// Parses PEM text into a key (normalised to PKCS#8) and certificates (DER, in file order).
///
/// Accepted blocks: `PRIVATE KEY` (PKCS#8), `RSA PRIVATE KEY` (PKCS#1), `EC PRIVATE KEY`
/// (SEC1), `CERTIFICATE`. `EC PARAMETERS` and other unrelated blocks (`CERTIFICATE REQUEST`,
/// `PUBLIC KEY`, `X509 CRL`, …) are skipped. Tolerates `\r\n`, text before, between and after
/// blocks, and trailing garbage after `END` lines.
///
/// Errors: `ENCRYPTED PRIVATE KEY` or a legacy `Proc-Type: 4,ENCRYPTED` key →
/// [`CryptoError::Unsupported`]; more than one private key → [`CryptoError::BadParameter`];
/// bad base64, a missing `END` line or no key/certificate at all → [`CryptoError::Malformed`].
pub fn parse_pem(text: &[u8]) -> Result<Bundle, CryptoError> {
    let text = String::from_utf8_lossy(text);
    let mut key: Option<PrivateKey> = None;
    let mut certs = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let line = line.trim();
        let Some(label) = begin_label(line) else {
            continue;
        };
        let end = format!("-----END {label}-----");
        let mut body = Zeroizing::new(String::new());
        let mut encrypted = false;
        let mut closed = false;
        for l in lines.by_ref() {
            let l = l.trim();
            if l.starts_with(&end) {
                closed = true;
                break;
            }
            if l.starts_with("-----BEGIN ") {
                break;
            }
            if let Some((name, value)) = l.split_once(':') {
                // RFC 1421 header (legacy OpenSSL encryption).
                if name.eq_ignore_ascii_case("Proc-Type") && value.contains("ENCRYPTED") {
                    encrypted = true;
                }
                continue;
            }
            body.push_str(l);
        }
        if !closed {
            return Err(CryptoError::malformed(format!(
                "PEM: missing END line for {label}"
            )));
        }
        let is_key = matches!(label, "PRIVATE KEY" | "RSA PRIVATE KEY" | "EC PRIVATE KEY");
        if label == "ENCRYPTED PRIVATE KEY" || (is_key && encrypted) {
            return Err(CryptoError::unsupported(
                "encrypted PEM private keys; supply an unencrypted PKCS#8 key",
            ));
        }
        if !is_key && label != "CERTIFICATE" {
            continue;
        }
        let der = Zeroizing::new(
            STANDARD
                .decode(body.as_bytes())
                .map_err(|_| CryptoError::malformed(format!("PEM: bad base64 in {label}")))?,
        );
        if label == "CERTIFICATE" {
            certs.push(der.to_vec());
            continue;
        }
        if key.is_some() {
            return Err(CryptoError::bad(
                "the PEM data contains more than one private key",
            ));
        }
        key = Some(match label {
            "PRIVATE KEY" => PrivateKey::from_pkcs8_der(&der)?,
            "RSA PRIVATE KEY" => PrivateKey::from_pkcs1_der(&der)?,
            _ => PrivateKey::from_sec1_der(&der)?,
        });
    }
    if key.is_none() && certs.is_empty() {
        return Err(CryptoError::malformed(
            "PEM: no private key or certificate found",
        ));
    }
    Ok(Bundle { key, certs })
}

fn begin_label(line: &str) -> Option<&str> {
    let rest = line.strip_prefix("-----BEGIN ")?;
    let end = rest.find("-----")?;
    Some(&rest[..end])
}

fn push_block(out: &mut String, label: &str, der: &[u8]) {
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    // 48 input bytes are one 64-column line: encode line by line straight into `out` (no
    // whole-block copy to allocate and wipe), through one wiped line buffer.
    let mut line = Zeroizing::new([0u8; 64]);
    for chunk in der.chunks(48) {
        let n = STANDARD.encode_slice(chunk, &mut line[..]).unwrap_or(0);
        // base64 output is ASCII, so it is valid UTF-8.
        out.push_str(std::str::from_utf8(line.get(..n).unwrap_or_default()).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
}

/// Writes the Key Vault PEM shape: the unencrypted PKCS#8 `PRIVATE KEY` block first (if any),
/// then each certificate as a `CERTIFICATE` block in the given order. 64-column base64, `\n`
/// line endings, trailing newline.
///
/// The returned `String` contains the private key when one is given; wrap it in
/// `zeroize::Zeroizing` if it lives longer than a response.
pub fn to_pem(key: Option<&PrivateKey>, chain: &[Vec<u8>]) -> String {
    to_pem_pkcs8(key.map(PrivateKey::pkcs8_der), chain)
}

/// [`to_pem`] from a key's PKCS#8 DER as [`PrivateKey::pkcs8_der`] returned it (e.g. as it was
/// sealed at rest), written as it is: no parsing, no validation, no key pair construction.
/// For such bytes the output is identical to [`to_pem`] with the key (the canonical PKCS#8
/// encoding is a fixed point of [`PrivateKey::from_pkcs8_der`]), at a fraction of the cost,
/// which matters on the managed-secret read path.
///
/// The returned `String` contains the private key when one is given; wrap it in
/// `zeroize::Zeroizing` if it lives longer than a response.
pub fn to_pem_pkcs8<C: AsRef<[u8]>>(pkcs8: Option<&[u8]>, chain: &[C]) -> String {
    let est = |n: usize| n.div_ceil(3) * 4 + n / 48 + 64;
    let capacity = pkcs8.map_or(0, |k| est(k.len()))
        + chain.iter().map(|c| est(c.as_ref().len())).sum::<usize>();
    // Pre-sized so that the buffer holding the key is never reallocated (and left behind).
    let mut out = String::with_capacity(capacity);
    if let Some(k) = pkcs8 {
        push_block(&mut out, "PRIVATE KEY", k);
    }
    for c in chain {
        push_block(&mut out, "CERTIFICATE", c.as_ref());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KeyAlg;

    #[test]
    fn blocks_are_64_column_base64() {
        for n in 0..300usize {
            let der: Vec<u8> = (0..n).map(|i| (i * 7 + n) as u8).collect();
            let b64 = STANDARD.encode(&der);
            let mut want = String::from("-----BEGIN X-----\n");
            for chunk in b64.as_bytes().chunks(64) {
                want.push_str(std::str::from_utf8(chunk).unwrap());
                want.push('\n');
            }
            want.push_str("-----END X-----\n");
            let mut got = String::new();
            push_block(&mut got, "X", &der);
            assert_eq!(got, want, "{n} bytes");
        }
    }

    #[test]
    fn pkcs8_pem_matches_key_pem() {
        for alg in [
            KeyAlg::Ec(certvault_core::policy::Curve::P256),
            KeyAlg::Ec(certvault_core::policy::Curve::P384),
            KeyAlg::Rsa(2048),
        ] {
            let k = PrivateKey::generate(alg).unwrap();
            let chain = vec![vec![1u8, 2, 3], vec![4u8; 100]];
            assert_eq!(
                to_pem_pkcs8(Some(k.pkcs8_der()), &chain),
                to_pem(Some(&k), &chain)
            );
            // What the read path stores and serves: the canonical encoding round-trips.
            let again = PrivateKey::from_pkcs8_der(k.pkcs8_der()).unwrap();
            assert_eq!(
                to_pem_pkcs8(Some(k.pkcs8_der()), &chain),
                to_pem(Some(&again), &chain)
            );
        }
        assert_eq!(
            to_pem_pkcs8::<Vec<u8>>(None, &[vec![9u8; 10]]),
            to_pem(None, &[vec![9u8; 10]])
        );
        assert_eq!(
            to_pem_pkcs8(None, &[&[9u8; 10][..]]),
            to_pem(None, &[vec![9u8; 10]])
        );
    }
}
