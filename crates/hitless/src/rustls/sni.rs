//! Several server identities, chosen per handshake by SNI.
//!
//! The index is precomputed whenever any identity reloads, so choosing costs one atomic load,
//! one hash lookup (two for a wildcard), and a scan of the few identities that share a name:
//! no allocation, no lock, no file-system call.
//!
//! Selection rules, in order:
//! 1. the SNI name, lower-cased, matched exactly against every identity's DNS names (from its
//!    certificate, or the names given with [`MemberOptions::names`]);
//! 2. else a wildcard: `*.example.test` matches `a.example.test` (exactly one label, never
//!    `example.test` itself nor `a.b.example.test`);
//! 3. with no SNI (a client connecting to an IP address), an identity with an IP SAN equal to
//!    the listener's address, when the resolver knows it ([`ServerIdentities::resolver_for_ip`]);
//! 4. else the default identity: the one marked default, else the first in the order given.
//!
//! Among several identities for the same name, the first (in the order given) whose key the
//! client can use (its signature_algorithms) and whose validity covers now wins; then the first
//! whose key the client can use; then the first.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;

use crate::credential::ServerIdentities;
use crate::identity::Identity;

/// One identity as a selection candidate.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    key: Arc<CertifiedKey>,
    schemes: Vec<SignatureScheme>,
    not_before: SystemTime,
    not_after: SystemTime,
}

impl Candidate {
    fn new(identity: &Identity) -> Candidate {
        Candidate {
            key: identity.certified_key().clone(),
            schemes: identity.signature_schemes().to_vec(),
            not_before: identity.leaf().not_before,
            not_after: identity.leaf().not_after,
        }
    }

    fn usable_by(&self, offered: &[SignatureScheme]) -> bool {
        offered.iter().any(|s| self.schemes.contains(s))
    }
}

/// The precomputed name → identities index.
#[derive(Debug, Default)]
pub(crate) struct SniIndex {
    exact: HashMap<String, Vec<Candidate>>,
    wildcard: HashMap<String, Vec<Candidate>>,
    ips: HashMap<IpAddr, Vec<Candidate>>,
    default: Vec<Candidate>,
}

/// What the index is built from: each loaded identity, in order, with its options.
pub(crate) struct IndexEntry<'a> {
    pub(crate) identity: &'a Identity,
    pub(crate) names: Option<&'a [String]>,
    pub(crate) is_default: bool,
}

impl SniIndex {
    pub(crate) fn build(entries: &[IndexEntry<'_>]) -> SniIndex {
        let mut index = SniIndex::default();
        for entry in entries {
            let candidate = Candidate::new(entry.identity);
            let names: Vec<String> = match entry.names {
                Some(n) => n.to_vec(),
                None => entry.identity.leaf().dns_names.clone(),
            };
            for name in names {
                let name = name.to_ascii_lowercase();
                let name = name.trim_end_matches('.');
                if let Some(suffix) = name.strip_prefix("*.") {
                    push(&mut index.wildcard, suffix.to_string(), &candidate);
                } else if !name.contains('*') {
                    push(&mut index.exact, name.to_string(), &candidate);
                }
            }
            for ip in &entry.identity.leaf().ip_addresses {
                index.ips.entry(*ip).or_default().push(candidate.clone());
            }
            if entry.is_default && index.default.is_empty() {
                index.default.push(candidate.clone());
            }
        }
        if index.default.is_empty() {
            if let Some(first) = entries.first() {
                index.default.push(Candidate::new(first.identity));
            }
        }
        index
    }

    /// Chooses for `server_name` (SNI) or, without it, `local_ip`.
    pub(crate) fn choose(
        &self,
        server_name: Option<&str>,
        local_ip: Option<IpAddr>,
        offered: &[SignatureScheme],
    ) -> Option<&Arc<CertifiedKey>> {
        let list = match server_name {
            Some(name) => self.by_name(name),
            None => local_ip.and_then(|ip| self.ips.get(&ip)),
        }
        .filter(|l| !l.is_empty())
        .unwrap_or(&self.default);
        pick(list, offered)
    }

    fn by_name(&self, name: &str) -> Option<&Vec<Candidate>> {
        // Lower-case into a stack buffer: DNS names are at most 253 bytes.
        let mut buf = [0u8; 256];
        let bytes = name.trim_end_matches('.').as_bytes();
        let lower = buf.get_mut(..bytes.len())?;
        lower.copy_from_slice(bytes);
        lower.make_ascii_lowercase();
        let lower = std::str::from_utf8(lower).ok()?;
        if let Some(found) = self.exact.get(lower) {
            return Some(found);
        }
        let (_, suffix) = lower.split_once('.')?;
        self.wildcard.get(suffix)
    }
}

fn push(map: &mut HashMap<String, Vec<Candidate>>, name: String, c: &Candidate) {
    let list = map.entry(name).or_default();
    if !list.iter().any(|x| Arc::ptr_eq(&x.key, &c.key)) {
        list.push(c.clone());
    }
}

fn pick<'a>(list: &'a [Candidate], offered: &[SignatureScheme]) -> Option<&'a Arc<CertifiedKey>> {
    let now = SystemTime::now();
    list.iter()
        .find(|c| c.usable_by(offered) && c.not_before <= now && now <= c.not_after)
        .or_else(|| list.iter().find(|c| c.usable_by(offered)))
        .or_else(|| list.first())
        .map(|c| &c.key)
}

/// Serves one of several [`ServerIdentities`] per handshake, by SNI (see the module rules).
#[derive(Debug, Clone)]
pub struct SniResolver {
    identities: ServerIdentities,
    local_ip: Option<IpAddr>,
}

impl SniResolver {
    pub(crate) fn new(identities: ServerIdentities, local_ip: Option<IpAddr>) -> Self {
        SniResolver {
            identities,
            local_ip,
        }
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let Some(check) = &self.identities.inner.on_handshake {
            check.maybe_check();
        }
        let index = self.identities.inner.index.load();
        index
            .choose(
                hello.server_name(),
                self.local_ip,
                hello.signature_schemes(),
            )
            .cloned()
    }
}
