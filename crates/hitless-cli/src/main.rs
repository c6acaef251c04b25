//! `hitless`: an mTLS server, client, prober and dev PKI that rotate credentials with no restart.
#![forbid(unsafe_code)]

mod admin;
mod client;
mod cmd;
mod config;
mod files;
mod http;
mod listen;
mod load;
mod logging;
mod pki;
mod repeat;
mod value;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Rotate TLS certificates, keys, trust bundles and CRLs without a restart and without one
/// failed handshake.
#[derive(Parser, Debug)]
#[command(name = "hitless", version, about, long_about = None)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = logging::Format::Human)]
    log_format: logging::Format,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run an HTTPS server (mutual TLS with --client-ca) that reloads its identity on change.
    Serve(cmd::serve::Args),
    /// Call an HTTPS server with a reloading client identity, once or in a loop, and report.
    Call(cmd::call::Args),
    /// Prove a server refuses untrusted clients (no, self-signed, unknown-CA, expired, revoked,
    /// wrong-usage certificates, resumed sessions); exit 1 if any got in or a refusal proves
    /// nothing (the server never asked for a certificate).
    Probe(cmd::probe::Args),
    /// A development CA: create it, issue server/client certificates, revoke, write CRLs.
    Ca(cmd::ca::Args),
    /// Issue short-lived identities from the development CA again and again and write them like
    /// a real agent (rename, in place, Kubernetes ..data swap, certbot).
    Agent(cmd::agent::Args),
    /// Show what credential files hold (chain, names, key type, validity, key match); exit 0
    /// valid, 1 invalid, 2 expiring within --warn.
    Inspect(cmd::inspect::Args),
    /// The whole system live in one command: dev CA, rotating agents, mTLS server, clients,
    /// prober, CA rotation, revocation and bad writes; exit 0 only if nothing failed.
    Demo(cmd::demo::Args),
}

/// Locks a mutex, recovering the data if a panicking thread poisoned it (the data guarded in
/// this crate is always left consistent: counters and replaced values).
pub fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn main() -> ExitCode {
    // The command's crypto: aws-lc-rs, installed process-wide so that every rustls builder in
    // it (and in the library) agrees, whatever other providers a build happens to compile in.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
    // The demo's live view owns the terminal: it sends the log to a file itself.
    let demo_tui = matches!(&cli.command, Command::Demo(args) if args.uses_tui());
    if matches!(&cli.command, Command::Call(_)) {
        // A load generator repeats the same warning on every request: one line a second each.
        repeat::init(cli.log_format);
    } else if !demo_tui {
        logging::init(cli.log_format);
    }
    // A server's connections and a load generator's are descriptors: use what the hard limit
    // allows, not the usual soft default of 1024.
    listen::raise_descriptor_limit();
    let result = match cli.command {
        Command::Serve(args) => cmd::serve::run(args),
        Command::Call(args) => cmd::call::run(args),
        Command::Probe(args) => cmd::probe::run(args),
        Command::Ca(args) => cmd::ca::run(args),
        Command::Agent(args) => cmd::agent::run(args),
        Command::Inspect(args) => cmd::inspect::run(args),
        Command::Demo(args) => cmd::demo::run(args, cli.log_format),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("hitless: {}", describe(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, like `{:#}`, but without repeating a cause whose text
/// the message already holds: the library's errors name their cause in their message and also
/// return it as their source.
fn describe(error: &anyhow::Error) -> String {
    let mut text = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}
