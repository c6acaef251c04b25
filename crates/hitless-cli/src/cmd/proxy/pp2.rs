//! The PROXY protocol version 2 header `proxy server --proxy-protocol` sends to the target
//! before the first byte of the client's data, so that the backend knows who called: the
//! client's address and what the TLS layer established (HAProxy's specification,
//! `doc/proxy-protocol.txt`, sections 2.2 and 2.2.5).
//!
//! Layout (all integers big-endian):
//!
//! ```text
//! 0D 0A 0D 0A 00 0D 0A 51 55 49 54 0A   signature (12 bytes)
//! 21                                     version 2, command PROXY
//! 11 | 21                                TCP over IPv4 | TCP over IPv6
//! LL LL                                  length of what follows
//! src addr, dst addr, src port, dst port (4+4+2+2 or 16+16+2+2 bytes)
//! TLVs: type (1), length (2), value
//!   0x02 PP2_TYPE_AUTHORITY  the SNI the client sent (if any)
//!   0x20 PP2_TYPE_SSL        client (1): 0x01 SSL | 0x02 CERT_CONN | 0x04 CERT_SESS
//!                            verify (4): 0 = the client certificate verified
//!                            sub-TLVs:
//!     0x21 PP2_SUBTYPE_SSL_VERSION  e.g. "TLSv1.3"
//!     0x22 PP2_SUBTYPE_SSL_CN       the client certificate's subject common name
//!     0x23 PP2_SUBTYPE_SSL_CIPHER   e.g. "TLS13_AES_128_GCM_SHA256"
//! ```
//!
//! Only verified clients reach the target, so `verify` is always 0 and `CERT_SESS` is always
//! set; `CERT_CONN` is set when the certificate was sent on this connection (a full
//! handshake), not on a resumed one.

use std::net::{IpAddr, SocketAddr};

/// The 12-byte signature that starts every version 2 header.
pub const SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];
/// TLV: the authority (SNI host name).
pub const PP2_TYPE_AUTHORITY: u8 = 0x02;
/// TLV: TLS information.
pub const PP2_TYPE_SSL: u8 = 0x20;
/// Sub-TLV of [`PP2_TYPE_SSL`]: the TLS version.
pub const PP2_SUBTYPE_SSL_VERSION: u8 = 0x21;
/// Sub-TLV of [`PP2_TYPE_SSL`]: the client certificate's subject common name.
pub const PP2_SUBTYPE_SSL_CN: u8 = 0x22;
/// Sub-TLV of [`PP2_TYPE_SSL`]: the cipher suite.
pub const PP2_SUBTYPE_SSL_CIPHER: u8 = 0x23;
/// `client` bit: the connection is TLS.
pub const PP2_CLIENT_SSL: u8 = 0x01;
/// `client` bit: a client certificate was sent on this connection.
pub const PP2_CLIENT_CERT_CONN: u8 = 0x02;
/// `client` bit: a client certificate was sent in this TLS session (possibly resumed).
pub const PP2_CLIENT_CERT_SESS: u8 = 0x04;

/// What the TLS layer says about a connection.
#[derive(Debug, Clone, Default)]
pub struct TlsFacts {
    /// The SNI the client sent.
    pub sni: Option<String>,
    /// e.g. `TLSv1.3`.
    pub version: Option<String>,
    /// e.g. `TLS13_AES_128_GCM_SHA256`.
    pub cipher: Option<String>,
    /// The client certificate's subject CN.
    pub cn: Option<String>,
    /// A certificate was presented on this connection (a full handshake).
    pub cert_on_connection: bool,
}

/// The header for a connection from `source` to `destination` (the proxy's listening
/// address). Mixed families are sent as IPv6 (IPv4-mapped).
pub fn header(source: SocketAddr, destination: SocketAddr, tls: &TlsFacts) -> Vec<u8> {
    let mut body = Vec::with_capacity(128);
    let family = match (source.ip(), destination.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            body.extend_from_slice(&s.octets());
            body.extend_from_slice(&d.octets());
            0x11
        }
        (s, d) => {
            body.extend_from_slice(&v6(s).octets());
            body.extend_from_slice(&v6(d).octets());
            0x21
        }
    };
    body.extend_from_slice(&source.port().to_be_bytes());
    body.extend_from_slice(&destination.port().to_be_bytes());

    if let Some(sni) = &tls.sni {
        tlv(&mut body, PP2_TYPE_AUTHORITY, sni.as_bytes());
    }
    let mut ssl = Vec::with_capacity(64);
    let mut client = PP2_CLIENT_SSL | PP2_CLIENT_CERT_SESS;
    if tls.cert_on_connection {
        client |= PP2_CLIENT_CERT_CONN;
    }
    ssl.push(client);
    ssl.extend_from_slice(&0u32.to_be_bytes());
    if let Some(v) = &tls.version {
        tlv(&mut ssl, PP2_SUBTYPE_SSL_VERSION, v.as_bytes());
    }
    if let Some(cn) = &tls.cn {
        tlv(&mut ssl, PP2_SUBTYPE_SSL_CN, cn.as_bytes());
    }
    if let Some(c) = &tls.cipher {
        tlv(&mut ssl, PP2_SUBTYPE_SSL_CIPHER, c.as_bytes());
    }
    tlv(&mut body, PP2_TYPE_SSL, &ssl);

    let mut out = Vec::with_capacity(16 + body.len());
    out.extend_from_slice(&SIGNATURE);
    out.push(0x21);
    out.push(family);
    // Bounded: an SNI is at most 255 bytes, a CN at most 64, names of versions and suites
    // short; far below 65535.
    let len = u16::try_from(body.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&body);
    out
}

