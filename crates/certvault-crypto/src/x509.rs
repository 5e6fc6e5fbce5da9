//! X.509: building self-signed and CA-issued certificates and PKCS#10 CSRs, parsing
//! certificates, and ordering chains.
//!
//! Certificates and CSRs are DER-encoded by this module (a small, fixed profile) and signed with
//! aws-lc-rs; parsing uses `x509-parser`. rcgen is not used: its `DistinguishedName` is a map
//! keyed by attribute type, so it cannot express repeated attributes such as
//! `DC=example, DC=com` or `OU=a, OU=b`, which Key Vault subjects may contain.

use std::net::IpAddr;

use aws_lc_rs::digest;
use aws_lc_rs::signature;
use certvault_core::policy::Curve;
use certvault_core::policy::KeyUsage;
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::asn1;
use crate::keys::{KeyAlg, PrivateKey, PublicKey};
use crate::{CryptoError, SignAlg, random_bytes, sha1};

const OID_SAN: &str = "2.5.29.17";
const OID_KEY_USAGE: &str = "2.5.29.15";
const OID_EKU: &str = "2.5.29.37";
const OID_BASIC_CONSTRAINTS: &str = "2.5.29.19";
const OID_SKI: &str = "2.5.29.14";
const OID_AKI: &str = "2.5.29.35";
const OID_UPN: &str = "1.3.6.1.4.1.311.20.2.3";
const OID_EXTENSION_REQUEST: &str = "1.2.840.113549.1.9.14";

/// What to put in a certificate or CSR.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CertParams {
    /// The subject DN as a user writes it, e.g. `CN=web.example.com, O=Acme, C=US`. `,` or `;`
    /// separate RDNs, `+` joins a multi-valued RDN, values may be double-quoted or use RFC 4514
    /// backslash escapes, attribute names are case-insensitive. Known names: CN, O, OU, L,
    /// ST (or S), C, E (or EMAIL/emailAddress), DC, STREET, SERIALNUMBER, UID, T, G, SN,
    /// POSTALCODE, or a dotted OID. May be empty when at least one SAN is given (the SAN
    /// extension is then marked critical, per RFC 5280).
    pub subject: String,
    /// DNS names (ASCII; IDNs must already be punycode). `*.example.com` wildcards are allowed.
    pub dns_names: Vec<String>,
    /// RFC 822 e-mail addresses.
    pub emails: Vec<String>,
    /// User principal names, encoded as otherName `1.3.6.1.4.1.311.20.2.3` with a UTF8String.
    pub upns: Vec<String>,
    /// URIs.
    pub uris: Vec<String>,
    /// IP addresses.
    pub ip_addresses: Vec<IpAddr>,
    /// Extended key usages as dotted OIDs (e.g. `1.3.6.1.5.5.7.3.1`).
    pub ekus: Vec<String>,
    /// Key usage bits; the extension is omitted when empty.
    pub key_usage: Vec<KeyUsage>,
    /// Sets BasicConstraints `CA:TRUE` (no path length constraint).
    pub is_ca: bool,
    /// Validity start, Unix seconds (ignored for CSRs).
    pub not_before: i64,
    /// Validity end, Unix seconds (ignored for CSRs).
    pub not_after: i64,
}

/// Checks that a subject string parses, with a clear error message if not.
pub fn validate_subject(subject: &str) -> Result<(), CryptoError> {
    crate::dn::parse(subject).map(|_| ())
}

