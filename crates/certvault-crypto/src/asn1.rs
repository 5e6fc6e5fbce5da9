//! A minimal DER writer and reader: just enough to build TBSCertificate / CertificationRequestInfo
//! structures and to look inside PKCS#8 headers, SPKIs and a few extensions. Full parsing of
//! certificates is left to `x509-parser`.

use crate::CryptoError;

pub(crate) const BOOLEAN: u8 = 0x01;
pub(crate) const INTEGER: u8 = 0x02;
pub(crate) const BIT_STRING: u8 = 0x03;
pub(crate) const OCTET_STRING: u8 = 0x04;
pub(crate) const NULL: u8 = 0x05;
pub(crate) const OID: u8 = 0x06;
pub(crate) const UTF8_STRING: u8 = 0x0c;
pub(crate) const PRINTABLE_STRING: u8 = 0x13;
pub(crate) const IA5_STRING: u8 = 0x16;
pub(crate) const UTC_TIME: u8 = 0x17;
pub(crate) const GENERALIZED_TIME: u8 = 0x18;
pub(crate) const BMP_STRING: u8 = 0x1e;
pub(crate) const SEQUENCE: u8 = 0x30;
pub(crate) const SET: u8 = 0x31;

/// Context-specific, constructed tag `[n]`.
pub(crate) const fn ctx_cons(n: u8) -> u8 {
    0xa0 | n
}

/// Context-specific, primitive tag `[n]`.
pub(crate) const fn ctx_prim(n: u8) -> u8 {
    0x80 | n
}

// ---------------------------------------------------------------------------------------------
// Writer
// ---------------------------------------------------------------------------------------------

/// Encodes one TLV.
pub(crate) fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    out.push(tag);
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        let significant = &bytes[skip..];
        out.push(0x80 | significant.len() as u8);
        out.extend_from_slice(significant);
    }
    out.extend_from_slice(content);
    out
}

/// Concatenates already-encoded parts under one constructed tag.
pub(crate) fn cons(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    let content: Vec<u8> = parts.concat();
    tlv(tag, &content)
}

/// `SEQUENCE { parts… }`.
pub(crate) fn seq(parts: &[&[u8]]) -> Vec<u8> {
    cons(SEQUENCE, parts)
}

