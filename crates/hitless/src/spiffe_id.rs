//! SPIFFE IDs: parsing by the SPIFFE ID specification, the ID of an X.509-SVID, and a small
//! matcher (exact IDs, or every ID under a path) for authorizing peers by SPIFFE ID.
//!
//! This module knows URIs and certificates, nothing about where they come from or about
//! rustls: a verifier (or a command's `--allow-uri`) asks [`SpiffeIdMatcher::matches_certificate`]
//! with the peer's end-entity certificate.
//!
//! ```
//! use hitless::{SpiffeId, SpiffeIdMatcher};
//!
//! let allow = SpiffeIdMatcher::new(["spiffe://example.org/ns/prod/*", "spiffe://example.org/admin"])?;
//! assert!(allow.matches(&SpiffeId::parse("spiffe://example.org/ns/prod/web")?));
//! assert!(allow.matches(&SpiffeId::parse("spiffe://example.org/admin")?));
//! assert!(!allow.matches(&SpiffeId::parse("spiffe://example.org/ns/prodx/web")?));
//! assert!(!allow.matches(&SpiffeId::parse("spiffe://example.org/admin/x")?));
//! # Ok::<(), hitless::InvalidSpiffeId>(())
//! ```

use std::fmt;
use std::str::FromStr;

use x509_parser::extensions::GeneralName;

/// The scheme and authority separator every SPIFFE ID starts with.
const SCHEME: &str = "spiffe://";
/// Longest SPIFFE ID, in bytes (SPIFFE ID specification, section 2.3).
const MAX_ID_LEN: usize = 2048;
/// Longest trust domain name, in bytes (SPIFFE ID specification, section 2.1).
const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// A valid SPIFFE ID: `spiffe://trust-domain/path`, the path possibly empty (the ID of the
/// trust domain itself).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    id: String,
    /// Where the path starts in `id` (`id.len()` when there is none).
    path_at: usize,
}

/// Why a string is not a SPIFFE ID, a certificate is not an X.509-SVID, or a pattern is not a
/// SPIFFE ID pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidSpiffeId {
    /// What was given (truncated when very long), or what the certificate holds.
    pub input: String,
    /// Why it was refused.
    pub reason: String,
}

impl fmt::Display for InvalidSpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.input, self.reason)
    }
}

impl std::error::Error for InvalidSpiffeId {}

fn invalid(input: &str, reason: impl Into<String>) -> InvalidSpiffeId {
    const SHOWN: usize = 256;
    let input = if input.len() > SHOWN {
        let mut end = SHOWN;
        while !input.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}...", &input[..end])
    } else {
        input.to_string()
    };
    InvalidSpiffeId {
        input,
        reason: reason.into(),
    }
}

impl SpiffeId {
    /// Parses `s` by the SPIFFE ID specification: scheme `spiffe` (lowercase), a trust domain of
    /// lowercase letters, digits, `.`, `-` and `_` (no port, no user), then an optional path
    /// of `/`-separated segments of letters, digits, `.`, `-` and `_`, none empty (so no
    /// trailing `/`), none `.` or `..`; no query, no fragment, no percent-encoding; at most
    /// 2048 bytes.
    pub fn parse(s: &str) -> Result<SpiffeId, InvalidSpiffeId> {
        if s.len() > MAX_ID_LEN {
            return Err(invalid(
                s,
                format!("longer than {MAX_ID_LEN} bytes ({} bytes)", s.len()),
            ));
        }
        let Some(rest) = s.strip_prefix(SCHEME) else {
            return Err(invalid(
                s,
                if s.to_ascii_lowercase().starts_with(SCHEME) {
                    "the scheme must be lowercase \"spiffe\""
                } else {
                    "not a SPIFFE ID: it must start with \"spiffe://\""
                },
            ));
        };
        let (trust_domain, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        check_trust_domain(s, trust_domain)?;
        check_path(s, path)?;
        Ok(SpiffeId {
            id: s.to_string(),
            path_at: SCHEME.len() + trust_domain.len(),
        })
    }

    /// The trust domain name (`example.org` for `spiffe://example.org/web`).
    pub fn trust_domain(&self) -> &str {
        &self.id[SCHEME.len()..self.path_at]
    }

    /// The path (`/web` for `spiffe://example.org/web`), empty for a trust domain's own ID.
    pub fn path(&self) -> &str {
        &self.id[self.path_at..]
    }

    /// The whole ID.
    pub fn as_str(&self) -> &str {
        &self.id
    }

    /// The SPIFFE ID of an X.509-SVID, given its end-entity certificate (DER), by the X.509-SVID
    /// specification: exactly one URI SAN, and it is a valid SPIFFE ID. (That the certificate
    /// is not a CA and chains to its trust domain's bundle is checked where the SVID is
    /// accepted, not here.)
    pub fn from_certificate(der: &[u8]) -> Result<SpiffeId, InvalidSpiffeId> {
        let uris = uri_sans(der)?;
        match uris.as_slice() {
            [uri] => SpiffeId::parse(uri),
            [] => Err(invalid(
                "certificate",
                "no URI SAN: an X.509-SVID carries its SPIFFE ID as its only URI SAN",
            )),
            _ => Err(invalid(
                &uris.join(", "),
                format!(
                    "{} URI SANs: an X.509-SVID has exactly one, its SPIFFE ID",
                    uris.len()
                ),
            )),
        }
    }
}

/// The URI SANs of a certificate.
fn uri_sans(der: &[u8]) -> Result<Vec<String>, InvalidSpiffeId> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| invalid("certificate", format!("cannot parse it: {e}")))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| invalid("certificate", format!("bad subjectAltName: {e}")))?;
    Ok(san
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some((*u).to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}

fn check_trust_domain(id: &str, td: &str) -> Result<(), InvalidSpiffeId> {
    if td.is_empty() {
        return Err(invalid(id, "the trust domain is empty"));
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(invalid(
            id,
            format!("the trust domain is longer than {MAX_TRUST_DOMAIN_LEN} bytes"),
        ));
    }
    if let Some(c) = td
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '-' | '_'))
    {
        let why = match c {
            'A'..='Z' => "the trust domain must be lowercase".to_string(),
            ':' => "the trust domain must not have a port".to_string(),
            '@' => "the trust domain must not have user information".to_string(),
            '?' | '#' => "a SPIFFE ID has no query or fragment".to_string(),
            _ => format!(
                "{c:?} in the trust domain (only lowercase letters, digits, '.', '-' and '_')"
            ),
        };
        return Err(invalid(id, why));
    }
    Ok(())
}

