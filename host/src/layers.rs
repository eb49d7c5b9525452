//! The layer order of `host/src`, `crates/ringkv-node/src` and
//! `crates/ringkv-raft/src`, checked: a module may use only modules of lower
//! layers, so there is no import circle across layers. Between crates Cargo
//! enforces it (`ringkv-raft` cannot name `ringkv-node`, which cannot name
//! `ringkv`); inside each crate the test does, by reading every `crate::…`
//! path in the non-test code of each module. The lower crates' modules keep
//! their names in the crates above (`pub use ringkv_raft::{raft, …}`), so one
//! table orders all three.

use std::collections::BTreeSet;
use std::path::Path;

/// Every top-level module, lowest layer first. A module may use any module
/// listed before it and none listed after it.
const LAYERS: &[&[&str]] = &[
    &["ids", "log_limit", "dashboard"],
    &["tls", "telemetry"],
    &["auth"],
    &["ring"],
    &["command"],
    &["raft"],
    &["meta"],
    &["config"],
    &["cluster"],
    &["api"],
    &["http"],
    &["server"],
    &["cli", "fuzzing"],
];

/// Lower layers that are crates of their own, re-exported under a module
/// name (`pub use ringkv_hooks as hooks`, `ringkv_storage::failpoint`): any
/// module may use them, and Cargo keeps them from using this crate.
const CRATES: &[&str] = &["hooks", "storage", "failpoint"];

fn layer_of(module: &str) -> Option<usize> {
    if CRATES.contains(&module) {
        return Some(0);
    }
    LAYERS.iter().position(|layer| layer.contains(&module)).map(|l| l + 1)
}

/// The code of a source file without comments and without its test module
/// (tests may reach any layer to set things up).
fn code_of(source: &str) -> String {
    let code = match source.find("#[cfg(test)]\nmod ") {
        Some(at) => &source[..at],
        None => source,
    };
    code.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n")
}

/// The top-level modules a piece of code names as `crate::<module>`.
fn used_modules(code: &str) -> Vec<String> {
    code.match_indices("crate::")
        .map(|(at, _)| {
            code[at + "crate::".len()..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect()
        })
        .collect()
}

/// Every `.rs` file under `dir`, with the top-level module it belongs to.
fn sources(dir: &Path, module: Option<&str>, out: &mut Vec<(String, std::path::PathBuf)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).expect("read src").map(|e| e.expect("dir entry").path()).collect();
    entries.sort();
    for path in entries {
        let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_string();
        let owner = module.map(str::to_string).unwrap_or(name);
        if path.is_dir() {
            sources(&path, Some(&owner), out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push((owner, path));
        }
    }
}

#[test]
fn no_module_uses_a_higher_layer() {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut violations = BTreeSet::new();
    for src in [here.join("src"), here.join("../crates/ringkv-raft/src"), here.join("../crates/ringkv-node/src")] {
        check_layers(&src, &mut violations);
    }
    assert!(violations.is_empty(), "modules using a layer at or above their own:\n{:#?}", violations);
}

/// Adds to `violations` every use of a layer at or above its own by a
/// module under `src`.
fn check_layers(src: &Path, violations: &mut BTreeSet<String>) {
    let mut files = Vec::new();
    sources(src, None, &mut files);
    for (module, path) in &files {
        if matches!(module.as_str(), "lib" | "main" | "layers") {
            continue;
        }
        let Some(layer) = layer_of(module) else {
            panic!("module `{module}` ({}) is not in LAYERS: give it a layer", path.display());
        };
        let code = code_of(&std::fs::read_to_string(path).expect("read source"));
        for used in used_modules(&code) {
            if used == *module {
                continue;
            }
            if layer_of(&used).is_none_or(|l| l >= layer) {
                violations.insert(format!("{} uses crate::{used}", path.strip_prefix(src).unwrap_or(path).display()));
            }
        }
    }
}

#[test]
fn the_check_sees_uses_and_skips_comments_and_tests() {
    let code = code_of("use crate::raft::NodeId;\n// crate::api in a comment\nfn f() { crate::ids::now_ms(); }\n#[cfg(test)]\nmod tests { use crate::cli; }\n");
    assert_eq!(used_modules(&code), ["raft", "ids"]);
}
