//! The human-readable form of a report (the `--json` form is its serialization), and the ways
//! times and lengths of time are written in both.

use std::fmt::Write as _;
use std::time::SystemTime;

use super::{CertReport, CrlReport, Report, Status};

/// The human-readable block of one file.
pub(super) fn report(report: &Report, out: &mut String) {
    headline(report, out);
    for c in &report.certificates {
        certificate(c, out);
    }
    for crl in &report.crls {
        self::crl(crl, out);
    }
    for key in &report.keys {
        let algorithm = key.algorithm.as_deref().unwrap_or("unusable");
        let verdict = match key.matches_certificate {
            Some(i) => format!("matches certificate {i}"),
            None => "matches NO certificate".into(),
        };
        let _ = writeln!(
            out,
            "  private key  {} ({algorithm}): {verdict}",
            key.file.display()
        );
    }
    if !report.usable_as.is_empty() {
        let _ = writeln!(
            out,
            "  usable as    {} identity",
            report.usable_as.join(" and ")
        );
    }
    for w in &report.warnings {
        let _ = writeln!(out, "  warning: {w}");
    }
    for e in &report.errors {
        let _ = writeln!(out, "  error: {e}");
    }
    verdict(report, out);
}

/// `FILE: KIND, N certificates, N private keys, N CRLs`.
fn headline(report: &Report, out: &mut String) {
    let mut what = Vec::new();
    if !report.certificates.is_empty() {
        what.push(plural(report.certificates.len(), "certificate"));
    }
    if !report.keys.is_empty() {
        what.push(plural(report.keys.len(), "private key"));
    }
    if !report.crls.is_empty() {
        what.push(plural(report.crls.len(), "CRL"));
    }
    let _ = write!(out, "{}", report.file.display());
    if let Some(kind) = report.kind {
        let _ = write!(out, ": {}", kind.describe());
    }
    if !what.is_empty() {
        let _ = write!(out, ", {}", what.join(", "));
    }
    out.push('\n');
}

/// The facts of one certificate.
fn certificate(c: &CertReport, out: &mut String) {
    let mut tags = vec![c.role];
    if c.self_signed {
        tags.push("self-signed");
    }
    tags.retain(|t| *t != "other");
    let tags = if tags.is_empty() {
        String::new()
    } else {
        format!(" ({})", tags.join(", "))
    };
    let _ = writeln!(out, "  certificate {}{tags}", c.index);
    field(out, "subject", &c.subject);
    field(out, "issuer", &c.issuer);
    field(out, "serial", &c.serial);
    let names: Vec<String> = c
        .dns_names
        .iter()
        .map(|n| format!("DNS:{n}"))
        .chain(c.ip_addresses.iter().map(|ip| format!("IP:{ip}")))
        .collect();
    let names = if names.is_empty() {
        "(none)".to_string()
    } else {
        names.join(", ")
    };
    field(out, "names", &names);
    field(out, "key", &c.key_type);
    if let Some(usage) = &c.extended_key_usage {
        field(out, "ext. usage", &usage.join(", "));
    }
    field(out, "not before", &c.not_before);
    let left = if c.seconds_left >= 0 {
        format!("{} (in {})", c.not_after, span(c.seconds_left))
    } else {
        format!("{} (expired {} ago)", c.not_after, span(-c.seconds_left))
    };
    field(out, "not after", &left);
    field(out, "sha-256", &c.fingerprint_sha256);
}

/// The facts of one CRL.
fn crl(crl: &CrlReport, out: &mut String) {
    let _ = writeln!(out, "  CRL");
    field(out, "issuer", &crl.issuer);
    field(out, "this update", &crl.this_update);
    let next = match (&crl.next_update, crl.seconds_left) {
        (Some(at), Some(left)) if left >= 0 => format!("{at} (in {})", span(left)),
        (Some(at), Some(left)) => format!("{at} (passed {} ago)", span(-left)),
        _ => "(none)".into(),
    };
    field(out, "next update", &next);
    field(out, "revoked", &crl.revoked.to_string());
}

/// The last line: the status, and when the file expires.
fn verdict(report: &Report, out: &mut String) {
    let _ = match report.status {
        Status::Invalid => writeln!(out, "  => INVALID"),
        Status::Expiring => writeln!(
            out,
            "  => valid, but EXPIRES SOON: in {} ({})",
            span(report.seconds_left.unwrap_or(0)),
            report.expires.as_deref().unwrap_or("?")
        ),
        Status::Valid => match (&report.expires, report.seconds_left) {
            (Some(at), Some(left)) => {
                writeln!(out, "  => valid, expires in {} ({at})", span(left))
            }
            _ => writeln!(out, "  => valid"),
        },
    };
}

fn field(out: &mut String, name: &str, value: &str) {
    let _ = writeln!(out, "    {name:<12} {value}");
}

fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// A readable length of time in days, hours, minutes (and seconds under an hour):
/// `1825d 3h 12m`, `6d 23h 59m`, `42m 7s`.
pub(super) fn span(seconds: i64) -> String {
    let s = seconds.unsigned_abs();
    let (d, h, m, sec) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60, s % 60);
    match (d, h) {
        (0, 0) if m == 0 => format!("{sec}s"),
        (0, 0) => format!("{m}m {sec}s"),
        (0, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h {m}m"),
    }
}

/// Whole seconds from `from` to `to`, negative when `to` is earlier.
pub(super) fn seconds_between(from: SystemTime, to: SystemTime) -> i64 {
    match to.duration_since(from) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_secs()).map_or(i64::MIN, |s| -s),
    }
}

pub(super) fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}
