//! YAML text → `sluice_model::load_str` → `sluice_compile::check` and
//! `sluice_compile::lower::compile` for the gateway and for a sidecar, then the snapshot as the
//! admin endpoint serves it (JSON) and as `sluice proxy-config` reads it back.
//!
//! Invariants: never panics (whatever the YAML: anchors, aliases, deep nesting, odd scalars,
//! resources of every kind); a compiled snapshot serializes, and the JSON deserializes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_compile::lower::{CompileOptions, compile};
use sluice_snapshot::Snapshot;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let loaded = sluice_model::load_str("fuzz.yaml", text);
    let _ = loaded.has_errors();
    let _ = sluice_compile::check(&loaded.resources);
    for options in [
        CompileOptions::gateway(),
        CompileOptions::sidecar("default"),
    ] {
        let (snapshot, diags) = compile(&loaded.resources, &options);
        for d in &diags {
            let _ = d.to_string();
        }
        let json = serde_json::to_string(&snapshot).expect("a snapshot serializes");
        if let Err(e) = serde_json::from_str::<Snapshot>(&json) {
            panic!("the snapshot's JSON does not read back: {e}\n{json}");
        }
    }
});
