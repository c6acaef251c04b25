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
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::{ArcSwap, ArcSwapOption};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;

use crate::identity::Identity;
use crate::snapshot::{lock, Snapshot};
use crate::ServerIdentities;

/// The name index of a set of identities: rebuilt (off the handshake path) when a member's
/// names change, read with one atomic load per handshake.
#[derive(Default)]
pub(crate) struct NameIndex {
    current: ArcSwap<SniIndex>,
    /// Serialises rebuilds (members reload on the detector thread or in `reload()` calls).
    rebuild_lock: Mutex<()>,
}

impl NameIndex {
    /// Rebuilds the index if some member's names changed (a rotation that keeps its names
    /// changes nothing here: the resolver reads the member's new snapshot directly).
    pub(crate) fn rebuild(&self, members: Members<'_>) {
        let _serialise = lock(&self.rebuild_lock);
        let names: Vec<(Names, bool)> = (0..members.len())
            .map(|i| {
                let current = members.get(i).map(|m| m.load_full()).unwrap_or_default();
                let names = Names::of(current.as_ref().map(|s| &s.value), members.names(i));
                (names, members.is_default(i))
            })
            .collect();
        let index = self.current.load();
        if index.names.len() == names.len()
            && index.names.iter().zip(&names).all(|(a, b)| *a == b.0)
        {
            return;
        }
        drop(index);
        self.current.store(Arc::new(SniIndex::build(names)));
    }

    /// What the resolver does: one load of the index, a lookup, and one load per candidate's
    /// current snapshot.
    pub(crate) fn choose(
        &self,
        members: Members<'_>,
        server_name: Option<&str>,
        local_ip: Option<IpAddr>,
        offered: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.current
            .load()
            .choose(members, server_name, local_ip, offered)
    }
}

/// The names an identity is served for: what the index is built from. While a member's
/// rotation keeps these, the index stays as it is and the resolver reads the member's new
/// snapshot directly; only a change of names rebuilds it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Names {
    exact: Vec<String>,
    wildcard: Vec<String>,
    ips: Vec<IpAddr>,
}

impl Names {
    /// The names of `identity`, or `overrides` for its DNS names.
    fn of(identity: Option<&Identity>, overrides: Option<&[String]>) -> Names {
        let mut names = Names::default();
        let dns: Vec<String> = match (overrides, identity) {
            (Some(n), _) => n.to_vec(),
            (None, Some(id)) => id.leaf().dns_names.clone(),
            (None, None) => Vec::new(),
        };
        for name in dns {
            let name = name.to_ascii_lowercase();
            let name = name.trim_end_matches('.');
            if let Some(suffix) = name.strip_prefix("*.") {
                names.wildcard.push(suffix.to_string());
            } else if !name.contains('*') {
                names.exact.push(name.to_string());
            }
        }
        if let Some(id) = identity {
            names.ips = id.leaf().ip_addresses.clone();
        }
        names
    }
}

/// The members' current snapshots, by index (a slice of the set's members, without copying).
pub(crate) type Members<'a> = &'a dyn MemberSnapshots;

/// Access to the members of a set by index: current snapshot, name overrides, default flag.
pub(crate) trait MemberSnapshots {
    fn len(&self) -> usize;
    fn get(&self, i: usize) -> Option<&ArcSwapOption<Snapshot<Identity>>>;
    /// The names given instead of the certificate's DNS names.
    fn names(&self, i: usize) -> Option<&[String]>;
    /// Whether the member was marked as the default identity.
    fn is_default(&self, i: usize) -> bool;
}

/// The precomputed name → member-index index.
#[derive(Debug, Default)]
struct SniIndex {
    exact: HashMap<String, Vec<usize>>,
    wildcard: HashMap<String, Vec<usize>>,
    ips: HashMap<IpAddr, Vec<usize>>,
    default: Vec<usize>,
    /// The names each member was indexed under.
    names: Vec<Names>,
}

impl SniIndex {
    /// Builds the index from each member's names and default flag, in selection order.
    fn build(members: Vec<(Names, bool)>) -> SniIndex {
        let mut index = SniIndex::default();
        for (i, (names, is_default)) in members.iter().enumerate() {
            for n in &names.exact {
                push(&mut index.exact, n.clone(), i);
            }
            for n in &names.wildcard {
                push(&mut index.wildcard, n.clone(), i);
            }
            for ip in &names.ips {
                let list = index.ips.entry(*ip).or_default();
                if !list.contains(&i) {
                    list.push(i);
                }
            }
            if *is_default && index.default.is_empty() {
                index.default.push(i);
            }
        }
        index.names = members.into_iter().map(|(n, _)| n).collect();
        index
    }

    /// Chooses for `server_name` (SNI) or, without it, `local_ip`, among `members`' current
    /// snapshots.
    fn choose(
        &self,
        members: Members<'_>,
        server_name: Option<&str>,
        local_ip: Option<IpAddr>,
        offered: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        let list = match server_name {
            Some(name) => self.by_name(name),
            None => local_ip.and_then(|ip| self.ips.get(&ip)),
        }
        .filter(|l| !l.is_empty())
        .map(Vec::as_slice);
        match list {
            Some(list) => pick(members, list, offered),
            // The default: the marked one, else the first member that has loaded.
            None if !self.default.is_empty() => {
                pick(members, &self.default, offered).or_else(|| first_loaded(members))
            }
            None => first_loaded(members),
        }
    }

    fn by_name(&self, name: &str) -> Option<&Vec<usize>> {
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

fn push(map: &mut HashMap<String, Vec<usize>>, name: String, i: usize) {
    let list = map.entry(name).or_default();
    if !list.contains(&i) {
        list.push(i);
    }
}

fn first_loaded(members: Members<'_>) -> Option<Arc<CertifiedKey>> {
    (0..members.len()).find_map(|i| {
        members
            .get(i)?
            .load()
            .as_ref()
            .map(|s| s.value.certified_key().clone())
    })
}

/// The first candidate whose key the client can use and whose validity covers now; else the
/// first the client can use; else the first loaded. One atomic load per candidate looked at.
fn pick(
    members: Members<'_>,
    list: &[usize],
    offered: &[SignatureScheme],
) -> Option<Arc<CertifiedKey>> {
    let now = SystemTime::now();
    let mut best: Option<(u8, usize)> = None;
    for &i in list {
        let Some(member) = members.get(i) else {
            continue;
        };
        let guard = member.load();
        let Some(snapshot) = guard.as_ref() else {
            continue;
        };
        let id = &snapshot.value;
        let usable = offered.iter().any(|s| id.signature_schemes().contains(s));
        let valid = id.leaf().not_before <= now && now <= id.leaf().not_after;
        let rank = match (usable, valid) {
            (true, true) => return Some(id.certified_key().clone()),
            (true, false) => 1,
            _ => 2,
        };
        if best.is_none_or(|(r, _)| rank < r) {
            best = Some((rank, i));
        }
    }
    let (_, i) = best?;
    members
        .get(i)?
        .load()
        .as_ref()
        .map(|s| s.value.certified_key().clone())
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
        self.identities.check_on_handshake();
        self.identities.choose(
            hello.server_name(),
            self.local_ip,
            hello.signature_schemes(),
        )
    }
}
