//! Pure-Rust conversion of PKCS#8 private keys to the "traditional" encodings
//! (PKCS#1 `RSA PRIVATE KEY`, SEC1 `EC PRIVATE KEY`), equivalent to
//! `openssl pkey -traditional`.
//!
//! Only the few DER shapes we need are handled; anything unexpected panics,
//! which is fine for test-only code.

/// DER tag: INTEGER.
const TAG_INTEGER: u8 = 0x02;
/// DER tag: OCTET STRING.
const TAG_OCTET_STRING: u8 = 0x04;
/// DER tag: OBJECT IDENTIFIER.
const TAG_OID: u8 = 0x06;
/// DER tag: SEQUENCE (constructed).
const TAG_SEQUENCE: u8 = 0x30;
/// DER tag: `[0]` constructed, context-specific (ECPrivateKey parameters).
const TAG_CTX0: u8 = 0xa0;
/// DER tag: `[1]` constructed, context-specific (ECPrivateKey publicKey).
const TAG_CTX1: u8 = 0xa1;

/// rsaEncryption, 1.2.840.113549.1.1.1 (OID content bytes).
const OID_RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
/// id-ecPublicKey, 1.2.840.10045.2.1 (OID content bytes).
const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];

/// One parsed DER element: tag, the full encoding (tag+length+content), and content.
struct Tlv<'a> {
    tag: u8,
    full: &'a [u8],
    content: &'a [u8],
}

/// Parse one TLV from the front of `input`; returns it and the remaining bytes.
fn parse_tlv(input: &[u8]) -> (Tlv<'_>, &[u8]) {
    assert!(input.len() >= 2, "truncated DER");
    let tag = input[0];
    assert!(tag & 0x1f != 0x1f, "multi-byte DER tags are not supported");
    let first = input[1] as usize;
    let (len, header) = if first < 0x80 {
        (first, 2)
    } else {
        let n = first & 0x7f;
        assert!((1..=4).contains(&n), "unsupported DER length encoding");
        assert!(input.len() >= 2 + n, "truncated DER length");
        let len = input[2..2 + n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | *b as usize);
        (len, 2 + n)
    };
    assert!(input.len() >= header + len, "truncated DER content");
    let tlv = Tlv {
        tag,
        full: &input[..header + len],
        content: &input[header..header + len],
    };
    (tlv, &input[header + len..])
}

/// Parse all TLVs in `input` (the content of a constructed element).
fn parse_all(mut input: &[u8]) -> Vec<Tlv<'_>> {
    let mut out = Vec::new();
    while !input.is_empty() {
        let (tlv, rest) = parse_tlv(input);
        out.push(tlv);
        input = rest;
    }
    out
}

/// Encode a TLV with a definite (DER) length.
fn encode_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

/// The algorithm a PKCS#8 key is for, plus its raw private key payload.
pub(crate) enum Pkcs8Inner<'a> {
    /// RSA: `inner` is an RFC 8017 `RSAPrivateKey`.
    Rsa { inner: &'a [u8] },
    /// EC: `inner` is an RFC 5915 `ECPrivateKey`; `curve_oid` is the full
    /// OID TLV of the named curve from the AlgorithmIdentifier.
    Ec {
        inner: &'a [u8],
        curve_oid: &'a [u8],
    },
    /// Anything else (e.g. Ed25519), which has no traditional encoding.
    Other,
}

