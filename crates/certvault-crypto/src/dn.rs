//! Distinguished names: parsing the subject strings users write ("CN=web.example.com, O=Acme")
//! into DER, and formatting a certificate's Name back into an RFC 4514-style string.

use crate::CryptoError;
use crate::asn1;
use crate::error::label;

/// How an attribute value is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StrKind {
    Utf8,
    Printable,
    Ia5,
}

struct AttrDef {
    /// Accepted names (upper case); the first is the one used for display.
    names: &'static [&'static str],
    oid: &'static str,
    kind: StrKind,
}

const ATTRS: &[AttrDef] = &[
    AttrDef {
        names: &["CN"],
        oid: "2.5.4.3",
        kind: StrKind::Utf8,
    },
    AttrDef {
        names: &["O"],
        oid: "2.5.4.10",
        kind: StrKind::Utf8,
    },
    AttrDef {
        names: &["OU"],
        oid: "2.5.4.11",
        kind: StrKind::Utf8,
    },
    AttrDef {
        names: &["L"],
        oid: "2.5.4.7",
        kind: StrKind::Utf8,
    },
    AttrDef {
        names: &["ST", "S"],
        oid: "2.5.4.8",
        kind: StrKind::Utf8,
    },
    AttrDef {
        names: &["C"],
        oid: "2.5.4.6",
        kind: StrKind::Printable,
    },
    AttrDef {
        names: &["E", "EMAIL", "EMAILADDRESS"],
        oid: "1.2.840.113549.1.9.1",
        kind: StrKind::Ia5,
    },
    AttrDef {
        names: &["DC"],
        oid: "0.9.2342.19200300.100.1.25",
        kind: StrKind::Ia5,
    },
    AttrDef {
        names: &["STREET"],
        oid: "2.5.4.9",
        kind: StrKind::Utf8,
    },
    AttrDef {
        names: &["SERIALNUMBER"],
        oid: "2.5.4.5",
        kind: StrKind::Printable,
    },
    AttrDef {
        names: &["UID"],
        oid: "0.9.2342.19200300.100.1.1",
        kind: StrKind::Utf8,
    },
    AttrDef {
        names: &["T", "TITLE"],
        oid: "2.5.4.12",
        kind: StrKind::Utf8,
    },
    AttrDef {
        names: &["G", "GN", "GIVENNAME"],
        oid: "2.5.4.42",
        kind: StrKind::Utf8,
    },
    AttrDef {
        names: &["SN", "SURNAME"],
        oid: "2.5.4.4",
        kind: StrKind::Utf8,
    },
    AttrDef {
        names: &["POSTALCODE"],
        oid: "2.5.4.17",
        kind: StrKind::Utf8,
    },
];

/// One parsed `type=value` pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ava {
    oid: String,
    kind: StrKind,
    value: String,
}

/// A parsed subject: a sequence of RDNs, each with one or more attributes (`+`-joined).
pub(crate) type Rdns = Vec<Vec<Ava>>;

fn is_printable(s: &str) -> bool {
    s.chars().all(|c| {
        c.is_ascii_alphanumeric()
            || matches!(
                c,
                ' ' | '\'' | '(' | ')' | '+' | ',' | '-' | '.' | '/' | ':' | '=' | '?'
            )
    })
}

fn lookup(name: &str) -> Result<(String, StrKind), CryptoError> {
    let upper = name.to_ascii_uppercase();
    if let Some(def) = ATTRS.iter().find(|d| d.names.contains(&upper.as_str())) {
        return Ok((def.oid.to_string(), def.kind));
    }
    // Dotted OIDs ("2.5.4.3" or "OID.2.5.4.3") are accepted and encoded as UTF8String.
    let dotted = upper.strip_prefix("OID.").unwrap_or(&upper);
    if dotted.starts_with(|c: char| c.is_ascii_digit()) {
        asn1::oid_content(dotted).map_err(|_| {
            CryptoError::bad(format!("subject: invalid attribute OID {}", label(name)))
        })?;
        return Ok((dotted.to_string(), StrKind::Utf8));
    }
    Err(CryptoError::bad(format!(
        "subject: unknown attribute {} (use CN, O, OU, L, ST, C, E, DC, STREET, SERIALNUMBER, \
         UID, T, G, SN, POSTALCODE or a dotted OID)",
        label(name)
    )))
}

