//! Command-line parsing (the contract in DESIGN.md) and dispatch. Every flag can also come from
//! an environment variable `SLUICE_<FLAG>`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Exit codes: 0 success, 2 bad config or usage, 1 anything else (and warnings under --strict).
pub mod exit {
    pub const OK: u8 = 0;
    pub const FAILURE: u8 = 1;
    pub const BAD_CONFIG: u8 = 2;
}

#[derive(Debug, Parser)]
#[command(
    name = "sluice",
    version,
    about = "An egress gateway for service meshes that enforces Istio's own configuration"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load, validate and analyze Istio configuration (files, directories, or - for stdin).
    Analyze(AnalyzeArgs),
    /// Run the egress gateway: the mesh's single, controlled exit.
    Gateway(crate::gateway::GatewayArgs),
    /// Run beside one workload: an explicit proxy that applies the mesh's rules and reaches the
    /// egress gateway over mesh mTLS.
    Sidecar(crate::sidecar::SidecarArgs),
    /// The whole picture on loopback: an external HTTPS service, DNS, the gateway, allowed and
    /// refused calls.
    Demo(crate::demo::DemoArgs),
    /// The mesh CA: `ca init` makes a root, `ca issue` a workload SVID (tls.crt, tls.key, ca.crt).
    Ca(sluice_identity::CaArgs),
    /// Show the running proxy's listeners, routes, clusters or endpoints (from its admin API).
    ProxyConfig(crate::proxy_config::ProxyConfigArgs),
    /// The egress map of one or more proxies, merged: who reached which external host, and
    /// what was decided (each proxy's /api/map).
    Map(crate::egress_map::merge::MapArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct AnalyzeArgs {
    /// YAML files or directories (searched recursively for *.yaml, *.yml, *.json); - reads stdin.
    #[arg(required = true, env = "SLUICE_PATHS", value_delimiter = ',')]
    pub paths: Vec<PathBuf>,
    /// Output format.
    #[arg(short, long, value_enum, default_value = "text", env = "SLUICE_OUTPUT")]
    pub output: Output,
    /// Exit 1 when there are warnings (errors always exit 2).
    #[arg(long, env = "SLUICE_STRICT")]
    pub strict: bool,
    /// Hide Info-level messages.
    #[arg(long, env = "SLUICE_QUIET")]
    pub quiet: bool,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let code = match cli.command {
        Command::Analyze(args) => crate::analyze::run(&args, &mut std::io::stdout().lock()),
        Command::Gateway(args) => crate::gateway::run(args),
        Command::Sidecar(args) => crate::sidecar::run(args),
        Command::Demo(args) => crate::demo::run(args),
        Command::Ca(args) => sluice_identity::run_ca(args),
        Command::ProxyConfig(args) => {
            crate::proxy_config::run(&args, &mut std::io::stdout().lock())
        }
        Command::Map(args) => crate::egress_map::merge::run(&args, &mut std::io::stdout().lock()),
    };
    match code {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("sluice: {e:#}");
            ExitCode::from(exit::FAILURE)
        }
    }
}

/// Logs go to stderr; `SLUICE_LOG` (or `RUST_LOG`) filters them, `info` by default, and the
/// admin API's `/logging` changes the filter while the process runs.
fn init_logging() {
    crate::logging::init();
}