/// `SET OF { parts… }` in DER order (encodings sorted as octet strings).
pub(crate) fn set_of(mut parts: Vec<Vec<u8>>) -> Vec<u8> {
    parts.sort_by(|a, b| {
        // X.690 11.6: compare as octet strings, the shorter padded with trailing zero octets.
        let n = a.len().max(b.len());
        let pad = |v: &Vec<u8>, i: usize| v.get(i).copied().unwrap_or(0);
        (0..n)
            .map(|i| pad(a, i).cmp(&pad(b, i)))
            .find(|o| o.is_ne())
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    cons(SET, &refs)
}

/// A non-negative INTEGER from big-endian magnitude bytes.
pub(crate) fn uint(magnitude: &[u8]) -> Vec<u8> {
    let skip = magnitude.iter().take_while(|b| **b == 0).count();
    let m = &magnitude[skip..];
    let mut content = Vec::with_capacity(m.len() + 1);
    if m.first().is_none_or(|b| b & 0x80 != 0) {
        content.push(0);
    }
    content.extend_from_slice(m);
    tlv(INTEGER, &content)
}

/// A small INTEGER.
pub(crate) fn small_uint(v: u8) -> Vec<u8> {
    uint(&[v])
}

/// `BOOLEAN TRUE`.
pub(crate) fn bool_true() -> Vec<u8> {
    tlv(BOOLEAN, &[0xff])
}

/// `NULL`.
pub(crate) fn null() -> Vec<u8> {
    tlv(NULL, &[])
}

/// A BIT STRING with no unused bits.
pub(crate) fn bit_string(bytes: &[u8]) -> Vec<u8> {
    let mut content = Vec::with_capacity(bytes.len() + 1);
    content.push(0);
    content.extend_from_slice(bytes);
    tlv(BIT_STRING, &content)
}

/// An OCTET STRING.
pub(crate) fn octet_string(bytes: &[u8]) -> Vec<u8> {
    tlv(OCTET_STRING, bytes)
}

/// Encodes the content octets of a dotted-decimal OBJECT IDENTIFIER.
pub(crate) fn oid_content(dotted: &str) -> Result<Vec<u8>, CryptoError> {
    let bad = || CryptoError::bad("an object identifier must look like 1.3.6.1.5.5.7.3.1");
    let arcs: Vec<u64> = dotted
        .split('.')
        .map(|a| {
            if a.is_empty()
                || !a.bytes().all(|b| b.is_ascii_digit())
                || (a.len() > 1 && a.starts_with('0'))
            {
                Err(bad())
            } else {
                a.parse::<u64>().map_err(|_| bad())
            }
        })
        .collect::<Result<_, _>>()?;
    if arcs.len() < 2 || arcs[0] > 2 || (arcs[0] < 2 && arcs[1] >= 40) {
        return Err(bad());
    }
    let first = arcs[0]
        .checked_mul(40)
        .and_then(|v| v.checked_add(arcs[1]))
        .ok_or_else(bad)?;
    let mut out = Vec::new();
    for arc in std::iter::once(first).chain(arcs[2..].iter().copied()) {
        let mut chunk = [0u8; 10];
        let mut n = 0;
        let mut v = arc;
        loop {
            chunk[n] = (v & 0x7f) as u8;
            n += 1;
            v >>= 7;
            if v == 0 {
                break;
            }
        }
        for i in (0..n).rev() {
            out.push(if i == 0 { chunk[i] } else { chunk[i] | 0x80 });
        }
    }
    Ok(out)
}

/// An OBJECT IDENTIFIER TLV from a dotted string. Only for compile-time constants known to be
/// valid; user input goes through [`oid_content`] first.
pub(crate) fn oid(dotted: &str) -> Result<Vec<u8>, CryptoError> {
    Ok(tlv(OID, &oid_content(dotted)?))
}

/// Decodes OBJECT IDENTIFIER content octets into dotted-decimal form.
pub(crate) fn oid_to_string(content: &[u8]) -> Option<String> {
    if content.is_empty() || content.last().is_some_and(|b| b & 0x80 != 0) {
        return None;
    }
    let mut arcs: Vec<u64> = Vec::new();
    let mut v: u64 = 0;
    for &b in content {
        v = v.checked_mul(128)?.checked_add(u64::from(b & 0x7f))?;
        if b & 0x80 == 0 {
            arcs.push(v);
            v = 0;
        }
    }
    let first = *arcs.first()?;
    let (a, b) = match first {
        0..=39 => (0, first),
        40..=79 => (1, first - 40),
        _ => (2, first - 80),
    };
    let mut s = format!("{a}.{b}");
    for arc in &arcs[1..] {
        s.push('.');
        s.push_str(&arc.to_string());
    }
    Some(s)
}

// ---------------------------------------------------------------------------------------------
// Reader
// ---------------------------------------------------------------------------------------------

/// One parsed TLV (single-byte tags and definite lengths only, which is all DER needs here).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tlv<'a> {
    pub tag: u8,
    pub content: &'a [u8],
    /// The whole encoding, header included.
    pub raw: &'a [u8],
}

/// Reads one TLV from the front of `input`, returning it and the rest.
pub(crate) fn read(input: &[u8]) -> Option<(Tlv<'_>, &[u8])> {
    let tag = *input.first()?;
    if tag & 0x1f == 0x1f {
        return None; // multi-byte tags are never needed here
    }
    let first_len = *input.get(1)?;
    let (len, header) = if first_len < 0x80 {
        (usize::from(first_len), 2usize)
    } else {
        let n = usize::from(first_len & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let bytes = input.get(2..2 + n)?;
        let len = bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, 2 + n)
    };
    let end = header.checked_add(len)?;
    let content = input.get(header..end)?;
    let raw = input.get(..end)?;
    let rest = input.get(end..)?;
    Some((Tlv { tag, content, raw }, rest))
}

/// Reads one TLV and requires a given tag.
pub(crate) fn expect(input: &[u8], tag: u8) -> Option<(Tlv<'_>, &[u8])> {
    let (t, rest) = read(input)?;
    (t.tag == tag).then_some((t, rest))
}

/// Reads all TLVs contained in `content`.
pub(crate) fn children(mut content: &[u8]) -> Option<Vec<Tlv<'_>>> {
    let mut out = Vec::new();
    while !content.is_empty() {
        let (t, rest) = read(content)?;
        out.push(t);
        content = rest;
    }
    Some(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn oid_round_trip() {
        for s in [
            "1.2.840.113549.1.1.11",
            "2.5.29.37",
            "0.9.2342.19200300.100.1.25",
            "1.3.6.1.4.1.311.20.2.3",
            "2.999.3",
        ] {
            let c = oid_content(s).unwrap();
            assert_eq!(oid_to_string(&c).unwrap(), s);
        }
        assert_eq!(oid_content("2.5.29.37").unwrap(), vec![0x55, 0x1d, 0x25]);
        for bad in ["", "1", "1.", "a.b", "3.1", "1.40", "01.2", "1.2.-3"] {
            assert!(oid_content(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn lengths_and_integers() {
        assert_eq!(tlv(OCTET_STRING, &[1, 2]), vec![4, 2, 1, 2]);
        let long = tlv(OCTET_STRING, &[0u8; 300]);
        assert_eq!(&long[..4], &[4, 0x82, 1, 44]);
        let (t, rest) = read(&long).unwrap();
        assert_eq!(t.content.len(), 300);
        assert!(rest.is_empty());
        assert_eq!(uint(&[0x00, 0x80]), vec![2, 2, 0, 0x80]);
        assert_eq!(uint(&[0x00, 0x00, 0x7f]), vec![2, 1, 0x7f]);
        assert_eq!(uint(&[]), vec![2, 1, 0]);
        assert!(read(&[0x30, 0x05, 1]).is_none());
    }

    #[test]
    fn set_of_is_sorted() {
        let s = set_of(vec![vec![0x13, 1, 0x42], vec![0x0c, 1, 0x41]]);
        assert_eq!(s, vec![0x31, 6, 0x0c, 1, 0x41, 0x13, 1, 0x42]);
    }
}