fn check_path(id: &str, path: &str) -> Result<(), InvalidSpiffeId> {
    if path.is_empty() {
        return Ok(());
    }
    // `path` starts with '/': the first split item is the empty string before it.
    for segment in path.split('/').skip(1) {
        match segment {
            "" => {
                return Err(invalid(
                    id,
                    "empty path segment (a doubled or trailing '/')",
                ))
            }
            "." | ".." => return Err(invalid(id, "'.' and '..' path segments are not allowed")),
            _ => {}
        }
        if let Some(c) = segment
            .chars()
            .find(|c| !matches!(c, 'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_'))
        {
            let why = match c {
                '?' | '#' => "a SPIFFE ID has no query or fragment".to_string(),
                '%' => "a SPIFFE ID has no percent-encoding".to_string(),
                _ => format!(
                    "{c:?} in the path (only letters, digits, '.', '-' and '_' between '/')"
                ),
            };
            return Err(invalid(id, why));
        }
    }
    Ok(())
}

impl FromStr for SpiffeId {
    type Err = InvalidSpiffeId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SpiffeId::parse(s)
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

impl AsRef<str> for SpiffeId {
    fn as_ref(&self) -> &str {
        &self.id
    }
}

/// One pattern of a [`SpiffeIdMatcher`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    /// This ID only.
    Exact(SpiffeId),
    /// Every ID of this trust domain whose path starts with these segments and has at least
    /// one more (`spiffe://td/ns/*`; `spiffe://td/*` is every workload of the trust domain).
    Under {
        trust_domain: String,
        /// The prefix path (empty, or `/ns/x`), without the final `/*`.
        prefix: String,
    },
}

/// Which SPIFFE IDs are allowed: a list of patterns, each an exact SPIFFE ID
/// (`spiffe://example.org/ns/prod/web`) or an ID followed by `/*`
/// (`spiffe://example.org/ns/prod/*`: every ID under that path, matched on whole segments, so
/// not `spiffe://example.org/ns/production/x` and not `spiffe://example.org/ns/prod` itself).
/// An ID matches when any pattern matches it.
///
/// Use it in a verifier with [`SpiffeIdMatcher::matches_certificate`] on the peer's end-entity
/// certificate, after the chain has been verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpiffeIdMatcher {
    patterns: Vec<Pattern>,
    spelled: Vec<String>,
}