fn v6(ip: IpAddr) -> std::net::Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// Appends one TLV; a value longer than 65535 bytes is cut (never the case for what is sent).
fn tlv(out: &mut Vec<u8>, kind: u8, value: &[u8]) {
    let value = &value[..value.len().min(usize::from(u16::MAX))];
    out.push(kind);
    out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    out.extend_from_slice(value);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A parse of the header as a backend would do it, independent of the writer.
    fn tlvs(mut b: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        while b.len() >= 3 {
            let len = usize::from(u16::from_be_bytes([b[1], b[2]]));
            out.push((b[0], b[3..3 + len].to_vec()));
            b = &b[3 + len..];
        }
        assert!(b.is_empty(), "trailing bytes");
        out
    }

    #[test]
    fn an_ipv4_header_carries_addresses_and_the_ssl_tlv() {
        let facts = TlsFacts {
            sni: Some("api.internal".into()),
            version: Some("TLSv1.3".into()),
            cipher: Some("TLS13_AES_128_GCM_SHA256".into()),
            cn: Some("billing".into()),
            cert_on_connection: true,
        };
        let h = header(
            "10.1.2.3:40000".parse().unwrap(),
            "127.0.0.1:8443".parse().unwrap(),
            &facts,
        );
        assert_eq!(&h[..12], &SIGNATURE);
        assert_eq!(h[12], 0x21);
        assert_eq!(h[13], 0x11);
        let len = usize::from(u16::from_be_bytes([h[14], h[15]]));
        assert_eq!(h.len(), 16 + len);
        assert_eq!(&h[16..20], &[10, 1, 2, 3]);
        assert_eq!(&h[20..24], &[127, 0, 0, 1]);
        assert_eq!(u16::from_be_bytes([h[24], h[25]]), 40000);
        assert_eq!(u16::from_be_bytes([h[26], h[27]]), 8443);
        let t = tlvs(&h[28..]);
        assert_eq!(t[0], (PP2_TYPE_AUTHORITY, b"api.internal".to_vec()));
        assert_eq!(t[1].0, PP2_TYPE_SSL);
        let ssl = &t[1].1;
        assert_eq!(ssl[0], 0x07, "SSL | CERT_CONN | CERT_SESS");
        assert_eq!(&ssl[1..5], &[0, 0, 0, 0], "verified");
        let sub = tlvs(&ssl[5..]);
        assert!(sub.contains(&(PP2_SUBTYPE_SSL_VERSION, b"TLSv1.3".to_vec())));
        assert!(sub.contains(&(PP2_SUBTYPE_SSL_CN, b"billing".to_vec())));
        assert!(sub.contains(&(PP2_SUBTYPE_SSL_CIPHER, b"TLS13_AES_128_GCM_SHA256".to_vec())));
    }

    #[test]
    fn mixed_families_are_sent_as_ipv6_and_a_resumed_session_is_not_cert_conn() {
        let h = header(
            "[2001:db8::1]:5000".parse().unwrap(),
            "127.0.0.1:443".parse().unwrap(),
            &TlsFacts::default(),
        );
        assert_eq!(h[13], 0x21);
        assert_eq!(
            &h[16..32],
            &"2001:db8::1"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets()
        );
        assert_eq!(
            &h[32..48],
            &std::net::Ipv4Addr::LOCALHOST.to_ipv6_mapped().octets()
        );
        assert_eq!(u16::from_be_bytes([h[48], h[49]]), 5000);
        assert_eq!(u16::from_be_bytes([h[50], h[51]]), 443);
        let t = tlvs(&h[52..]);
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].1, vec![0x05, 0, 0, 0, 0]);
    }
}
