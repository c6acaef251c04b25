//! `hitless`: an mTLS server, client, prober and dev PKI that rotate credentials with no restart.
#![forbid(unsafe_code)]

mod cmd;
mod http;
mod logging;

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    let result = match cli.command {
        Command::Serve(args) => cmd::serve::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("hitless: {e:#}");
            ExitCode::FAILURE
        }
    }
}
