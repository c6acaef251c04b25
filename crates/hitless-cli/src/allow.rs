//! Who a peer is, by the names in its certificate, and whether a rule admits it: the
//! `--allow-*` rules of `proxy server` and the `--verify-*` pins of `proxy client` (and, later,
//! SPIFFE ID authorization, which matches URI SANs the same way).
//!
//! Trust (does the chain verify against the current CAs and CRLs?) is decided elsewhere, by the
//! library's verifiers, during the handshake; this module decides only *which* trusted peers
//! are let through, after it. It knows certificates and names, nothing of TLS or sockets.
//!
//! Matching:
//! - `uri`: a URI SAN equal to the rule, or, for a rule ending in `/*`, a URI SAN starting with
//!   the rule without its `*` and naming at least one more character (`spiffe://td/ns/*` admits
//!   `spiffe://td/ns/a` and `spiffe://td/ns/a/b`, not `spiffe://td/ns/` nor `spiffe://td/nsx`).
//!   Case-sensitive, as SPIFFE IDs are compared.
//! - `dns`: a DNS SAN equal to the rule, ASCII case-insensitive, a trailing dot ignored. No
//!   wildcard expansion: a certificate naming `*.example.com` matches only the rule
//!   `*.example.com`.
//! - `cn`, `ou`: a subject common name or organizational unit equal to the rule (exact).
//! - `all`: every peer (only with an explicit `--allow-all`).
//!
//! A peer is admitted if any rule matches.

use anyhow::{bail, Context};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// The names a certificate gives its subject.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerNames {
    /// Subject common names.
    pub cns: Vec<String>,
    /// Subject organizational units.
    pub ous: Vec<String>,
    /// DNS subject alternative names.
    pub dns: Vec<String>,
    /// URI subject alternative names (SPIFFE IDs among them).
    pub uris: Vec<String>,
}

impl PeerNames {
    /// Reads the names of a DER certificate.
    pub fn from_der(der: &[u8]) -> anyhow::Result<PeerNames> {
        let (_, cert) =
            X509Certificate::from_der(der).context("the peer certificate does not parse")?;
        let text = |attr: &x509_parser::x509::AttributeTypeAndValue<'_>| {
            attr.as_str().map(str::to_owned).ok()
        };
        let mut names = PeerNames {
            cns: cert.subject().iter_common_name().filter_map(text).collect(),
            ous: cert
                .subject()
                .iter_organizational_unit()
                .filter_map(text)
                .collect(),
            ..PeerNames::default()
        };
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(n) => names.dns.push((*n).to_owned()),
                    GeneralName::URI(u) => names.uris.push((*u).to_owned()),
                    _ => {}
                }
            }
        }
        Ok(names)
    }

    /// The first common name, for logs and the PROXY protocol header.
    pub fn cn(&self) -> Option<&str> {
        self.cns.first().map(String::as_str)
    }

    /// A short description for logs: the first URI, else the first DNS name, else the CN.
    pub fn describe(&self) -> String {
        self.uris
            .first()
            .or(self.dns.first())
            .map(|n| n.to_string())
            .or_else(|| self.cn().map(|cn| format!("CN={cn}")))
            .unwrap_or_else(|| "(no names)".into())
    }
}

/// One rule naming the peers it admits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// Every peer the trust accepts.
    All,
    /// A subject common name.
    Cn(String),
    /// A subject organizational unit.
    Ou(String),
    /// A DNS SAN (lowercase, no trailing dot).
    Dns(String),
    /// A URI SAN, exactly.
    Uri(String),
    /// A URI SAN under this prefix (the rule without its trailing `*`, ending in `/`).
    UriPrefix(String),
}