/// Checks a whole [`CertParams`] (subject, SANs, EKU OIDs) without signing anything.
/// Validity is not checked here.
pub fn validate_params(p: &CertParams) -> Result<(), CryptoError> {
    let (_, empty_subject) = crate::dn::subject_der(&p.subject)?;
    let san = san_extension(p, empty_subject)?;
    if empty_subject && san.is_none() {
        return Err(CryptoError::bad(
            "a certificate needs a subject or at least one subject alternative name",
        ));
    }
    eku_extension(&p.ekus)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Signers
// ---------------------------------------------------------------------------------------------

/// Something that can sign certificates and CSRs: a software [`PrivateKey`], or a key that never
/// leaves an HSM.
///
/// The certificate writer picks the signature algorithm from [`CertSigner::public_key`]:
/// sha256WithRSAEncryption (PKCS#1 v1.5) for RSA keys, ecdsa-with-SHA256/384/512 for
/// P-256/384/521. [`x509_signing_digest`] tells an implementation which digest to sign with
/// which Key Vault algorithm, and [`ecdsa_raw_to_der`] converts a raw `r‖s` ECDSA signature.
///
/// Every signature is checked against the public key before a certificate or CSR is returned,
/// so a signer whose `public_key` does not match the key it signs with fails with
/// [`CryptoError::Internal`] instead of producing a broken certificate.
pub trait CertSigner {
    /// The public key of the signing key.
    fn public_key(&self) -> PublicKey;

    /// Signs `msg` (the DER TBSCertificate or CertificationRequestInfo) and returns the X.509
    /// signature bytes: the PKCS#1 v1.5 signature over SHA-256 for RSA; the DER
    /// `ECDSA-Sig-Value` over SHA-256/384/512 for P-256/384/521.
    fn sign_message(&self, msg: &[u8]) -> Result<Vec<u8>, CryptoError>;
}

impl CertSigner for PrivateKey {
    fn public_key(&self) -> PublicKey {
        self.public_key_ref().clone()
    }

    fn sign_message(&self, msg: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.sign_x509(msg)
    }
}

/// For a key of algorithm `key`, the Key Vault signature algorithm and the digest of `msg` that
/// produce the X.509 signature [`CertSigner::sign_message`] must return: `RS256` over SHA-256
/// for RSA; `ES256`/`ES384`/`ES512` over SHA-256/384/512 for P-256/384/521 (whose raw `r‖s`
/// result then goes through [`ecdsa_raw_to_der`]).
///
/// Errors: [`CryptoError::Unsupported`] for P-256K.
pub fn x509_signing_digest(key: KeyAlg, msg: &[u8]) -> Result<(SignAlg, Vec<u8>), CryptoError> {
    let (alg, hash) = match key {
        KeyAlg::Rsa(_) => (SignAlg::RS256, &digest::SHA256),
        KeyAlg::Ec(Curve::P256) => (SignAlg::ES256, &digest::SHA256),
        KeyAlg::Ec(Curve::P384) => (SignAlg::ES384, &digest::SHA384),
        KeyAlg::Ec(Curve::P521) => (SignAlg::ES512, &digest::SHA512),
        KeyAlg::Ec(Curve::P256K) => {
            return Err(CryptoError::unsupported(
                "curve P-256K (secp256k1) is not allowed for certificates",
            ));
        }
    };
    Ok((alg, digest::digest(hash, msg).as_ref().to_vec()))
}

/// DER-encodes a raw ECDSA signature `r‖s` (two big-endian integers of equal width, as JWS and
/// PKCS#11 `CKM_ECDSA` produce) as an X.509 / PKCS#10 `ECDSA-Sig-Value`
/// (`SEQUENCE { r INTEGER, s INTEGER }`).
///
/// Errors: [`CryptoError::BadParameter`] for an empty or odd-length input.
pub fn ecdsa_raw_to_der(raw: &[u8]) -> Result<Vec<u8>, CryptoError> {
    if raw.is_empty() || !raw.len().is_multiple_of(2) {
        return Err(CryptoError::bad(
            "a raw ECDSA signature must be r and s of equal, non-zero length",
        ));
    }
    let (r, s) = raw.split_at(raw.len() / 2);
    Ok(asn1::seq(&[&asn1::uint(r), &asn1::uint(s)]))
}

/// Verifies an X.509 signature (as [`CertSigner::sign_message`] returns it) over `msg`.
fn x509_signature_valid(key: &PublicKey, msg: &[u8], sig: &[u8]) -> bool {
    let alg: &dyn signature::VerificationAlgorithm = match key.alg() {
        KeyAlg::Rsa(_) => &signature::RSA_PKCS1_2048_8192_SHA256,
        KeyAlg::Ec(Curve::P256) => &signature::ECDSA_P256_SHA256_ASN1,
        KeyAlg::Ec(Curve::P384) => &signature::ECDSA_P384_SHA384_ASN1,
        KeyAlg::Ec(Curve::P521) => &signature::ECDSA_P521_SHA512_ASN1,
        KeyAlg::Ec(Curve::P256K) => return false,
    };
    signature::UnparsedPublicKey::new(alg, key.spki_der())
        .verify(msg, sig)
        .is_ok()
}

/// Signs `msg` with `signer` and checks the result against `key` (the signer's public key).
fn sign_checked(
    signer: &dyn CertSigner,
    key: &PublicKey,
    msg: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let sig = signer.sign_message(msg)?;
    if !x509_signature_valid(key, msg, &sig) {
        return Err(CryptoError::internal(
            "the signer's signature does not verify with its public key",
        ));
    }
    Ok(sig)
}

// ---------------------------------------------------------------------------------------------
// Extensions
// ---------------------------------------------------------------------------------------------

fn extension(oid: &str, critical: bool, value: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let oid = asn1::oid(oid)?;
    let crit = asn1::bool_true();
    let val = asn1::octet_string(value);
    Ok(if critical {
        asn1::seq(&[&oid, &crit, &val])
    } else {
        asn1::seq(&[&oid, &val])
    })
}

fn check_dns(name: &str) -> Result<(), CryptoError> {
    let bad = || {
        CryptoError::bad(
            "dns_names: each entry must be an ASCII host name (letters, digits, '-', '_', '.'; \
             '*' only as the whole first label; IDNs as punycode)",
        )
    };
    if name.is_empty() || name.len() > 253 || !name.is_ascii() {
        return Err(bad());
    }
    for (i, lbl) in name.split('.').enumerate() {
        if lbl.is_empty() || lbl.len() > 63 {
            return Err(bad());
        }
        if lbl == "*" && i == 0 {
            continue;
        }
        if !lbl
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(bad());
        }
    }
    Ok(())
}

fn check_email(email: &str) -> Result<(), CryptoError> {
    let ok = email.is_ascii()
        && !email
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        && email
            .split_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && !d.is_empty() && !d.contains('@'));
    if ok {
        Ok(())
    } else {
        Err(CryptoError::bad(
            "emails: each entry must be an ASCII address like user@example.com",
        ))
    }
}

fn check_uri(uri: &str) -> Result<(), CryptoError> {
    let ok = uri.is_ascii()
        && !uri
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        && uri.split_once(':').is_some_and(|(scheme, rest)| {
            !rest.is_empty()
                && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        });
    if ok {
        Ok(())
    } else {
        Err(CryptoError::bad(
            "uris: each entry must be an absolute ASCII URI like https://host/path",
        ))
    }
}

