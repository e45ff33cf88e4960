//! `sluice ca init` / `sluice ca issue`: clap arguments and the entry point the binary calls.
//! Every flag can also come from `SLUICE_<FLAG>`, as everywhere in sluice.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::ca::{CA_CERT, CA_KEY, Ca, CaError, TLS_CERT, TLS_KEY, Validity};
use crate::clock::rfc3339;
use crate::files::IdentityFiles;
use crate::identity::DEFAULT_TRUST_DOMAIN;

/// Exit code for success.
const OK: u8 = 0;
/// Exit code for bad usage or config.
const USAGE: u8 = 2;

/// `sluice ca ...`: the mesh CA.
#[derive(Debug, clap::Args)]
pub struct CaArgs {
    #[command(subcommand)]
    pub command: CaCommand,
}

/// The `sluice ca` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum CaCommand {
    /// Create a root CA: DIR/ca.crt (0644) and DIR/ca.key (0600), ECDSA P-256, 10 years.
    Init(InitArgs),
    /// Issue a workload SVID (spiffe://<trust-domain>/ns/NS/sa/SA): OUT/tls.crt, OUT/tls.key,
    /// OUT/ca.crt.
    Issue(IssueArgs),
}

#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// Directory for ca.crt and ca.key (created if missing).
    #[arg(long, env = "SLUICE_DIR")]
    pub dir: PathBuf,
    /// Trust domain of the identities this CA issues.
    #[arg(long, env = "SLUICE_TRUST_DOMAIN", default_value = DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// Replace an existing CA (every SVID it issued stops being trusted).
    #[arg(long, env = "SLUICE_FORCE")]
    pub force: bool,
}

#[derive(Debug, clap::Args)]
pub struct IssueArgs {
    /// Directory holding the CA (ca.crt, ca.key).
    #[arg(long, env = "SLUICE_DIR")]
    pub dir: PathBuf,
    /// Kubernetes namespace of the workload.
    #[arg(long, env = "SLUICE_NAMESPACE")]
    pub namespace: String,
    /// Kubernetes service account of the workload.
    #[arg(long, env = "SLUICE_SERVICE_ACCOUNT")]
    pub service_account: String,
    /// Directory for tls.crt, tls.key and ca.crt (created if missing; files replaced atomically,
    /// so a running gateway or sidecar watching it picks the new SVID up).
    #[arg(long, env = "SLUICE_OUT")]
    pub out: PathBuf,
    /// Lifetime: a number with unit s, m, h or d, or a sum such as 1h30m.
    #[arg(long, env = "SLUICE_TTL", default_value = "24h", value_parser = parse_duration)]
    pub ttl: Duration,
    /// Trust domain, for a CA certificate without a spiffe://<trust-domain> URI SAN
    /// (default: the CA's, else cluster.local).
    #[arg(long, env = "SLUICE_TRUST_DOMAIN")]
    pub trust_domain: Option<String>,
}

/// Runs `sluice ca ...`, printing what it wrote to stdout. Returns the exit code: 0 on success,
/// 2 (after printing the reason to stderr) for problems the operator fixes by changing the
/// command or its inputs; `Err` (exit 1) for anything else.
pub fn run_ca(args: CaArgs) -> anyhow::Result<u8> {
    let mut stdout = std::io::stdout().lock();
    let result = match args.command {
        CaCommand::Init(a) => init(&a, &mut stdout),
        CaCommand::Issue(a) => issue(&a, &mut stdout),
    };
    match result {
        Ok(()) => Ok(OK),
        Err(Failure::Ca(e)) if e.is_usage() => {
            eprintln!("sluice ca: {e}");
            Ok(USAGE)
        }
        Err(Failure::Ca(e)) => Err(e.into()),
        Err(Failure::Other(e)) => Err(e),
    }
}

enum Failure {
    Ca(CaError),
    Other(anyhow::Error),
}

impl From<CaError> for Failure {
    fn from(e: CaError) -> Self {
        Failure::Ca(e)
    }
}

fn init(args: &InitArgs, out: &mut impl Write) -> Result<(), Failure> {
    let ca = Ca::init(&args.dir, &args.trust_domain, args.force)?;
    print(
        out,
        format_args!(
            "wrote {} and {} (trust domain {}, expires {})",
            args.dir.join(CA_CERT).display(),
            args.dir.join(CA_KEY).display(),
            ca.trust_domain(),
            rfc3339(ca.not_after())
        ),
    )
}