impl SpiffeIdMatcher {
    /// A matcher allowing what `patterns` say; each must be a valid SPIFFE ID, optionally
    /// followed by `/*`. An empty list matches nothing.
    pub fn new<I, S>(patterns: I) -> Result<SpiffeIdMatcher, InvalidSpiffeId>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut matcher = SpiffeIdMatcher {
            patterns: Vec::new(),
            spelled: Vec::new(),
        };
        for p in patterns {
            let p = p.as_ref();
            matcher.patterns.push(parse_pattern(p)?);
            matcher.spelled.push(p.to_string());
        }
        Ok(matcher)
    }

    /// Whether `id` is allowed.
    pub fn matches(&self, id: &SpiffeId) -> bool {
        self.patterns.iter().any(|p| match p {
            Pattern::Exact(e) => e == id,
            Pattern::Under {
                trust_domain,
                prefix,
            } => {
                id.trust_domain() == trust_domain
                    && id
                        .path()
                        .strip_prefix(prefix.as_str())
                        .is_some_and(|rest| rest.len() > 1 && rest.starts_with('/'))
            }
        })
    }

    /// Whether `id` is a valid SPIFFE ID and allowed (an invalid one never is).
    pub fn matches_str(&self, id: &str) -> bool {
        SpiffeId::parse(id).is_ok_and(|id| self.matches(&id))
    }

    /// The SPIFFE ID of the X.509-SVID `end_entity_der` if it is allowed; an error saying why
    /// not otherwise (no or several URI SANs, an invalid ID, or an ID no pattern allows).
    pub fn check_certificate(&self, end_entity_der: &[u8]) -> Result<SpiffeId, InvalidSpiffeId> {
        let id = SpiffeId::from_certificate(end_entity_der)?;
        if self.matches(&id) {
            Ok(id)
        } else {
            Err(invalid(
                id.as_str(),
                format!("not allowed (allowed: {})", self.spelled.join(", ")),
            ))
        }
    }

    /// Whether the X.509-SVID `end_entity_der` carries an allowed SPIFFE ID.
    pub fn matches_certificate(&self, end_entity_der: &[u8]) -> bool {
        self.check_certificate(end_entity_der).is_ok()
    }

    /// The patterns, as given.
    pub fn patterns(&self) -> &[String] {
        &self.spelled
    }
}