/// The SAN extension, or `None` when there are no SANs.
fn san_extension(p: &CertParams, empty_subject: bool) -> Result<Option<Vec<u8>>, CryptoError> {
    let mut names: Vec<Vec<u8>> = Vec::new();
    for d in &p.dns_names {
        check_dns(d)?;
        names.push(asn1::tlv(asn1::ctx_prim(2), d.as_bytes()));
    }
    for e in &p.emails {
        check_email(e)?;
        names.push(asn1::tlv(asn1::ctx_prim(1), e.as_bytes()));
    }
    for u in &p.upns {
        if u.is_empty() || u.chars().any(char::is_control) {
            return Err(CryptoError::bad("upns: entries must be non-empty text"));
        }
        let value = asn1::tlv(
            asn1::ctx_cons(0),
            &asn1::tlv(asn1::UTF8_STRING, u.as_bytes()),
        );
        names.push(asn1::cons(
            asn1::ctx_cons(0),
            &[&asn1::oid(OID_UPN)?, &value],
        ));
    }
    for u in &p.uris {
        check_uri(u)?;
        names.push(asn1::tlv(asn1::ctx_prim(6), u.as_bytes()));
    }
    for ip in &p.ip_addresses {
        let octets = match ip {
            IpAddr::V4(v4) => v4.octets().to_vec(),
            IpAddr::V6(v6) => v6.octets().to_vec(),
        };
        names.push(asn1::tlv(asn1::ctx_prim(7), &octets));
    }
    if names.is_empty() {
        return Ok(None);
    }
    let refs: Vec<&[u8]> = names.iter().map(Vec::as_slice).collect();
    Ok(Some(extension(OID_SAN, empty_subject, &asn1::seq(&refs))?))
}

fn key_usage_bit(ku: KeyUsage) -> u16 {
    let index = match ku {
        KeyUsage::DigitalSignature => 0,
        KeyUsage::NonRepudiation => 1,
        KeyUsage::KeyEncipherment => 2,
        KeyUsage::DataEncipherment => 3,
        KeyUsage::KeyAgreement => 4,
        KeyUsage::KeyCertSign => 5,
        KeyUsage::CrlSign => 6,
        KeyUsage::EncipherOnly => 7,
        KeyUsage::DecipherOnly => 8,
    };
    0x8000 >> index
}

fn key_usage_extension(usage: &[KeyUsage]) -> Result<Option<Vec<u8>>, CryptoError> {
    let bits = usage.iter().fold(0u16, |acc, u| acc | key_usage_bit(*u));
    if bits == 0 {
        return Ok(None);
    }
    let used = 16 - bits.trailing_zeros() as usize; // number of significant bits
    let nbytes = used.div_ceil(8);
    let unused = (nbytes * 8 - used) as u8;
    let be = bits.to_be_bytes();
    let mut content = vec![unused];
    content.extend_from_slice(&be[..nbytes]);
    let value = asn1::tlv(asn1::BIT_STRING, &content);
    Ok(Some(extension(OID_KEY_USAGE, true, &value)?))
}

fn eku_extension(ekus: &[String]) -> Result<Option<Vec<u8>>, CryptoError> {
    let mut seen: Vec<&str> = Vec::new();
    let mut oids = Vec::new();
    for e in ekus {
        let e = e.trim();
        if seen.contains(&e) {
            continue;
        }
        seen.push(e);
        let content = asn1::oid_content(e).map_err(|_| {
            CryptoError::bad("ekus: each entry must be a dotted OID like 1.3.6.1.5.5.7.3.1")
        })?;
        oids.push(asn1::tlv(asn1::OID, &content));
    }
    if oids.is_empty() {
        return Ok(None);
    }
    let refs: Vec<&[u8]> = oids.iter().map(Vec::as_slice).collect();
    Ok(Some(extension(OID_EKU, false, &asn1::seq(&refs))?))
}

fn basic_constraints_extension(is_ca: bool) -> Result<Vec<u8>, CryptoError> {
    let value = if is_ca {
        asn1::seq(&[&asn1::bool_true()])
    } else {
        asn1::seq(&[])
    };
    extension(OID_BASIC_CONSTRAINTS, true, &value)
}

/// Key identifier: SHA-1 of the subjectPublicKey bits (RFC 5280 §4.2.1.2 method 1).
fn key_id(key: &PublicKey) -> [u8; 20] {
    sha1(key.subject_public_key_bits())
}

// ---------------------------------------------------------------------------------------------
// Building
// ---------------------------------------------------------------------------------------------

fn encode_time(unix: i64) -> Result<Vec<u8>, CryptoError> {
    let t = OffsetDateTime::from_unix_timestamp(unix)
        .map_err(|_| CryptoError::bad("validity time is out of range"))?;
    let (y, mo, d, h, mi, s) = (
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
    );
    if (1950..2050).contains(&y) {
        let text = format!("{:02}{mo:02}{d:02}{h:02}{mi:02}{s:02}Z", y % 100);
        Ok(asn1::tlv(asn1::UTC_TIME, text.as_bytes()))
    } else if (0..=9999).contains(&y) {
        let text = format!("{y:04}{mo:02}{d:02}{h:02}{mi:02}{s:02}Z");
        Ok(asn1::tlv(asn1::GENERALIZED_TIME, text.as_bytes()))
    } else {
        Err(CryptoError::bad("validity time is out of range"))
    }
}

/// A random positive 16-byte serial number.
fn random_serial() -> Result<Vec<u8>, CryptoError> {
    let mut serial = random_bytes(16)?;
    serial[0] = (serial[0] & 0x7f) | 0x01;
    Ok(asn1::uint(&serial))
}

/// Everything except the issuer-dependent parts of a TBSCertificate.
struct TbsInput<'a> {
    p: &'a CertParams,
    subject_key: &'a PublicKey,
    issuer_name: Option<Vec<u8>>,
    aki: Option<Vec<u8>>,
}