impl Rule {
    /// A URI rule: exact, or a prefix when it ends in `/*`. A `*` anywhere else is refused
    /// (it would otherwise silently match nothing).
    pub fn uri(pattern: &str) -> anyhow::Result<Rule> {
        if pattern.is_empty() {
            bail!("an empty URI matches nothing");
        }
        if let Some(prefix) = pattern.strip_suffix('*') {
            if !prefix.ends_with('/') || prefix.contains('*') {
                bail!("{pattern}: a wildcard is allowed only as a trailing \"/*\"");
            }
            if !prefix.contains("://") {
                bail!("{pattern}: not a URI (expected e.g. spiffe://trust-domain/path/*)");
            }
            return Ok(Rule::UriPrefix(prefix.to_owned()));
        }
        if pattern.contains('*') {
            bail!("{pattern}: a wildcard is allowed only as a trailing \"/*\"");
        }
        if !pattern.contains(':') {
            bail!("{pattern}: not a URI (expected e.g. spiffe://trust-domain/path)");
        }
        Ok(Rule::Uri(pattern.to_owned()))
    }

    /// A DNS name rule (compared case-insensitively, a trailing dot ignored).
    pub fn dns(name: &str) -> anyhow::Result<Rule> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if name.is_empty() {
            bail!("an empty DNS name matches nothing");
        }
        Ok(Rule::Dns(name))
    }

    /// Does this rule admit a peer with these names?
    pub fn admits(&self, peer: &PeerNames) -> bool {
        match self {
            Rule::All => true,
            Rule::Cn(cn) => peer.cns.iter().any(|c| c == cn),
            Rule::Ou(ou) => peer.ous.iter().any(|o| o == ou),
            Rule::Dns(name) => peer
                .dns
                .iter()
                .any(|d| d.trim_end_matches('.').eq_ignore_ascii_case(name)),
            Rule::Uri(uri) => peer.uris.iter().any(|u| u == uri),
            Rule::UriPrefix(prefix) => peer
                .uris
                .iter()
                .any(|u| u.len() > prefix.len() && u.starts_with(prefix.as_str())),
        }
    }
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rule::All => f.write_str("all"),
            Rule::Cn(v) => write!(f, "cn={v}"),
            Rule::Ou(v) => write!(f, "ou={v}"),
            Rule::Dns(v) => write!(f, "dns={v}"),
            Rule::Uri(v) => write!(f, "uri={v}"),
            Rule::UriPrefix(v) => write!(f, "uri={v}*"),
        }
    }
}

/// A set of rules: a peer is admitted if any of them matches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules(Vec<Rule>);

impl Rules {
    /// Rules from the flag values of each kind.
    pub fn parse(
        all: bool,
        cns: &[String],
        ous: &[String],
        dns: &[String],
        uris: &[String],
    ) -> anyhow::Result<Rules> {
        let mut rules = Vec::new();
        if all {
            rules.push(Rule::All);
        }
        rules.extend(cns.iter().map(|c| Rule::Cn(c.clone())));
        rules.extend(ous.iter().map(|o| Rule::Ou(o.clone())));
        for name in dns {
            rules.push(Rule::dns(name)?);
        }
        for uri in uris {
            rules.push(Rule::uri(uri)?);
        }
        Ok(Rules(rules))
    }

    /// No rule at all.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The first rule admitting the peer, if any.
    pub fn admitting(&self, peer: &PeerNames) -> Option<&Rule> {
        self.0.iter().find(|r| r.admits(peer))
    }