fn issue(args: &IssueArgs, out: &mut impl Write) -> Result<(), Failure> {
    if args.ttl.is_zero() {
        return Err(CaError::Validity("--ttl must be more than 0".into()).into());
    }
    let mut ca = Ca::load(&args.dir)?;
    if let Some(td) = &args.trust_domain {
        ca = ca.with_trust_domain(td)?;
    }
    let svid = ca.issue(
        &args.namespace,
        &args.service_account,
        Validity::from_now(args.ttl),
    )?;
    svid.write(&args.out)?;
    // Read the dir back exactly as the gateway and sidecar will, so a set they would refuse
    // is reported here, not at their next handshake.
    let files = IdentityFiles::load(&args.out).map_err(|e| {
        Failure::Other(anyhow::anyhow!(
            "the files just written are not usable: {e}"
        ))
    })?;
    print(
        out,
        format_args!(
            "wrote {}, {}, {} for {} (serial {}, expires {})",
            path(&args.out, TLS_CERT),
            path(&args.out, TLS_KEY),
            path(&args.out, CA_CERT),
            files.identity(),
            files.serial(),
            rfc3339(files.not_after())
        ),
    )
}

fn path(dir: &Path, name: &str) -> String {
    dir.join(name).display().to_string()
}

fn print(out: &mut impl Write, line: std::fmt::Arguments<'_>) -> Result<(), Failure> {
    writeln!(out, "{line}").map_err(|e| Failure::Other(e.into()))
}

/// Parses `90s`, `15m`, `24h`, `7d`, or sums such as `1h30m` (Go-style, as Istio's durations,
/// plus `d`). Bounded to 100 years so later time arithmetic cannot overflow.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    const MAX: u64 = 100 * 365 * 24 * 3600;
    let bad = || format!("invalid duration {s:?}: use e.g. 24h, 90m, 1h30m, 3600s, 7d");
    if s.is_empty() {
        return Err(bad());
    }
    let mut total: u64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        if digits == 0 {
            return Err(bad());
        }
        let (number, tail) = rest.split_at(digits);
        let n: u64 = number.parse().map_err(|_| bad())?;
        let mut chars = tail.chars();
        let unit = match chars.next() {
            Some('s') => 1,
            Some('m') => 60,
            Some('h') => 3600,
            Some('d') => 24 * 3600,
            _ => return Err(bad()),
        };
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .filter(|v| *v <= MAX)
            .ok_or_else(|| format!("duration {s:?} is longer than 100 years"))?;
        rest = chars.as_str();
    }
    Ok(Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ok = [
            ("24h", 86_400),
            ("90m", 5_400),
            ("1h30m", 5_400),
            ("3600s", 3_600),
            ("7d", 604_800),
            ("1d2h3m4s", 93_784),
            ("0s", 0),
        ];
        for (s, secs) in ok {
            assert_eq!(parse_duration(s), Ok(Duration::from_secs(secs)), "{s}");
        }
        for s in [
            "",
            "h",
            "24",
            "24x",
            "1.5h",
            "-1h",
            "1h 30m",
            "1H",
            "99999999999999999999s",
        ] {
            assert!(parse_duration(s).is_err(), "{s:?} should be refused");
        }
        assert!(parse_duration("101y").is_err());
        assert!(
            parse_duration("40000d")
                .expect_err("too long")
                .contains("100 years")
        );
    }

    #[test]
    fn default_ttl_matches_flag_default() {
        assert_eq!(parse_duration("24h"), Ok(crate::ca::DEFAULT_SVID_TTL));
    }

    #[test]
    fn args_parse() {
        use clap::Parser;
        #[derive(Debug, Parser)]
        struct Top {
            #[command(subcommand)]
            ca: CaCommand,
        }
        let top = Top::try_parse_from([
            "ca",
            "issue",
            "--dir",
            "d",
            "--namespace",
            "n",
            "--service-account",
            "s",
            "--out",
            "o",
            "--ttl",
            "1h",
        ])
        .expect("parse");
        match top.ca {
            CaCommand::Issue(a) => {
                assert_eq!(a.ttl, Duration::from_secs(3600));
                assert_eq!(a.namespace, "n");
            }
            CaCommand::Init(_) => panic!("wrong subcommand"),
        }
        let top = Top::try_parse_from(["ca", "init", "--dir", "d"]).expect("parse");
        match top.ca {
            CaCommand::Init(a) => {
                assert_eq!(a.trust_domain, "cluster.local");
                assert!(!a.force);
            }
            CaCommand::Issue(_) => panic!("wrong subcommand"),
        }
    }
}