fn build_certificate(
    signer: &dyn CertSigner,
    signer_key: &PublicKey,
    input: TbsInput<'_>,
) -> Result<Vec<u8>, CryptoError> {
    let p = input.p;
    if p.not_after <= p.not_before {
        return Err(CryptoError::bad("not_after must be later than not_before"));
    }
    let (subject, empty_subject) = crate::dn::subject_der(&p.subject)?;
    let mut exts: Vec<Vec<u8>> = Vec::new();
    let san = san_extension(p, empty_subject)?;
    if empty_subject && san.is_none() {
        return Err(CryptoError::bad(
            "a certificate needs a subject or at least one subject alternative name",
        ));
    }
    if let Some(aki) = &input.aki {
        let value = asn1::seq(&[&asn1::tlv(asn1::ctx_prim(0), aki)]);
        exts.push(extension(OID_AKI, false, &value)?);
    }
    exts.extend(san);
    exts.extend(key_usage_extension(&p.key_usage)?);
    exts.extend(eku_extension(&p.ekus)?);
    exts.push(basic_constraints_extension(p.is_ca)?);
    exts.push(extension(
        OID_SKI,
        false,
        &asn1::octet_string(&key_id(input.subject_key)),
    )?);

    let issuer = input.issuer_name.unwrap_or_else(|| subject.clone());
    let sig_alg = signer_key.alg().x509_sig_alg()?;
    let validity = asn1::seq(&[&encode_time(p.not_before)?, &encode_time(p.not_after)?]);
    let ext_refs: Vec<&[u8]> = exts.iter().map(Vec::as_slice).collect();
    let extensions = asn1::tlv(asn1::ctx_cons(3), &asn1::seq(&ext_refs));
    let version = asn1::tlv(asn1::ctx_cons(0), &asn1::small_uint(2));
    let tbs = asn1::seq(&[
        &version,
        &random_serial()?,
        &sig_alg,
        &issuer,
        &validity,
        &subject,
        input.subject_key.spki_der(),
        &extensions,
    ]);
    let sig = sign_checked(signer, signer_key, &tbs)?;
    Ok(asn1::seq(&[&tbs, &sig_alg, &asn1::bit_string(&sig)]))
}

/// Builds a self-signed certificate for `key` (DER).
///
/// Random positive 16-byte serial; SHA-256 with RSA (PKCS#1 v1.5), ECDSA with SHA-256/384/512
/// for P-256/384/521. Extensions, in order: SubjectAltName (if any SAN; critical when the
/// subject is empty), KeyUsage (critical, if any), ExtendedKeyUsage (if any),
/// BasicConstraints (critical; `CA:FALSE` unless `is_ca`), SubjectKeyIdentifier (SHA-1 of the
/// public key bits). No AuthorityKeyIdentifier.
pub fn self_signed(key: &PrivateKey, p: &CertParams) -> Result<Vec<u8>, CryptoError> {
    self_signed_with(key, p)
}

/// [`self_signed`] with any [`CertSigner`] (e.g. a key inside an HSM).
pub fn self_signed_with(signer: &dyn CertSigner, p: &CertParams) -> Result<Vec<u8>, CryptoError> {
    let key = signer.public_key();
    build_certificate(
        signer,
        &key,
        TbsInput {
            p,
            subject_key: &key,
            issuer_name: None,
            aki: None,
        },
    )
}

/// Builds a certificate for `subject_key` signed by a CA (DER). Same profile as
/// [`self_signed`], plus an AuthorityKeyIdentifier (the CA's SubjectKeyIdentifier, or the SHA-1
/// of its key when the CA certificate has none). The issuer name is copied byte-for-byte from the
/// CA certificate's subject.
///
/// Errors: [`CryptoError::KeyMismatch`] when `ca_key` does not belong to `ca_cert_der`;
/// [`CryptoError::BadParameter`] when the CA certificate is not a CA (`BasicConstraints CA:TRUE`).
pub fn issue(
    ca_key: &PrivateKey,
    ca_cert_der: &[u8],
    subject_key: &PublicKey,
    p: &CertParams,
) -> Result<Vec<u8>, CryptoError> {
    issue_with(ca_key, ca_cert_der, subject_key, p)
}

/// [`issue`] with any [`CertSigner`] as the CA key (e.g. a CA key inside an HSM).
pub fn issue_with(
    ca_signer: &dyn CertSigner,
    ca_cert_der: &[u8],
    subject_key: &PublicKey,
    p: &CertParams,
) -> Result<Vec<u8>, CryptoError> {
    let ca = parse_x509(ca_cert_der)?;
    let ca_public = PublicKey::from_spki_der(ca.public_key().raw)?;
    if ca_public != ca_signer.public_key() {
        return Err(CryptoError::KeyMismatch);
    }
    let is_ca = ca
        .basic_constraints()
        .map_err(|_| CryptoError::malformed("CA certificate extensions"))?
        .is_some_and(|bc| bc.value.ca);
    if !is_ca {
        return Err(CryptoError::bad(
            "the issuing certificate is not a CA certificate",
        ));
    }
    let aki = ca
        .iter_extensions()
        .find(|e| e.oid.to_id_string() == OID_SKI)
        .and_then(|e| asn1::expect(e.value, asn1::OCTET_STRING).map(|(t, _)| t.content.to_vec()))
        .unwrap_or_else(|| key_id(&ca_public).to_vec());
    build_certificate(
        ca_signer,
        &ca_public,
        TbsInput {
            p,
            subject_key,
            issuer_name: Some(ca.subject().as_raw().to_vec()),
            aki: Some(aki),
        },
    )
}

