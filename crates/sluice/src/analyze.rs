//! `sluice analyze`: load, validate and analyze, print istioctl-style messages.

use std::io::Write;

use sluice_model::diag::codes;
use sluice_model::{Diagnostic, Level};

use crate::cli::{AnalyzeArgs, Output, exit};

/// Runs the analysis and writes its report; returns the exit code.
pub fn run(args: &AnalyzeArgs, out: &mut impl Write) -> anyhow::Result<u8> {
    let loaded = sluice_model::load_paths(&args.paths);
    let mut diags = loaded.diagnostics;
    if args.strict {
        // Under --strict, analyzing nothing is a failure of the configuration itself.
        for d in diags.iter_mut().filter(|d| d.code == codes::EMPTY_INPUT) {
            d.level = Level::Error;
        }
    }
    diags.extend(sluice_compile::check(&loaded.resources));
    sluice_compile::sort(&mut diags);
    if args.quiet {
        diags.retain(|d| d.level != Level::Info);
    }
    match args.output {
        Output::Json => {
            serde_json::to_writer_pretty(&mut *out, &diags)?;
            writeln!(out)?;
        }
        Output::Text => write_text(out, &diags, loaded.resources.len(), args.paths.len())?,
    }
    Ok(exit_code(&diags, args.strict))
}

fn write_text(
    out: &mut impl Write,
    diags: &[Diagnostic],
    resources: usize,
    paths: usize,
) -> std::io::Result<()> {
    for d in diags {
        writeln!(out, "{d}")?;
    }
    let count = |level| diags.iter().filter(|d| d.level == level).count();
    let (errors, warnings) = (count(Level::Error), count(Level::Warning));
    let what = format!(
        "{resources} resource{} from {paths} path{}",
        plural(resources),
        plural(paths)
    );
    if errors == 0 && warnings == 0 {
        writeln!(out, "✔ No validation issues found when analyzing {what}.")
    } else {
        writeln!(
            out,
            "{errors} error{}, {warnings} warning{} in {what}.",
            plural(errors),
            plural(warnings)
        )
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn exit_code(diags: &[Diagnostic], strict: bool) -> u8 {
    if diags.iter().any(|d| d.level == Level::Error) {
        exit::BAD_CONFIG
    } else if strict && diags.iter().any(|d| d.level == Level::Warning) {
        exit::FAILURE
    } else {
        exit::OK
    }
}
