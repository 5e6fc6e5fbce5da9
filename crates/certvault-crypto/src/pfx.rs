//! PKCS#12 (PFX) import and export, through `p12-keystore` (pure Rust, RustCrypto PBE).

use p12_keystore::error::Error as P12Error;
use p12_keystore::{
    Certificate, EncryptionAlgorithm, KeyStore, KeyStoreEntry, MacAlgorithm, Pkcs12Archive,
    PrivateKeyChain,
};

use crate::keys::PrivateKey;
use crate::{Bundle, CryptoError, asn1, sha1};

/// Iterations used by [`write_pfx`] for the bag encryption and for the MAC (Key Vault's value).
pub const PFX_ITERATIONS: u32 = 2000;

/// Whether the PFX has a MacData element. `None` when the outer structure cannot be read by the
/// small DER reader (p12-keystore then gets the final word).
fn has_mac(data: &[u8]) -> Option<bool> {
    let (outer, _) = asn1::expect(data, asn1::SEQUENCE)?;
    let items = asn1::children(outer.content)?;
    Some(items.len() >= 3)
}

/// PKCS#12 passwords are BMPStrings (UTF-16 without surrogates).
fn check_password(password: &str) -> Result<(), CryptoError> {
    if password.chars().any(|c| u32::from(c) > 0xffff) {
        return Err(CryptoError::bad(
            "PKCS#12 passwords cannot contain characters outside the Basic Multilingual Plane",
        ));
    }
    Ok(())
}

fn map_err(e: P12Error, mac: Option<bool>) -> CryptoError {
    match e {
        P12Error::MacError(_) => CryptoError::BadPassword,
        // Without a MAC, a wrong password only shows up as a decryption/padding failure or as
        // garbage where a key or DER structure should be.
        P12Error::UnpadError
        | P12Error::Pkcs5Error(_)
        | P12Error::InvalidPrivateKey
        | P12Error::DerError(_)
            if mac == Some(false) =>
        {
            CryptoError::BadPassword
        }
        P12Error::UnsupportedEncryptionScheme => {
            CryptoError::unsupported("PKCS#12 encryption scheme (supported: AES/PBES2, 3DES, RC2)")
        }
        P12Error::UnsupportedMacAlgorithm => CryptoError::unsupported("PKCS#12 MAC algorithm"),
        P12Error::UnsupportedContentType => CryptoError::unsupported("PKCS#12 content type"),
        P12Error::UnsupportedCertificateType => {
            CryptoError::unsupported("non-X.509 certificate in PKCS#12")
        }
        P12Error::InvalidParameters => {
            CryptoError::malformed("PKCS#12 data (invalid or excessive KDF parameters)")
        }
        _ => CryptoError::malformed("PKCS#12 data"),
    }
}

/// Reads a PFX: the private key (if any) and every certificate, in bag order.
///
/// Supports what OpenSSL 3 writes by default (PBES2/PBKDF2/AES-256-CBC, HMAC-SHA-256 MAC), the
/// `-legacy` form (RC2-40 certificates, 3DES key, SHA-1 MAC), 3DES for both bags, an empty
/// password and MAC-less files. Use [`crate::order_chain`] to put the certificates in chain order.
///
/// Errors: [`CryptoError::BadPassword`] for a wrong password (MAC mismatch, or for MAC-less files
/// a decryption failure); [`CryptoError::Malformed`] for corrupt data;
/// [`CryptoError::Unsupported`] for unknown algorithms; [`CryptoError::BadParameter`] when the file
/// holds more than one private key; [`CryptoError::Malformed`] when it holds neither a key nor a
/// certificate.
///
/// Cost: about 1–2 ms for the usual 2000–10000 iterations. p12-keystore caps iteration counts at
/// 1 000 000; a file at that cap costs about 0.25–0.4 s of CPU (measured), so parse untrusted
/// uploads on a blocking thread (`spawn_blocking`).
///
/// Limitation: an empty password is always tried as the NUL-terminated empty BMPString (what
/// OpenSSL, .NET, Key Vault and this crate write); files MAC'd with a zero-length password are
/// reported as [`CryptoError::BadPassword`].
pub fn parse_pfx(data: &[u8], password: &str) -> Result<Bundle, CryptoError> {
    check_password(password)?;
    let mac = has_mac(data);
    let archive = Pkcs12Archive::from_pkcs12(data, password).map_err(|e| map_err(e, mac))?;
    if archive.keys.len() > 1 {
        return Err(CryptoError::bad(
            "the PKCS#12 data contains more than one private key",
        ));
    }
    let key = match archive.keys.first() {
        Some(bag) => Some(PrivateKey::from_pkcs8_der(bag.key.as_der())?),
        None => None,
    };
    let certs: Vec<Vec<u8>> = archive
        .certs
        .iter()
        .map(|c| c.cert.as_der().to_vec())
        .collect();
    if key.is_none() && certs.is_empty() {
        return Err(CryptoError::malformed(
            "PKCS#12 data: no private key or certificate found",
        ));
    }
    Ok(Bundle { key, certs })
}