/// Builds a PKCS#10 certificate signing request (DER), self-signed with `key`.
///
/// The extensionRequest attribute carries SubjectAltName, KeyUsage (critical), ExtendedKeyUsage
/// and BasicConstraints (critical; `CA:FALSE` unless `is_ca`). Validity fields are ignored.
pub fn csr(key: &PrivateKey, p: &CertParams) -> Result<Vec<u8>, CryptoError> {
    csr_with(key, p)
}

/// [`csr`] with any [`CertSigner`] (e.g. a key inside an HSM).
pub fn csr_with(signer: &dyn CertSigner, p: &CertParams) -> Result<Vec<u8>, CryptoError> {
    let key = signer.public_key();
    let (subject, empty_subject) = crate::dn::subject_der(&p.subject)?;
    let mut exts: Vec<Vec<u8>> = Vec::new();
    let san = san_extension(p, empty_subject)?;
    if empty_subject && san.is_none() {
        return Err(CryptoError::bad(
            "a certificate needs a subject or at least one subject alternative name",
        ));
    }
    exts.extend(san);
    exts.extend(key_usage_extension(&p.key_usage)?);
    exts.extend(eku_extension(&p.ekus)?);
    exts.push(basic_constraints_extension(p.is_ca)?);
    let ext_refs: Vec<&[u8]> = exts.iter().map(Vec::as_slice).collect();
    let ext_req = asn1::seq(&[
        &asn1::oid(OID_EXTENSION_REQUEST)?,
        &asn1::set_of(vec![asn1::seq(&ext_refs)]),
    ]);
    let attributes = asn1::tlv(asn1::ctx_cons(0), &ext_req);
    let info = asn1::seq(&[&asn1::small_uint(0), &subject, key.spki_der(), &attributes]);
    let sig_alg = key.alg().x509_sig_alg()?;
    let sig = sign_checked(signer, &key, &info)?;
    Ok(asn1::seq(&[&info, &sig_alg, &asn1::bit_string(&sig)]))
}

// ---------------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------------

/// What certvault needs to know about a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Subject, RFC 4514-style in the certificate's order, e.g. `CN=a.example, O=Acme, C=US`.
    /// Attribute names: CN O OU L ST C E DC STREET SERIALNUMBER UID T G SN POSTALCODE, other
    /// attributes as dotted OIDs. The string parses back with [`validate_subject`].
    pub subject: String,
    /// Issuer, same format.
    pub issuer: String,
    /// Serial number as upper-case hex of its magnitude (no sign byte, no separators).
    pub serial_hex: String,
    /// notBefore, Unix seconds.
    pub not_before: i64,
    /// notAfter, Unix seconds.
    pub not_after: i64,
    /// SAN dNSName entries.
    pub dns_names: Vec<String>,
    /// SAN rfc822Name entries.
    pub emails: Vec<String>,
    /// SAN otherName UPN entries.
    pub upns: Vec<String>,
    /// SAN URI entries.
    pub uris: Vec<String>,
    /// SAN iPAddress entries in text form (`192.0.2.1`, `2001:db8::1`).
    pub ip_addresses: Vec<String>,
    /// Extended key usages as dotted OIDs, in certificate order.
    pub ekus: Vec<String>,
    /// Key usage bits, in bit order.
    pub key_usage: Vec<KeyUsage>,
    /// BasicConstraints `CA:TRUE`.
    pub is_ca: bool,
    /// The subject public key.
    pub public_key: PublicKey,
    /// SHA-1 of the DER: the thumbprint (`x5t` is its base64url form).
    pub sha1: [u8; 20],
    /// Issuer name equals subject name (byte-wise).
    pub self_issued: bool,
}

fn parse_x509(der: &[u8]) -> Result<X509Certificate<'_>, CryptoError> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        _ => Err(CryptoError::malformed("X.509 certificate")),
    }
}

fn decode_upn(value: &[u8]) -> Option<String> {
    // value = [0] EXPLICIT { UTF8String }
    let (outer, _) = asn1::expect(value, asn1::ctx_cons(0))?;
    let (s, _) = asn1::expect(outer.content, asn1::UTF8_STRING)?;
    std::str::from_utf8(s.content).ok().map(str::to_string)
}

fn ip_to_string(bytes: &[u8]) -> Option<String> {
    if let Ok(b) = <[u8; 4]>::try_from(bytes) {
        return Some(IpAddr::from(b).to_string());
    }
    if let Ok(b) = <[u8; 16]>::try_from(bytes) {
        return Some(IpAddr::from(b).to_string());
    }
    None
}

