//! Untrusted YAML never panics the process: every guide document and Istio fixture, mutated
//! thousands of ways (bytes flipped, lines dropped, duplicated, re-indented, truncated), goes
//! through the whole pipeline — load, validate, analyze, compile for both roles — and the only
//! acceptable outcomes are a result or diagnostics. Deterministic (a fixed xorshift seed), so a
//! failure reproduces.

use std::path::PathBuf;

use sluice_compile::lower::{CompileOptions, compile};
use sluice_snapshot::Role;

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Bytes YAML gives meaning to, so mutations hit the parser's interesting paths.
const SPICE: &[u8] = b":-{}[],&*!|>'\"#%@` \t\n0123456789.";

fn mutate(text: &str, rng: &mut XorShift) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    for _ in 0..=rng.below(3) {
        if lines.is_empty() {
            break;
        }
        let i = rng.below(lines.len());
        match rng.below(7) {
            0 => {
                lines.remove(i);
            }
            1 => {
                let l = lines[i].clone();
                lines.insert(i, l);
            }
            2 => lines[i] = format!("  {}", lines[i]),
            3 => lines[i] = lines[i].trim_start().to_owned(),
            4 => {
                let mut bytes = lines[i].clone().into_bytes();
                if !bytes.is_empty() {
                    let at = rng.below(bytes.len());
                    bytes[at] = SPICE[rng.below(SPICE.len())];
                }
                lines[i] = String::from_utf8_lossy(&bytes).into_owned();
            }
            5 => {
                let cut = rng.below(lines[i].len() + 1);
                if lines[i].is_char_boundary(cut) {
                    lines[i].truncate(cut);
                }
            }
            _ => {
                let j = rng.below(lines.len());
                lines.swap(i, j);
            }
        }
    }
    lines.join("\n")
}

fn inputs() -> Vec<(String, String)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata");
    let mut files = Vec::new();
    for dir in [
        "guide",
        "acceptance/analyzer",
        "acceptance/outbound-traffic-policy",
    ] {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "yaml")
                && let Ok(text) = std::fs::read_to_string(&p)
            {
                files.push((p.display().to_string(), text));
            }
        }
    }
    files.sort();
    files
}

#[test]
fn mutated_configs_give_diagnostics_never_panics() {
    let files = inputs();
    assert!(files.len() >= 60, "only {} input files", files.len());
    let gateway = CompileOptions::gateway();
    let sidecar = CompileOptions {
        role: Role::Sidecar,
        namespace: "default".into(),
        labels: Default::default(),
        credentials_dir: None,
        secrets_dir: None,
    };
    let mut rng = XorShift(0x5eed_5eed_1234_5678);
    let mut runs = 0;
    for (name, text) in &files {
        for _ in 0..60 {
            let mutated = mutate(text, &mut rng);
            let loaded = sluice_model::load_str(name, &mutated);
            let _ = sluice_compile::check(&loaded.resources);
            let _ = compile(&loaded.resources, &gateway);
            let _ = compile(&loaded.resources, &sidecar);
            runs += 1;
        }
    }
    println!("{runs} mutated configurations went through load, validate, analyze, compile");
    assert!(runs >= 3_600);
}
