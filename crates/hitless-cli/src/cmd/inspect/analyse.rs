//! Turning the parts of a file into facts, findings and a verdict. Every rule that decides
//! whether a file would be served is the library's ([`Identity::load`], [`KeyInfo`]); what is
//! decided here only explains (chain order, what is not sent, what expires when) and sets the
//! exit status.

use std::path::Path;
use std::time::{Duration, SystemTime};

use hitless::{CertInfo, CrlInfo, Identity, IdentitySource, KeyInfo, Role};

use super::render::{rfc3339, seconds_between, span};
use super::{Args, CertReport, Contents, CrlReport, KeyReport, Kind, Report, Status};

/// Turns raw contents into facts, errors and warnings, and decides the status.
pub(super) fn analyse(
    file: &Path,
    contents: Contents,
    args: &Args,
    now: SystemTime,
    report: &mut Report,
) {
    describe_certificates(file, &contents, now, report);
    describe_crls(file, &contents, now, report);
    match_keys(file, &contents, report);

    // The library's own verdict on an identity: what `serve` (or `call`, for --role client)
    // would do with these files, read again the way it reads them.
    let verdict = if report.errors.is_empty() {
        // Quietly: what the library would log while loading (a loose key mode, PEM blocks run
        // together) is in this report already.
        identity_source(file, &contents, args, report.kind).map(|source| {
            tracing::subscriber::with_default(tracing::subscriber::NoSubscriber::default(), || {
                Identity::load(&source, Role::from(args.role))
            })
        })
    } else {
        None
    };
    // The chain hitless would send, by fingerprint.
    let served: Option<Vec<String>> = match &verdict {
        Some(Ok(identity)) => {
            adopt_verdict(identity, report);
            Some(
                identity
                    .chain()
                    .iter()
                    .map(|c| c.fingerprint.clone())
                    .collect(),
            )
        }
        _ => None,
    };
    check_chain(report, served.as_deref());
    check_validity(report, args.warn, now, served.as_deref());
    if let Some(Err(e)) = verdict {
        report.errors.push(format!("hitless would refuse it: {e}"));
    }
    decide(report, args.warn, served.as_deref());
}

/// The facts of every certificate, in file order.
fn describe_certificates(file: &Path, contents: &Contents, now: SystemTime, report: &mut Report) {
    for (i, der) in contents.certs.iter().enumerate() {
        let index = i + 1;
        match CertInfo::parse(file, index, der) {
            Ok(info) => report.certificates.push(CertReport {
                index,
                role: "other",
                subject: info.subject.clone(),
                issuer: info.issuer.clone(),
                serial: info.serial.clone(),
                dns_names: info.dns_names.clone(),
                ip_addresses: info.ip_addresses.iter().map(|ip| ip.to_string()).collect(),
                key_type: info.key_type.clone(),
                is_ca: info.is_ca,
                extended_key_usage: info.extended_key_usage.clone(),
                self_signed: info.subject == info.issuer,
                not_before: rfc3339(info.not_before),
                not_after: rfc3339(info.not_after),
                seconds_left: seconds_between(now, info.not_after),
                fingerprint_sha256: info.fingerprint.clone(),
                info,
            }),
            Err(e) => report.errors.push(e.to_string()),
        }
    }
}

/// The facts of every CRL.
fn describe_crls(file: &Path, contents: &Contents, now: SystemTime, report: &mut Report) {
    for der in &contents.crls {
        match CrlInfo::from_der(file, der) {
            Ok(crl) => report.crls.push(CrlReport {
                issuer: crl.issuer,
                this_update: rfc3339(crl.this_update),
                next_update: crl.next_update.map(rfc3339),
                seconds_left: crl.next_update.map(|t| seconds_between(now, t)),
                revoked: crl.revoked,
            }),
            Err(e) => report.errors.push(e.to_string()),
        }
    }
}

/// Which certificate each private key belongs to (the library loads the key and compares
/// public keys), and how many keys the file itself holds.
fn match_keys(file: &Path, contents: &Contents, report: &mut Report) {
    for (key_file, key) in &contents.keys {
        let mut key_report = KeyReport {
            file: key_file.clone(),
            algorithm: None,
            matches_certificate: None,
        };
        match KeyInfo::from_der(key_file, key) {
            Ok(info) => {
                key_report.algorithm = Some(format!("{:?}", info.algorithm()));
                key_report.matches_certificate = report
                    .certificates
                    .iter()
                    .find(|c| info.matches(&c.info))
                    .map(|c| c.index);
                if key_report.matches_certificate.is_none() {
                    report.errors.push(format!(
                        "{}: private key matches no certificate in {}",
                        key_file.display(),
                        file.display()
                    ));
                }
            }
            Err(e) => report.errors.push(e.to_string()),
        }
        warn_if_readable(key_file, &mut report.warnings);
        report.keys.push(key_report);
    }
    if !report.keys.is_empty() {
        report.key_matches = Some(report.keys.iter().all(|k| k.matches_certificate.is_some()));
    }
    let file_keys = contents
        .keys
        .iter()
        .filter(|(path, _)| path == file)
        .count();
    if file_keys > 1 {
        report.errors.push(format!(
            "{file_keys} private keys found, expected exactly one (which one to serve would be \
             a guess)"
        ));
    }
}