/// Parses a DER certificate.
///
/// Errors: [`CryptoError::Malformed`] for undecodable input (trailing bytes included);
/// [`CryptoError::Unsupported`] when the certificate's key is not RSA or EC P-256/384/521.
pub fn parse_certificate(der: &[u8]) -> Result<CertInfo, CryptoError> {
    let cert = parse_x509(der)?;
    let ext_err = |_| CryptoError::malformed("certificate extensions");

    let subject = crate::dn::format(cert.subject().as_raw())
        .ok_or_else(|| CryptoError::malformed("certificate subject"))?;
    let issuer = crate::dn::format(cert.issuer().as_raw())
        .ok_or_else(|| CryptoError::malformed("certificate issuer"))?;
    let serial = cert.raw_serial();
    let skip = serial
        .iter()
        .take_while(|b| **b == 0)
        .count()
        .min(serial.len().saturating_sub(1));
    let serial_hex: String = serial[skip..].iter().map(|b| format!("{b:02X}")).collect();

    let mut info = CertInfo {
        subject,
        issuer,
        serial_hex,
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        dns_names: Vec::new(),
        emails: Vec::new(),
        upns: Vec::new(),
        uris: Vec::new(),
        ip_addresses: Vec::new(),
        ekus: Vec::new(),
        key_usage: Vec::new(),
        is_ca: false,
        public_key: PublicKey::from_spki_der(cert.public_key().raw)?,
        sha1: sha1(der),
        self_issued: cert.subject().as_raw() == cert.issuer().as_raw(),
    };

    if let Some(san) = cert.subject_alternative_name().map_err(ext_err)? {
        for gn in &san.value.general_names {
            match gn {
                GeneralName::DNSName(s) => info.dns_names.push((*s).to_string()),
                GeneralName::RFC822Name(s) => info.emails.push((*s).to_string()),
                GeneralName::URI(s) => info.uris.push((*s).to_string()),
                GeneralName::IPAddress(b) => {
                    if let Some(ip) = ip_to_string(b) {
                        info.ip_addresses.push(ip);
                    }
                }
                GeneralName::OtherName(oid, value) if oid.to_id_string() == OID_UPN => {
                    if let Some(upn) = decode_upn(value) {
                        info.upns.push(upn);
                    }
                }
                _ => {}
            }
        }
    }
    if let Some(ku) = cert.key_usage().map_err(ext_err)? {
        let k = ku.value;
        let flags = [
            (k.digital_signature(), KeyUsage::DigitalSignature),
            (k.non_repudiation(), KeyUsage::NonRepudiation),
            (k.key_encipherment(), KeyUsage::KeyEncipherment),
            (k.data_encipherment(), KeyUsage::DataEncipherment),
            (k.key_agreement(), KeyUsage::KeyAgreement),
            (k.key_cert_sign(), KeyUsage::KeyCertSign),
            (k.crl_sign(), KeyUsage::CrlSign),
            (k.encipher_only(), KeyUsage::EncipherOnly),
            (k.decipher_only(), KeyUsage::DecipherOnly),
        ];
        info.key_usage = flags
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, u)| *u)
            .collect();
    }
    if let Some(bc) = cert.basic_constraints().map_err(ext_err)? {
        info.is_ca = bc.value.ca;
    }
    if let Some(ext) = cert
        .iter_extensions()
        .find(|e| e.oid.to_id_string() == OID_EKU)
    {
        let (seq, _) = asn1::expect(ext.value, asn1::SEQUENCE)
            .ok_or_else(|| CryptoError::malformed("extended key usage extension"))?;
        for item in asn1::children(seq.content)
            .ok_or_else(|| CryptoError::malformed("extended key usage extension"))?
        {
            if item.tag == asn1::OID
                && let Some(s) = asn1::oid_to_string(item.content)
            {
                info.ekus.push(s);
            }
        }
    }
    Ok(info)
}

/// Checks `cert`'s signature against `issuer_spki`. ECDSA is verified here for every
/// P-256/384/521 × SHA-256/384/512 combination (x509-parser 0.18 lacks P-521 and
/// ecdsa-with-SHA512); RSA PKCS#1 v1.5 (SHA-1 legacy, SHA-256/384/512) and RSA-PSS are delegated to
/// x509-parser's aws-lc-rs verifier.
fn signature_ok(cert: &X509Certificate<'_>, issuer_spki: &SubjectPublicKeyInfo<'_>) -> bool {
    let hash = match cert.signature_algorithm.algorithm.to_id_string().as_str() {
        "1.2.840.10045.4.3.2" => 256,
        "1.2.840.10045.4.3.3" => 384,
        "1.2.840.10045.4.3.4" => 512,
        _ => return cert.verify_signature(Some(issuer_spki)).is_ok(),
    };
    let Ok(pk) = PublicKey::from_spki_der(issuer_spki.raw) else {
        return false;
    };
    let alg: &signature::EcdsaVerificationAlgorithm = match (pk.alg(), hash) {
        (KeyAlg::Ec(Curve::P256), 256) => &signature::ECDSA_P256_SHA256_ASN1,
        (KeyAlg::Ec(Curve::P256), 384) => &signature::ECDSA_P256_SHA384_ASN1,
        (KeyAlg::Ec(Curve::P256), _) => &signature::ECDSA_P256_SHA512_ASN1,
        (KeyAlg::Ec(Curve::P384), 256) => &signature::ECDSA_P384_SHA256_ASN1,
        (KeyAlg::Ec(Curve::P384), 384) => &signature::ECDSA_P384_SHA384_ASN1,
        (KeyAlg::Ec(Curve::P384), _) => &signature::ECDSA_P384_SHA512_ASN1,
        (KeyAlg::Ec(Curve::P521), 256) => &signature::ECDSA_P521_SHA256_ASN1,
        (KeyAlg::Ec(Curve::P521), 384) => &signature::ECDSA_P521_SHA384_ASN1,
        (KeyAlg::Ec(Curve::P521), _) => &signature::ECDSA_P521_SHA512_ASN1,
        _ => return false,
    };
    signature::UnparsedPublicKey::new(alg, &issuer_spki.subject_public_key.data)
        .verify(cert.tbs_certificate.as_ref(), &cert.signature_value.data)
        .is_ok()
}

/// Verifies that `cert_der` carries a valid signature by the key of `issuer_der` (pass the same
/// certificate twice to check a self-signature). `Ok(false)` for a wrong signature or an
/// unsupported signature algorithm; an error only for unparseable input.
///
/// Supported: ECDSA with SHA-256/384/512 on P-256/384/521; RSA PKCS#1 v1.5 with SHA-256/384/512
/// (2048–8192-bit keys) and SHA-1 (legacy, 1024–8192); RSA-PSS with SHA-256/384/512.
pub fn verify_signed_by(cert_der: &[u8], issuer_der: &[u8]) -> Result<bool, CryptoError> {
    let cert = parse_x509(cert_der)?;
    let issuer = parse_x509(issuer_der)?;
    Ok(signature_ok(&cert, issuer.public_key()))
}