/// Writes a PFX in the Azure Key Vault profile: certificates in an encrypted bag and the key in
/// a shrouded key bag, both `pbeWithSHA1And3-KeyTripleDES-CBC` with 2000 iterations; MAC
/// HMAC-SHA-1 with 2000 iterations; a `localKeyId` (SHA-1 of the leaf certificate, or of the
/// SPKI when there is no certificate) on the key and on the leaf; a `friendlyName` on each bag.
///
/// `chain` must start with the leaf (the certificate of `key`, checked →
/// [`CryptoError::KeyMismatch`]). Without a key, the certificates are written as standalone
/// certificate bags in the given order. With `password = ""` the result is what Key Vault hands
/// out as a managed secret: Python `pkcs12.load_key_and_certificates(data, None)` and `b""`,
/// and `openssl pkcs12 -passin pass:` (OpenSSL 3, no `-legacy` needed) read it.
///
/// Not written: the Microsoft CSP-name bag attribute (`1.3.6.1.4.1.311.17.1`) that real Key
/// Vault PFX files carry, because p12-keystore 0.4 has no API for custom bag attributes. Windows
/// then picks its default provider on import, which is what happens for any OpenSSL-made PFX.
///
/// Cost: a few milliseconds (PKCS#12 KDF with 2000 SHA-1 iterations, four derivations); it is
/// fine on an async thread for single requests, but batch exports belong on a blocking thread.
pub fn write_pfx(
    key: Option<&PrivateKey>,
    chain: &[Vec<u8>],
    password: &str,
) -> Result<Vec<u8>, CryptoError> {
    if key.is_none() && chain.is_empty() {
        return Err(CryptoError::bad(
            "nothing to export: no key and no certificate",
        ));
    }
    let certs: Vec<Certificate> = chain
        .iter()
        .map(|der| {
            Certificate::from_der(der).map_err(|_| CryptoError::malformed("X.509 certificate"))
        })
        .collect::<Result<_, _>>()?;
    let mut store = KeyStore::new();
    match key {
        Some(k) => {
            let local_key_id = match chain.first() {
                Some(leaf) => {
                    let info = crate::parse_certificate(leaf)?;
                    if &info.public_key != k.public_key_ref() {
                        return Err(CryptoError::KeyMismatch);
                    }
                    info.sha1
                }
                None => sha1(k.public_key_ref().spki_der()),
            };
            let alias: String = local_key_id.iter().map(|b| format!("{b:02X}")).collect();
            let pk = p12_keystore::PrivateKey::from_der(k.pkcs8_der())
                .map_err(|_| CryptoError::internal("could not encode the private key"))?;
            let entry = PrivateKeyChain::new(local_key_id.to_vec(), pk, certs);
            store.add_entry(&alias, KeyStoreEntry::PrivateKeyChain(entry));
        }
        None => {
            for (i, c) in certs.into_iter().enumerate() {
                // Aliases sort in insertion order, which p12-keystore writes in.
                store.add_entry(&format!("cert-{i:06}"), KeyStoreEntry::Certificate(c));
            }
        }
    }
    store
        .writer(password)
        .encryption_algorithm(EncryptionAlgorithm::PbeWithShaAnd3KeyTripleDesCbc)
        .encryption_iterations(PFX_ITERATIONS)
        .mac_algorithm(MacAlgorithm::HmacSha1)
        .mac_iterations(PFX_ITERATIONS)
        .write()
        .map_err(|_| CryptoError::internal("could not write the PKCS#12 data"))
}
