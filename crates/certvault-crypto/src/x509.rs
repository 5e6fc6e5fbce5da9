//! X.509: building self-signed and CA-issued certificates and PKCS#10 CSRs, parsing
//! certificates, and ordering chains.
//!
//! Certificates and CSRs are DER-encoded by this module (a small, fixed profile) and signed with
//! aws-lc-rs; parsing uses `x509-parser`. rcgen is not used: its `DistinguishedName` is a map
//! keyed by attribute type, so it cannot express repeated attributes such as
//! `DC=example, DC=com` or `OU=a, OU=b`, which Key Vault subjects may contain.

use std::net::IpAddr;

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
use crate::{CryptoError, random_bytes, sha1};

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

fn build_certificate(signer: &PrivateKey, input: TbsInput<'_>) -> Result<Vec<u8>, CryptoError> {
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
    let sig_alg = signer.x509_sig_alg()?;
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
    let sig = signer.sign_x509(&tbs)?;
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
    build_certificate(
        key,
        TbsInput {
            p,
            subject_key: key.public_key_ref(),
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
    let ca = parse_x509(ca_cert_der)?;
    let ca_public = PublicKey::from_spki_der(ca.public_key().raw)?;
    if &ca_public != ca_key.public_key_ref() {
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
        ca_key,
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
    let info = asn1::seq(&[
        &asn1::small_uint(0),
        &subject,
        key.public_key_ref().spki_der(),
        &attributes,
    ]);
    let sig_alg = key.x509_sig_alg()?;
    let sig = key.sign_x509(&info)?;
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