/// Takes the library's choice of leaf (of several certificates for the key, it serves the
/// newest valid one) and what the identity may be used as.
fn adopt_verdict(identity: &Identity, report: &mut Report) {
    let leaf = report
        .certificates
        .iter()
        .find(|c| c.fingerprint_sha256 == identity.leaf().fingerprint)
        .map(|c| c.index);
    if leaf.is_some() {
        for key in &mut report.keys {
            key.matches_certificate = leaf;
        }
    }
    report.usable_as = [(Role::Server, "server"), (Role::Client, "client")]
        .into_iter()
        .filter(|(role, _)| identity.allows(*role))
        .map(|(_, name)| name)
        .collect();
}

/// The earliest expiry and the status. A certificate that is not sent and has already ended
/// is reported (a warning), not counted as the identity's expiry.
fn decide(report: &mut Report, warn: Duration, served: Option<&[String]>) {
    let counts = |c: &CertReport| {
        served.is_none_or(|s| c.seconds_left >= 0 || s.contains(&c.fingerprint_sha256))
    };
    let earliest = report
        .certificates
        .iter()
        .filter(|c| counts(c))
        .map(|c| (c.seconds_left, c.not_after.clone()))
        .chain(
            report
                .crls
                .iter()
                .filter_map(|c| Some((c.seconds_left?, c.next_update.clone()?))),
        )
        .min_by_key(|(left, _)| *left);
    if let Some((left, at)) = earliest {
        report.seconds_left = Some(left);
        report.expires = Some(at);
    }
    report.status = if !report.errors.is_empty() {
        Status::Invalid
    } else if report
        .seconds_left
        .is_some_and(|left| u64::try_from(left).is_ok_and(|l| l < warn.as_secs()))
    {
        Status::Expiring
    } else {
        Status::Valid
    };
}

/// The identity the library would load from this file (with `--key`, the pair), if it holds
/// exactly one key.
fn identity_source(
    file: &Path,
    contents: &Contents,
    args: &Args,
    kind: Option<Kind>,
) -> Option<IdentitySource> {
    if contents.keys.len() != 1 {
        return None;
    }
    match kind? {
        Kind::Pkcs12 => Some(IdentitySource::pkcs12(file, super::read::password(args))),
        Kind::Pem => match contents.key_file.as_deref() {
            Some(key) if key == file => Some(IdentitySource::bundle(file)),
            Some(key) => Some(IdentitySource::pair(file, key)),
            None => None,
        },
        Kind::DerCertificate | Kind::DerCrl => None,
    }
}

/// Finds the leaf and reports chain-order problems (warnings: hitless reorders chains itself,
/// but other tools and peers may not). `served`: the chain the library would send (by
/// fingerprint, leaf first), when it accepted the identity.
fn check_chain(report: &mut Report, served: Option<&[String]>) {
    let certs = &report.certificates;
    let by_key = served
        .and_then(|s| s.first())
        .and_then(|f| position(certs, f))
        .map(|i| i + 1)
        .or_else(|| report.keys.iter().find_map(|k| k.matches_certificate));
    let leaf = by_key
        .map(|index| index - 1)
        .or_else(|| certs.iter().position(|c| !c.is_ca));
    let Some(leaf) = leaf else {
        // Only CA certificates and no key: a trust bundle, whose order means nothing.
        for c in &mut report.certificates {
            c.role = "ca";
        }
        return;
    };
    let mut warnings = order_warnings(certs, leaf);
    let in_chain = chain_sent(certs, leaf, served);
    warnings.extend(membership_warnings(certs, leaf, &in_chain));
    report.warnings.extend(warnings);
    for (i, c) in report.certificates.iter_mut().enumerate() {
        c.role = if i == leaf {
            "leaf"
        } else if c.is_ca {
            "ca"
        } else {
            "other"
        };
    }
}

/// The index of the certificate with this fingerprint.
fn position(certs: &[CertReport], fingerprint: &str) -> Option<usize> {
    certs
        .iter()
        .position(|c| c.fingerprint_sha256 == fingerprint)
}

/// A leaf that is not first, a certificate not followed by its issuer, a root not last.
fn order_warnings(certs: &[CertReport], leaf: usize) -> Vec<String> {
    let mut warnings = Vec::new();
    if leaf != 0 {
        warnings.push(format!(
            "the leaf (certificate {}, {}) is not first: most tools expect leaf first, then \
             its issuers (hitless reorders it)",
            leaf + 1,
            certs[leaf].subject
        ));
    }
    for pair in certs.windows(2) {
        let (child, parent) = (&pair[0], &pair[1]);
        if child.self_signed {
            warnings.push(format!(
                "certificate {} comes after certificate {}, a self-signed root: a root ends \
                 the chain",
                parent.index, child.index
            ));
        } else if parent.subject != child.issuer {
            warnings.push(format!(
                "certificate {} ({}) does not issue certificate {} (issued by {})",
                parent.index, parent.subject, child.index, child.issuer
            ));
        }
    }
    warnings
}