/// Split a PKCS#8 `PrivateKeyInfo`/`OneAsymmetricKey` into algorithm + payload.
pub(crate) fn parse_pkcs8(der: &[u8]) -> Pkcs8Inner<'_> {
    let (outer, rest) = parse_tlv(der);
    assert!(rest.is_empty(), "trailing data after PKCS#8");
    assert_eq!(outer.tag, TAG_SEQUENCE, "PKCS#8 is not a SEQUENCE");
    let fields = parse_all(outer.content);
    assert!(fields.len() >= 3, "PKCS#8 has too few fields");
    assert_eq!(fields[0].tag, TAG_INTEGER, "PKCS#8 version");
    assert_eq!(fields[1].tag, TAG_SEQUENCE, "PKCS#8 AlgorithmIdentifier");
    assert_eq!(fields[2].tag, TAG_OCTET_STRING, "PKCS#8 privateKey");
    let alg = parse_all(fields[1].content);
    assert!(
        !alg.is_empty() && alg[0].tag == TAG_OID,
        "AlgorithmIdentifier OID"
    );
    let inner = fields[2].content;
    if alg[0].content == OID_RSA_ENCRYPTION {
        Pkcs8Inner::Rsa { inner }
    } else if alg[0].content == OID_EC_PUBLIC_KEY {
        let curve = alg.get(1).expect("EC AlgorithmIdentifier without curve");
        assert_eq!(
            curve.tag, TAG_OID,
            "only namedCurve EC parameters are supported"
        );
        Pkcs8Inner::Ec {
            inner,
            curve_oid: curve.full,
        }
    } else {
        Pkcs8Inner::Other
    }
}

/// PKCS#8 (RSA) -> PKCS#1 `RSAPrivateKey` DER. Panics for non-RSA keys.
pub(crate) fn pkcs8_to_pkcs1(der: &[u8]) -> Vec<u8> {
    match parse_pkcs8(der) {
        Pkcs8Inner::Rsa { inner } => {
            // Sanity check: RSAPrivateKey is a SEQUENCE starting with INTEGER version.
            let (seq, _) = parse_tlv(inner);
            assert_eq!(seq.tag, TAG_SEQUENCE, "RSAPrivateKey is not a SEQUENCE");
            inner.to_vec()
        }
        _ => panic!("KeyFormat::Pkcs1 is only valid for RSA keys"),
    }
}

/// PKCS#8 (EC) -> SEC1 `ECPrivateKey` DER including the `[0]` namedCurve
/// parameters (as `openssl pkey -traditional` writes). Panics for non-EC keys.
pub(crate) fn pkcs8_to_sec1(der: &[u8]) -> Vec<u8> {
    let (inner, curve_oid) = match parse_pkcs8(der) {
        Pkcs8Inner::Ec { inner, curve_oid } => (inner, curve_oid),
        _ => panic!("KeyFormat::Sec1 is only valid for EC keys"),
    };
    let (seq, _) = parse_tlv(inner);
    assert_eq!(seq.tag, TAG_SEQUENCE, "ECPrivateKey is not a SEQUENCE");
    let fields = parse_all(seq.content);
    assert!(fields.len() >= 2, "ECPrivateKey has too few fields");
    assert_eq!(fields[0].tag, TAG_INTEGER, "ECPrivateKey version");
    assert_eq!(fields[1].tag, TAG_OCTET_STRING, "ECPrivateKey privateKey");
    let params = fields.iter().find(|f| f.tag == TAG_CTX0);
    let public = fields.iter().find(|f| f.tag == TAG_CTX1);

    let mut content = Vec::new();
    content.extend_from_slice(fields[0].full);
    content.extend_from_slice(fields[1].full);
    match params {
        Some(p) => content.extend_from_slice(p.full),
        None => content.extend_from_slice(&encode_tlv(TAG_CTX0, curve_oid)),
    }
    if let Some(p) = public {
        content.extend_from_slice(p.full);
    }
    encode_tlv(TAG_SEQUENCE, &content)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tlv_roundtrip_long_lengths() {
        for len in [0usize, 1, 127, 128, 255, 256, 70_000] {
            let content = vec![0x5a; len];
            let enc = encode_tlv(TAG_OCTET_STRING, &content);
            let (tlv, rest) = parse_tlv(&enc);
            assert!(rest.is_empty());
            assert_eq!(tlv.tag, TAG_OCTET_STRING);
            assert_eq!(tlv.content, &content[..]);
            assert_eq!(tlv.full, &enc[..]);
        }
    }
}