/// Orders a set of certificates as a chain: leaf first, then each issuer in turn.
///
/// The leaf is the certificate whose public key matches `key` when a key is given (no match →
/// [`CryptoError::KeyMismatch`]); otherwise a certificate that issued no other certificate in the
/// set, preferring (in input order) a non-CA, non-self-issued one. Issuers are found by name (issuer DN = subject DN), preferring
/// a certificate whose signature verifies when several match. Exact duplicates are dropped.
/// Certificates that are not part of the leaf's chain are kept, in input order, after it.
/// Any unparseable certificate → [`CryptoError::Malformed`].
pub fn order_chain(
    key: Option<&PublicKey>,
    certs: Vec<Vec<u8>>,
) -> Result<Vec<Vec<u8>>, CryptoError> {
    let mut unique: Vec<Vec<u8>> = Vec::with_capacity(certs.len());
    for c in certs {
        if !unique.contains(&c) {
            unique.push(c);
        }
    }
    let parsed: Vec<X509Certificate<'_>> = unique
        .iter()
        .map(|d| parse_x509(d))
        .collect::<Result<_, _>>()?;
    if parsed.is_empty() {
        return Ok(Vec::new());
    }
    let subject = |i: usize| parsed[i].subject().as_raw();
    let issuer = |i: usize| parsed[i].issuer().as_raw();
    let self_issued = |i: usize| subject(i) == issuer(i);
    // `a` issued `b` (by name).
    let issued = |a: usize, b: usize| a != b && !self_issued(b) && subject(a) == issuer(b);

    let leaf = match key {
        Some(k) => (0..parsed.len())
            .find(|&i| {
                PublicKey::from_spki_der(parsed[i].public_key().raw).is_ok_and(|pk| &pk == k)
            })
            .ok_or(CryptoError::KeyMismatch)?,
        None => {
            // Certificates that issued none of the others; prefer an end-entity certificate,
            // then any non-self-issued one, then the first.
            let tops: Vec<usize> = (0..parsed.len())
                .filter(|&i| !(0..parsed.len()).any(|j| issued(i, j)))
                .collect();
            let is_ca = |i: usize| {
                parsed[i]
                    .basic_constraints()
                    .ok()
                    .flatten()
                    .is_some_and(|bc| bc.value.ca)
            };
            tops.iter()
                .copied()
                .find(|&i| !self_issued(i) && !is_ca(i))
                .or_else(|| tops.iter().copied().find(|&i| !self_issued(i)))
                .or_else(|| tops.first().copied())
                .unwrap_or(0)
        }
    };

    let mut order = vec![leaf];
    let mut current = leaf;
    loop {
        if self_issued(current) {
            break;
        }
        let candidates: Vec<usize> = (0..parsed.len())
            .filter(|&i| !order.contains(&i) && issued(i, current))
            .collect();
        let next = candidates
            .iter()
            .copied()
            .find(|&i| signature_ok(&parsed[current], parsed[i].public_key()))
            .or_else(|| candidates.first().copied());
        match next {
            Some(n) => {
                order.push(n);
                current = n;
            }
            None => break,
        }
    }
    for i in 0..parsed.len() {
        if !order.contains(&i) {
            order.push(i);
        }
    }
    drop(parsed);
    let mut slots: Vec<Option<Vec<u8>>> = unique.into_iter().map(Some).collect();
    Ok(order
        .into_iter()
        .filter_map(|i| slots.get_mut(i).and_then(Option::take))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{parse_certificate, sign};

    fn params(subject: &str) -> CertParams {
        CertParams {
            subject: subject.to_string(),
            dns_names: vec!["signer.example.com".into()],
            key_usage: vec![KeyUsage::DigitalSignature, KeyUsage::KeyCertSign],
            is_ca: true,
            not_before: 1_700_000_000,
            not_after: 1_800_000_000,
            ..CertParams::default()
        }
    }

    /// Signs the way an HSM does: a Key Vault digest signature, then DER for ECDSA.
    struct DigestSigner(PrivateKey);

    impl CertSigner for DigestSigner {
        fn public_key(&self) -> PublicKey {
            self.0.public_key()
        }

        fn sign_message(&self, msg: &[u8]) -> Result<Vec<u8>, CryptoError> {
            let (alg, digest) = x509_signing_digest(self.0.alg(), msg)?;
            let sig = sign(&self.0, alg, &digest)?;
            if alg.is_ec() {
                ecdsa_raw_to_der(&sig)
            } else {
                Ok(sig)
            }
        }
    }

    /// Claims one key and signs with another.
    struct LyingSigner(PrivateKey, PrivateKey);

    impl CertSigner for LyingSigner {
        fn public_key(&self) -> PublicKey {
            self.0.public_key()
        }

        fn sign_message(&self, msg: &[u8]) -> Result<Vec<u8>, CryptoError> {
            self.1.sign_message(msg)
        }
    }

    fn algs() -> [KeyAlg; 4] {
        [
            KeyAlg::Rsa(2048),
            KeyAlg::Ec(Curve::P256),
            KeyAlg::Ec(Curve::P384),
            KeyAlg::Ec(Curve::P521),
        ]
    }

    #[test]
    fn digest_signer_matches_the_writer() {
        for alg in algs() {
            let key = PrivateKey::generate(alg).unwrap();
            let signer = DigestSigner(key.clone());
            let msg = b"to be signed";
            let sig = signer.sign_message(msg).unwrap();
            assert!(x509_signature_valid(&key.public_key(), msg, &sig), "{alg}");

            let cert = self_signed_with(&signer, &params("CN=Signer CA")).unwrap();
            assert!(verify_signed_by(&cert, &cert).unwrap(), "{alg}");
            assert_eq!(
                parse_certificate(&cert).unwrap().public_key,
                key.public_key()
            );
            // The same profile as the PrivateKey path (apart from serial and signature).
            let soft = self_signed(&key, &params("CN=Signer CA")).unwrap();
            assert_eq!(
                parse_x509(&cert).unwrap().signature_algorithm.algorithm,
                parse_x509(&soft).unwrap().signature_algorithm.algorithm
            );

            let req = csr_with(&signer, &params("CN=req")).unwrap();
            assert!(!req.is_empty());

            let leaf_key = PrivateKey::generate(KeyAlg::Ec(Curve::P256)).unwrap();
            let mut leaf_params = params("CN=leaf");
            leaf_params.is_ca = false;
            let leaf = issue_with(&signer, &cert, &leaf_key.public_key(), &leaf_params).unwrap();
            assert!(verify_signed_by(&leaf, &cert).unwrap(), "{alg}");
        }
    }

    #[test]
    fn signing_digests() {
        let (alg, d) = x509_signing_digest(KeyAlg::Rsa(3072), b"abc").unwrap();
        assert_eq!((alg, d.len()), (SignAlg::RS256, 32));
        assert_eq!(d, crate::sha256(b"abc"));
        let (alg, d) = x509_signing_digest(KeyAlg::Ec(Curve::P384), b"abc").unwrap();
        assert_eq!((alg, d.len()), (SignAlg::ES384, 48));
        let (alg, d) = x509_signing_digest(KeyAlg::Ec(Curve::P521), b"abc").unwrap();
        assert_eq!((alg, d.len()), (SignAlg::ES512, 64));
        assert!(matches!(
            x509_signing_digest(KeyAlg::Ec(Curve::P256K), b"abc"),
            Err(CryptoError::Unsupported(_))
        ));
    }

    #[test]
    fn lying_signer_is_caught() {
        let a = PrivateKey::generate(KeyAlg::Ec(Curve::P256)).unwrap();
        let b = PrivateKey::generate(KeyAlg::Ec(Curve::P256)).unwrap();
        let liar = LyingSigner(a.clone(), b);
        for r in [
            self_signed_with(&liar, &params("CN=x")),
            csr_with(&liar, &params("CN=x")),
        ] {
            assert!(matches!(r, Err(CryptoError::Internal(_))), "{r:?}");
        }
        // issue_with refuses a CA key that does not match the CA certificate.
        let ca = self_signed(&a, &params("CN=CA")).unwrap();
        let other = PrivateKey::generate(KeyAlg::Ec(Curve::P256)).unwrap();
        assert_eq!(
            issue_with(&other, &ca, &other.public_key(), &params("CN=l")),
            Err(CryptoError::KeyMismatch)
        );
    }

    #[test]
    fn raw_to_der() {
        // r = 0x0080 (leading zero dropped, sign byte added), s = 0x0001.
        assert_eq!(
            ecdsa_raw_to_der(&[0x00, 0x80, 0x00, 0x01]).unwrap(),
            vec![0x30, 0x07, 0x02, 0x02, 0x00, 0x80, 0x02, 0x01, 0x01]
        );
        // All-zero halves encode as INTEGER 0.
        assert_eq!(
            ecdsa_raw_to_der(&[0, 0]).unwrap(),
            vec![0x30, 0x06, 0x02, 0x01, 0x00, 0x02, 0x01, 0x00]
        );
        for bad in [&[][..], &[1, 2, 3][..]] {
            assert!(matches!(
                ecdsa_raw_to_der(bad),
                Err(CryptoError::BadParameter(_))
            ));
        }
        // A P-521 signature (132 bytes) needs long-form lengths and still verifies.
        let key = PrivateKey::generate(KeyAlg::Ec(Curve::P521)).unwrap();
        let (alg, d) = x509_signing_digest(key.alg(), b"m").unwrap();
        let raw = sign(&key, alg, &d).unwrap();
        assert_eq!(raw.len(), 132);
        let der = ecdsa_raw_to_der(&raw).unwrap();
        assert!(x509_signature_valid(&key.public_key(), b"m", &der));
    }

    #[test]
    fn public_key_constructors() {
        let rsa = PrivateKey::generate(KeyAlg::Rsa(2048))
            .unwrap()
            .public_key();
        let crate::Jwk::Rsa { n, e } = rsa.jwk() else {
            panic!("RSA")
        };
        let mut padded = vec![0, 0];
        padded.extend_from_slice(&n);
        assert_eq!(PublicKey::from_rsa_components(&padded, &e).unwrap(), rsa);
        assert!(PublicKey::from_rsa_components(&n, &[1]).is_err());

        let ec = PrivateKey::generate(KeyAlg::Ec(Curve::P384))
            .unwrap()
            .public_key();
        let crate::Jwk::Ec { x, y, .. } = ec.jwk() else {
            panic!("EC")
        };
        let point = [&[0x04][..], &x, &y].concat();
        assert_eq!(PublicKey::from_ec_point(Curve::P384, &point).unwrap(), ec);
        assert!(PublicKey::from_ec_point(Curve::P256, &point).is_err());
        let mut off_curve = point;
        off_curve[5] ^= 1;
        assert!(PublicKey::from_ec_point(Curve::P384, &off_curve).is_err());
    }
}