    /// The rules as `kind=value` words, for logs and status.
    pub fn describe(&self) -> Vec<String> {
        self.0.iter().map(Rule::to_string).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> PeerNames {
        PeerNames {
            cns: vec!["billing".into()],
            ous: vec!["payments".into()],
            dns: vec!["Billing.Internal.".into()],
            uris: vec!["spiffe://example.org/ns/prod/sa/billing".into()],
        }
    }

    #[test]
    fn uri_rules_match_exactly_or_by_a_trailing_slash_star() {
        let p = peer();
        assert!(Rule::uri("spiffe://example.org/ns/prod/sa/billing")
            .unwrap()
            .admits(&p));
        assert!(!Rule::uri("spiffe://example.org/ns/prod/sa/billin")
            .unwrap()
            .admits(&p));
        assert!(!Rule::uri("spiffe://example.org/ns/prod/sa/billing/x")
            .unwrap()
            .admits(&p));
        // Case matters in SPIFFE IDs.
        assert!(!Rule::uri("spiffe://example.org/ns/prod/sa/Billing")
            .unwrap()
            .admits(&p));
        assert!(Rule::uri("spiffe://example.org/ns/prod/*")
            .unwrap()
            .admits(&p));
        assert!(Rule::uri("spiffe://example.org/*").unwrap().admits(&p));
        assert!(!Rule::uri("spiffe://example.org/ns/staging/*")
            .unwrap()
            .admits(&p));
        // A prefix is a path prefix, not a string prefix.
        assert!(!Rule::uri("spiffe://example.org/ns/pro/*")
            .unwrap()
            .admits(&p));
        // The prefix itself is not under itself.
        let bare = PeerNames {
            uris: vec!["spiffe://example.org/ns/".into()],
            ..PeerNames::default()
        };
        assert!(!Rule::uri("spiffe://example.org/ns/*")
            .unwrap()
            .admits(&bare));
    }

    #[test]
    fn misplaced_wildcards_and_non_uris_are_refused() {
        for bad in [
            "spiffe://example.org/*/billing",
            "spiffe://example.org/ns*",
            "spiffe://*.org/ns/*",
            "billing",
            "",
            "/*",
        ] {
            assert!(Rule::uri(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn dns_rules_ignore_case_and_a_trailing_dot() {
        let p = peer();
        assert!(Rule::dns("billing.internal").unwrap().admits(&p));
        assert!(Rule::dns("BILLING.internal.").unwrap().admits(&p));
        assert!(!Rule::dns("internal").unwrap().admits(&p));
        assert!(!Rule::dns("x.billing.internal").unwrap().admits(&p));
        assert!(Rule::dns("").is_err());
    }

    #[test]
    fn cn_and_ou_rules_are_exact() {
        let p = peer();
        assert!(Rule::Cn("billing".into()).admits(&p));
        assert!(!Rule::Cn("Billing".into()).admits(&p));
        assert!(!Rule::Cn("bill".into()).admits(&p));
        assert!(Rule::Ou("payments".into()).admits(&p));
        assert!(!Rule::Ou("billing".into()).admits(&p));
    }

    #[test]
    fn a_set_admits_if_any_rule_matches_and_an_empty_set_admits_nobody() {
        let p = peer();
        let none = Rules::parse(false, &[], &[], &[], &[]).unwrap();
        assert!(none.is_empty());
        assert_eq!(none.admitting(&p), None);
        let some = Rules::parse(
            false,
            &["other".into()],
            &[],
            &["billing.internal".into()],
            &[],
        )
        .unwrap();
        assert_eq!(
            some.admitting(&p),
            Some(&Rule::Dns("billing.internal".into()))
        );
        let miss = Rules::parse(false, &["other".into()], &["ops".into()], &[], &[]).unwrap();
        assert_eq!(miss.admitting(&p), None);
        let all = Rules::parse(true, &[], &[], &[], &[]).unwrap();
        assert_eq!(all.admitting(&PeerNames::default()), Some(&Rule::All));
    }

    #[test]
    fn names_are_read_from_a_certificate() {
        let mut params =
            rcgen::CertificateParams::new(vec!["svc.example.com".to_string()]).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "svc");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationalUnitName, "team-a");
        params.subject_alt_names.push(rcgen::SanType::URI(
            rcgen::string::Ia5String::try_from("spiffe://example.org/svc").expect("uri"),
        ));
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        let names = PeerNames::from_der(cert.der()).expect("parse");
        assert_eq!(names.cns, ["svc"]);
        assert_eq!(names.ous, ["team-a"]);
        assert_eq!(names.dns, ["svc.example.com"]);
        assert_eq!(names.uris, ["spiffe://example.org/svc"]);
        assert!(PeerNames::from_der(b"not a certificate").is_err());
    }
}