fn parse_pattern(p: &str) -> Result<Pattern, InvalidSpiffeId> {
    match p.strip_suffix("/*") {
        Some(base) => {
            let base = SpiffeId::parse(base).map_err(|e| InvalidSpiffeId {
                input: p.to_string(),
                reason: e.reason,
            })?;
            Ok(Pattern::Under {
                trust_domain: base.trust_domain().to_string(),
                prefix: base.path().to_string(),
            })
        }
        None if p.contains('*') => Err(invalid(
            p,
            "'*' is only allowed as a whole last segment (spiffe://td/path/*)",
        )),
        None => Ok(Pattern::Exact(SpiffeId::parse(p)?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_ids() {
        for (s, td, path) in [
            ("spiffe://example.org", "example.org", ""),
            ("spiffe://example.org/web", "example.org", "/web"),
            (
                "spiffe://a-b_c.d9/ns/Prod/sa/web-1.v2",
                "a-b_c.d9",
                "/ns/Prod/sa/web-1.v2",
            ),
            ("spiffe://td/...x/a..b", "td", "/...x/a..b"),
        ] {
            let id = SpiffeId::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(id.trust_domain(), td, "{s}");
            assert_eq!(id.path(), path, "{s}");
            assert_eq!(id.as_str(), s);
            assert_eq!(id.to_string(), s);
            assert_eq!(s.parse::<SpiffeId>().unwrap(), id);
        }
    }

    #[test]
    fn refuses_invalid_ids_with_the_reason() {
        for (s, reason) in [
            ("", "must start with \"spiffe://\""),
            ("https://example.org/web", "must start with \"spiffe://\""),
            ("SPIFFE://example.org/web", "scheme must be lowercase"),
            ("spiffe:/example.org/web", "must start with \"spiffe://\""),
            ("spiffe://", "trust domain is empty"),
            ("spiffe:///web", "trust domain is empty"),
            ("spiffe://Example.org/web", "must be lowercase"),
            ("spiffe://example.org:8080/web", "port"),
            ("spiffe://user@example.org/web", "user information"),
            ("spiffe://example.org/", "empty path segment"),
            ("spiffe://example.org//web", "empty path segment"),
            ("spiffe://example.org/web/", "empty path segment"),
            ("spiffe://example.org/./web", "'.' and '..'"),
            ("spiffe://example.org/ns/..", "'.' and '..'"),
            ("spiffe://example.org/web?x=1", "no query or fragment"),
            ("spiffe://example.org/web#frag", "no query or fragment"),
            ("spiffe://example.org?x", "no query or fragment"),
            ("spiffe://example.org/w%20b", "percent-encoding"),
            ("spiffe://example.org/w b", "in the path"),
            ("spiffe://exa mple.org/web", "in the trust domain"),
        ] {
            let e = SpiffeId::parse(s).expect_err(s);
            assert!(e.reason.contains(reason), "{s}: {e}");
            assert_eq!(e.input, s);
        }
        let long = format!("spiffe://example.org/{}", "a".repeat(2100));
        assert!(SpiffeId::parse(&long)
            .unwrap_err()
            .reason
            .contains("longer than 2048"));
        let long_td = format!("spiffe://{}/x", "a".repeat(256));
        assert!(SpiffeId::parse(&long_td)
            .unwrap_err()
            .reason
            .contains("longer than 255"));
        // The longest allowed trust domain is fine.
        SpiffeId::parse(&format!("spiffe://{}/x", "a".repeat(255))).unwrap();
    }

    #[test]
    fn matcher_exact_and_prefix_on_whole_segments() {
        let m = SpiffeIdMatcher::new([
            "spiffe://example.org/ns/prod/*",
            "spiffe://example.org/admin",
            "spiffe://other.org/*",
        ])
        .unwrap();
        for (id, want) in [
            ("spiffe://example.org/ns/prod/web", true),
            ("spiffe://example.org/ns/prod/web/extra", true),
            ("spiffe://example.org/ns/prod", false),
            ("spiffe://example.org/ns/production/web", false),
            ("spiffe://example.org/ns/prodweb", false),
            ("spiffe://example.org/admin", true),
            ("spiffe://example.org/admin/x", false),
            ("spiffe://example.org/Admin", false),
            ("spiffe://example.org", false),
            ("spiffe://evil.org/ns/prod/web", false),
            ("spiffe://example.org.evil/ns/prod/web", false),
            ("spiffe://other.org/anything", true),
            ("spiffe://other.org/a/b/c", true),
            ("spiffe://other.org", false),
            ("spiffe://example.org/ns/prod/../admin", false),
            ("spiffe://example.org/ns/prod/web?x", false),
        ] {
            assert_eq!(m.matches_str(id), want, "{id}");
        }
        assert_eq!(m.patterns().len(), 3);
        assert!(!SpiffeIdMatcher::new(Vec::<String>::new())
            .unwrap()
            .matches_str("spiffe://example.org/x"));
    }

    #[test]
    fn matcher_refuses_bad_patterns() {
        for (p, reason) in [
            ("spiffe://example.org/ns/*/web", "'*' is only allowed"),
            ("spiffe://example.org/ns/pro*", "'*' is only allowed"),
            ("spiffe://Example.org/*", "lowercase"),
            ("spiffe://example.org//*", "empty path segment"),
            ("example.org/web", "spiffe://"),
            ("spiffe://*", "spiffe://"),
        ] {
            let e = SpiffeIdMatcher::new([p]).expect_err(p);
            assert!(e.reason.contains(reason), "{p}: {e}");
            assert_eq!(e.input, p);
        }
    }

    #[test]
    fn the_id_of_a_certificate_is_its_only_uri_san() {
        use hitless_test_pki::{Ca, KeyType, LeafSpec};
        let ca = Ca::new_root("td CA", KeyType::EcP256);
        let svid = ca.issue(&LeafSpec::svid("spiffe://example.org/ns/prod/web"));
        let id = SpiffeId::from_certificate(&svid.cert_der).unwrap();
        assert_eq!(id.as_str(), "spiffe://example.org/ns/prod/web");

        let m = SpiffeIdMatcher::new(["spiffe://example.org/ns/prod/*"]).unwrap();
        assert!(m.matches_certificate(&svid.cert_der));
        let other = ca.issue(&LeafSpec::svid("spiffe://example.org/ns/dev/web"));
        let e = m.check_certificate(&other.cert_der).unwrap_err();
        assert_eq!(e.input, "spiffe://example.org/ns/dev/web");
        assert!(e.reason.contains("not allowed"), "{e}");

        let two = ca.issue(
            &LeafSpec::svid("spiffe://example.org/a")
                .uris(vec!["spiffe://example.org/a", "spiffe://example.org/b"]),
        );
        let e = SpiffeId::from_certificate(&two.cert_der).unwrap_err();
        assert!(e.reason.contains("2 URI SANs"), "{e}");
        assert!(!m.matches_certificate(&two.cert_der));

        let mixed = ca.issue(
            &LeafSpec::svid("spiffe://example.org/ns/prod/web").uris(vec![
                "spiffe://example.org/ns/prod/web",
                "https://example.org/",
            ]),
        );
        assert!(!m.matches_certificate(&mixed.cert_der));

        let dns_only = ca.issue(&LeafSpec::server("localhost"));
        let e = SpiffeId::from_certificate(&dns_only.cert_der).unwrap_err();
        assert!(e.reason.contains("no URI SAN"), "{e}");

        let not_spiffe =
            ca.issue(&LeafSpec::svid("spiffe://x/y").uris(vec!["https://example.org/web"]));
        let e = SpiffeId::from_certificate(&not_spiffe.cert_der).unwrap_err();
        assert!(e.reason.contains("spiffe://"), "{e}");

        let e = SpiffeId::from_certificate(b"garbage").unwrap_err();
        assert!(e.reason.contains("cannot parse"), "{e}");
    }
}