/// The chain hitless would send (as the library chose it, else the leaf and its issuers by
/// name), with the root that ends it: indices into `certs`.
fn chain_sent(certs: &[CertReport], leaf: usize, served: Option<&[String]>) -> Vec<usize> {
    let mut in_chain: Vec<usize> = match served {
        Some(s) => s.iter().filter_map(|f| position(certs, f)).collect(),
        None => vec![leaf],
    };
    let mut current = in_chain.last().copied().unwrap_or(leaf);
    // Each turn adds a certificate not in the chain yet: at most `certs.len()` turns.
    while !certs[current].self_signed {
        let issuer = &certs[current].issuer;
        match (0..certs.len()).find(|&i| {
            !in_chain.contains(&i)
                && certs[i].subject == *issuer
                && (served.is_none() || certs[i].self_signed)
        }) {
            Some(next) => {
                in_chain.push(next);
                current = next;
            }
            None => break,
        }
    }
    in_chain
}

/// What becomes of each certificate that is not the leaf: a root that is not sent, another
/// certificate for the leaf's key, one that belongs to no chain.
fn membership_warnings(certs: &[CertReport], leaf: usize, in_chain: &[usize]) -> Vec<String> {
    let mut warnings = Vec::new();
    for (i, c) in certs.iter().enumerate() {
        if i == leaf {
            continue;
        }
        if c.self_signed && in_chain.contains(&i) {
            warnings.push(format!(
                "certificate {} ({}) is a self-signed root: peers must already trust it, so \
                 sending it only costs bytes (hitless leaves it out)",
                c.index, c.subject
            ));
        } else if !in_chain.contains(&i)
            && c.info.public_key_fingerprint == certs[leaf].info.public_key_fingerprint
        {
            warnings.push(format!(
                "certificate {} ({}) is another certificate for the same key: hitless serves \
                 certificate {}, the newest with a valid chain",
                c.index,
                c.subject,
                leaf + 1
            ));
        } else if !in_chain.contains(&i) {
            warnings.push(format!(
                "certificate {} ({}) does not belong to the leaf's chain (hitless does not send \
                 it)",
                c.index, c.subject
            ));
        }
    }
    warnings
}

/// Errors for certificates and CRLs out of their validity; warnings for those ending within
/// `warn`. With `served` (the chain the library accepted), a certificate it does not send is
/// only worth a warning: `serve` ignores it.
fn check_validity(report: &mut Report, warn: Duration, now: SystemTime, served: Option<&[String]>) {
    let soon = |left: i64| u64::try_from(left).is_ok_and(|l| l < warn.as_secs());
    for c in &report.certificates {
        let which = format!("certificate {} ({})", c.index, c.subject);
        if served.is_some_and(|s| !s.contains(&c.fingerprint_sha256))
            && (now < c.info.not_before || c.seconds_left < 0)
        {
            report.warnings.push(format!(
                "{which} is outside its validity period ({} to {}); hitless does not send it",
                c.not_before, c.not_after
            ));
        } else if now < c.info.not_before {
            report.errors.push(format!(
                "{which} is not valid yet: not before {} (in {})",
                c.not_before,
                span(seconds_between(now, c.info.not_before))
            ));
        } else if c.seconds_left < 0 {
            report.errors.push(format!(
                "{which} expired at {} ({} ago)",
                c.not_after,
                span(-c.seconds_left)
            ));
        } else if soon(c.seconds_left) {
            report.warnings.push(format!(
                "{which} expires in {}, within --warn {}",
                span(c.seconds_left),
                humantime::format_duration(warn)
            ));
        }
    }
    for crl in &report.crls {
        let (Some(left), Some(next)) = (crl.seconds_left, &crl.next_update) else {
            continue;
        };
        if left < 0 {
            report.errors.push(format!(
                "the CRL of {} is past its next update {} ({} ago): publish a new one (hitless \
                 still applies its revocations)",
                crl.issuer,
                next,
                span(-left)
            ));
        } else if soon(left) {
            report.warnings.push(format!(
                "the CRL of {} is due for renewal in {}, within --warn {}",
                crl.issuer,
                span(left),
                humantime::format_duration(warn)
            ));
        }
    }
}

/// A private key file readable by every user of the machine is worth a warning.
fn warn_if_readable(path: &Path, warnings: &mut Vec<String>) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o004 != 0 {
                let warning = format!(
                    "{}: the private key file is readable by every user (mode {mode:04o}); \
                     chmod 600 it",
                    path.display()
                );
                if !warnings.contains(&warning) {
                    warnings.push(warning);
                }
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (path, warnings);
}