fn check_value(name: &str, oid: &str, kind: StrKind, value: &str) -> Result<String, CryptoError> {
    let n = label(&name.to_ascii_uppercase());
    if value.is_empty() {
        return Err(CryptoError::bad(format!(
            "subject: attribute {n} has an empty value"
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(CryptoError::bad(format!(
            "subject: attribute {n} contains control characters"
        )));
    }
    if value.chars().count() > 1024 {
        return Err(CryptoError::bad(format!(
            "subject: attribute {n} is too long"
        )));
    }
    match kind {
        StrKind::Utf8 => Ok(value.to_string()),
        StrKind::Ia5 if value.is_ascii() => Ok(value.to_string()),
        StrKind::Ia5 => Err(CryptoError::bad(format!(
            "subject: attribute {n} must be ASCII"
        ))),
        StrKind::Printable if oid == "2.5.4.6" => {
            if value.len() == 2 && value.chars().all(|c| c.is_ascii_alphabetic()) {
                Ok(value.to_ascii_uppercase())
            } else {
                Err(CryptoError::bad(
                    "subject: C must be a two-letter ISO 3166 country code",
                ))
            }
        }
        StrKind::Printable if is_printable(value) => Ok(value.to_string()),
        StrKind::Printable => Err(CryptoError::bad(format!(
            "subject: attribute {n} may only contain letters, digits, spaces and '()+,-./:=?"
        ))),
    }
}

/// Parses a subject string.
///
/// Grammar (a superset of RFC 4514 as users and Key Vault write it): RDNs separated by `,` or
/// `;`; attributes inside one RDN joined by `+`; names case-insensitive; whitespace around names
/// and unquoted values ignored; values may be double-quoted (`O="Acme, Inc."`) or use backslash
/// escapes (`\,`, `\+`, `\"`, `\\`, `\;`, `\<`, `\>`, `\=`, `\#`, `\ ` and `\XX` hex bytes).
/// `#`-prefixed BER values are not supported. An empty string yields an empty name.
pub(crate) fn parse(subject: &str) -> Result<Rdns, CryptoError> {
    let chars: Vec<char> = subject.chars().collect();
    let mut i = 0;
    let mut rdns: Rdns = Vec::new();
    let mut current: Vec<Ava> = Vec::new();

    let skip_ws = |i: &mut usize| {
        while *i < chars.len() && chars[*i].is_whitespace() {
            *i += 1;
        }
    };

    skip_ws(&mut i);
    if i == chars.len() {
        return Ok(rdns);
    }

    loop {
        // Attribute type.
        skip_ws(&mut i);
        let start = i;
        while i < chars.len() && chars[i] != '=' {
            if matches!(chars[i], ',' | ';' | '+' | '"' | '\\') {
                return Err(CryptoError::bad(
                    "subject: expected 'NAME=value' (e.g. CN=www.example.com)",
                ));
            }
            i += 1;
        }
        if i == chars.len() {
            return Err(CryptoError::bad(
                "subject: expected 'NAME=value' (e.g. CN=www.example.com)",
            ));
        }
        let name: String = chars[start..i]
            .iter()
            .collect::<String>()
            .trim()
            .to_string();
        if name.is_empty() {
            return Err(CryptoError::bad(
                "subject: missing attribute name before '='",
            ));
        }
        let (oid, kind) = lookup(&name)?;
        i += 1; // '='
        skip_ws(&mut i);

        // Attribute value.
        let mut bytes: Vec<u8> = Vec::new();
        if i < chars.len() && chars[i] == '"' {
            i += 1;
            let mut closed = false;
            while i < chars.len() {
                match chars[i] {
                    '"' => {
                        closed = true;
                        i += 1;
                        break;
                    }
                    '\\' => {
                        i = unescape(&chars, i, &mut bytes)?;
                    }
                    c => {
                        push_char(&mut bytes, c);
                        i += 1;
                    }
                }
            }
            if !closed {
                return Err(CryptoError::bad("subject: unterminated quoted value"));
            }
            skip_ws(&mut i);
            if i < chars.len() && !matches!(chars[i], ',' | ';' | '+') {
                return Err(CryptoError::bad(
                    "subject: unexpected text after a quoted value",
                ));
            }
        } else {
            if i < chars.len() && chars[i] == '#' {
                return Err(CryptoError::unsupported(
                    "hex-encoded ('#…') attribute values in subjects",
                ));
            }
            // Track the length up to the last escaped byte so escaped trailing spaces survive.
            let mut keep = 0;
            while i < chars.len() && !matches!(chars[i], ',' | ';' | '+') {
                match chars[i] {
                    '\\' => {
                        i = unescape(&chars, i, &mut bytes)?;
                        keep = bytes.len();
                    }
                    '"' => {
                        return Err(CryptoError::bad(
                            "subject: a '\"' inside a value must be escaped or the value quoted",
                        ));
                    }
                    c => {
                        push_char(&mut bytes, c);
                        if !c.is_whitespace() {
                            keep = bytes.len();
                        }
                        i += 1;
                    }
                }
            }
            bytes.truncate(keep);
        }
        let value = String::from_utf8(bytes)
            .map_err(|_| CryptoError::bad("subject: escaped bytes are not valid UTF-8"))?;
        let value = check_value(&name, &oid, kind, &value)?;
        current.push(Ava { oid, kind, value });

        // Separator.
        if i == chars.len() {
            rdns.push(std::mem::take(&mut current));
            break;
        }
        let sep = chars[i];
        i += 1;
        if sep != '+' {
            rdns.push(std::mem::take(&mut current));
        }
        skip_ws(&mut i);
        if i == chars.len() {
            return Err(CryptoError::bad("subject: trailing separator"));
        }
    }
    Ok(rdns)
}

fn push_char(bytes: &mut Vec<u8>, c: char) {
    let mut buf = [0u8; 4];
    bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
}

/// Handles a backslash escape at `chars[i]`; returns the index after it.
fn unescape(chars: &[char], i: usize, bytes: &mut Vec<u8>) -> Result<usize, CryptoError> {
    let next = chars
        .get(i + 1)
        .ok_or_else(|| CryptoError::bad("subject: dangling '\\' at the end"))?;
    if let (Some(h), Some(l)) = (
        next.to_digit(16),
        chars.get(i + 2).and_then(|c| c.to_digit(16)),
    ) {
        bytes.push((h * 16 + l) as u8);
        return Ok(i + 3);
    }
    if matches!(
        next,
        ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=' | '#' | ' '
    ) {
        push_char(bytes, *next);
        return Ok(i + 2);
    }
    Err(CryptoError::bad("subject: invalid '\\' escape"))
}

/// Encodes parsed RDNs as a DER `Name`.
pub(crate) fn encode(rdns: &Rdns) -> Result<Vec<u8>, CryptoError> {
    let mut out = Vec::new();
    for rdn in rdns {
        let mut avas = Vec::new();
        for ava in rdn {
            let tag = match ava.kind {
                StrKind::Utf8 => asn1::UTF8_STRING,
                StrKind::Printable => asn1::PRINTABLE_STRING,
                StrKind::Ia5 => asn1::IA5_STRING,
            };
            avas.push(asn1::seq(&[
                &asn1::oid(&ava.oid)?,
                &asn1::tlv(tag, ava.value.as_bytes()),
            ]));
        }
        out.push(asn1::set_of(avas));
    }
    let refs: Vec<&[u8]> = out.iter().map(Vec::as_slice).collect();
    Ok(asn1::seq(&refs))
}

/// Parses and encodes a subject string into a DER `Name`.
pub(crate) fn subject_der(subject: &str) -> Result<(Vec<u8>, bool), CryptoError> {
    let rdns = parse(subject)?;
    Ok((encode(&rdns)?, rdns.is_empty()))
}

/// Display name for an attribute OID.
fn display_name(oid: &str) -> String {
    ATTRS
        .iter()
        .find(|d| d.oid == oid)
        .map(|d| d.names[0].to_string())
        .unwrap_or_else(|| oid.to_string())
}

/// Escapes a value per RFC 4514 §2.4 (plus `;`), so that [`parse`] reads it back unchanged.
fn escape_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let n = v.chars().count();
    for (idx, c) in v.chars().enumerate() {
        let needs = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=')
            || (idx == 0 && (c == '#' || c == ' '))
            || (idx + 1 == n && c == ' ');
        if needs {
            out.push('\\');
            out.push(c);
        } else if c.is_control() {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("\\{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Decodes a directory string value (UTF8, Printable, IA5, Teletex-as-Latin-1, BMP, Universal).
fn decode_string(tag: u8, data: &[u8]) -> Option<String> {
    match tag {
        asn1::UTF8_STRING | asn1::PRINTABLE_STRING | asn1::IA5_STRING | 0x12 | 0x1a => {
            std::str::from_utf8(data).ok().map(str::to_string)
        }
        0x14 => Some(data.iter().map(|b| char::from(*b)).collect()),
        asn1::BMP_STRING => {
            if !data.len().is_multiple_of(2) {
                return None;
            }
            let units: Vec<u16> = data
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16(&units).ok()
        }
        0x1c => {
            if !data.len().is_multiple_of(4) {
                return None;
            }
            data.chunks_exact(4)
                .map(|c| char::from_u32(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
                .collect()
        }
        _ => None,
    }
}

/// Formats a DER `Name` RFC 4514-style, in the certificate's order (first RDN first), e.g.
/// `CN=a.example, O=Acme, C=US`. Multi-valued RDNs are joined with `+`; values that are not
/// strings are shown as `#` + hex of their DER.
pub(crate) fn format(name_der: &[u8]) -> Option<String> {
    let (name, _) = asn1::expect(name_der, asn1::SEQUENCE)?;
    let mut rdns = Vec::new();
    for rdn in asn1::children(name.content)? {
        if rdn.tag != asn1::SET {
            return None;
        }
        let mut parts = Vec::new();
        for ava in asn1::children(rdn.content)? {
            let (oid, rest) = asn1::expect(ava.content, asn1::OID)?;
            let (value, _) = asn1::read(rest)?;
            let oid = asn1::oid_to_string(oid.content)?;
            let shown = match decode_string(value.tag, value.content) {
                Some(s) => escape_value(&s),
                None => {
                    let hex: String = value.raw.iter().map(|b| format!("{b:02x}")).collect();
                    format!("#{hex}")
                }
            };
            parts.push(format!("{}={}", display_name(&oid), shown));
        }
        rdns.push(parts.join("+"));
    }
    Some(rdns.join(", "))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn round(s: &str) -> String {
        let der = encode(&parse(s).unwrap()).unwrap();
        format(&der).unwrap()
    }

    #[test]
    fn simple_and_separators() {
        assert_eq!(
            round("CN=web.example.com, O=Acme, C=US"),
            "CN=web.example.com, O=Acme, C=US"
        );
        assert_eq!(round("CN=a;O=b ; OU=c"), "CN=a, O=b, OU=c");
        assert_eq!(round("cn=MyCert"), "CN=MyCert");
        assert_eq!(round("  CN = spaced value  ,o=x"), "CN=spaced value, O=x");
        assert_eq!(round("S=WA, st=Oregon, c=us"), "ST=WA, ST=Oregon, C=US");
        assert_eq!(round("E=a@b.c, emailAddress=x@y.z"), "E=a@b.c, E=x@y.z");
        assert_eq!(round("DC=example, DC=com"), "DC=example, DC=com");
        assert_eq!(
            round("STREET=1 Main St, SERIALNUMBER=1234"),
            "STREET=1 Main St, SERIALNUMBER=1234"
        );
        assert_eq!(round("2.5.4.3=oid, OID.2.5.4.10=org"), "CN=oid, O=org");
        assert_eq!(round("1.2.3.4=custom"), "1.2.3.4=custom");
        assert_eq!(round(""), "");
        assert_eq!(round("   "), "");
    }

    #[test]
    fn quoting_and_escapes() {
        assert_eq!(round("O=\"Acme, Inc.\", CN=x"), "O=Acme\\, Inc., CN=x");
        assert_eq!(round("O=Acme\\, Inc."), "O=Acme\\, Inc.");
        assert_eq!(round("CN=a\\+b"), "CN=a\\+b");
        assert_eq!(round("CN=\\41BC"), "CN=ABC");
        assert_eq!(round("CN=caf\\C3\\A9"), "CN=café");
        assert_eq!(round("CN=trailing\\ "), "CN=trailing\\ ");
        assert_eq!(round("CN=\"semi;colon\""), "CN=semi\\;colon");
        assert_eq!(round("CN=Ünïcödé ✓"), "CN=Ünïcödé ✓");
        // The formatter's output parses back to the same DER.
        for s in [
            "O=Acme\\, Inc., CN=x",
            "CN=a\\+b",
            "CN=\\#hash",
            "CN=trailing\\ ",
        ] {
            let der1 = encode(&parse(s).unwrap()).unwrap();
            let der2 = encode(&parse(&format(&der1).unwrap()).unwrap()).unwrap();
            assert_eq!(der1, der2, "{s}");
        }
    }

    #[test]
    fn multi_valued_rdn() {
        let rdns = parse("CN=a+O=b, C=US").unwrap();
        assert_eq!(rdns.len(), 2);
        assert_eq!(rdns[0].len(), 2);
        let s = round("CN=a+O=b, C=US");
        assert!(s == "CN=a+O=b, C=US" || s == "O=b+CN=a, C=US", "{s}");
    }

    #[test]
    fn errors() {
        for bad in [
            "CN",
            "=x",
            "CN=",
            "CN=a,",
            "CN=a,,O=b",
            "XX=a",
            "C=USA",
            "C=1A",
            "CN=\"open",
            "CN=\"q\" junk",
            "CN=a\"b",
            "CN=#0403",
            "CN=bad\\",
            "CN=bad\\q",
            "E=ü@x",
            "SERIALNUMBER=a_b",
            "CN=a\u{7}b",
            "CN=\\FF",
            "OID.1.x=a",
        ] {
            let e = parse(bad).unwrap_err();
            assert!(
                matches!(
                    e,
                    CryptoError::BadParameter(_) | CryptoError::Unsupported(_)
                ),
                "{bad}: {e:?}"
            );
        }
        let e = parse("FOO=bar").unwrap_err().to_string();
        assert!(e.contains("unknown attribute 'FOO'"), "{e}");
    }

    #[test]
    fn encodings() {
        let der = encode(&parse("C=us, E=a@b.c, CN=x").unwrap()).unwrap();
        // C is a PrintableString, E an IA5String, CN a UTF8String.
        assert!(der.windows(4).any(|w| w == [0x13, 2, b'U', b'S']));
        assert!(der.windows(2).any(|w| w == [0x16, 5]));
        assert!(der.windows(3).any(|w| w == [0x0c, 1, b'x']));
    }
}
