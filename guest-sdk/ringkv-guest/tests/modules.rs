//! Builds every hook module of this workspace for wasm32-unknown-unknown and
//! checks each one against ABI.md the way the host does at deploy: the
//! required exports with their exact types, `ringkv_abi_version` returning
//! 2, the stage export, and imports from `ringkv` only, each with its exact
//! type. Also checks that a module imports `ringkv.old_version` and
//! `ringkv.old_value` exactly when its hook reads them: the SDK must not
//! make a hook that never reads the stored record depend on it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use wasmparser::{ExternalKind, FuncType, Operator, Parser, Payload, TypeRef, ValType};

const TARGET: &str = "wasm32-unknown-unknown";
const INSTALL_HINT: &str =
    "the wasm32-unknown-unknown target is not installed: run `rustup target add wasm32-unknown-unknown`";

/// Each module, the stage export it must carry, and the stored-record
/// imports its hook reads (and so must import; no others).
const MODULES: [(&str, &str, &[&str]); 7] = [
    ("validate_json", "ringkv_validate", &[]),
    ("ttl_by_prefix", "ringkv_ttl", &[]),
    ("tenant_partitioner", "ringkv_partition", &[]),
    ("immutable_keys", "ringkv_validate", &["old_version"]),
    ("noop_validate", "ringkv_validate", &[]),
    ("panic_validate", "ringkv_validate", &[]),
    ("show_old_validate", "ringkv_validate", &["old_value", "old_version"]),
];

/// The stored-record imports of ABI version 2.
const OLD_RECORD_IMPORTS: [&str; 2] = ["old_value", "old_version"];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("ringkv-guest sits inside guest-sdk/").to_path_buf()
}

fn target_installed() -> bool {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = Command::new(rustc)
        .args(["--print", "target-libdir", "--target", TARGET])
        .output()
        .expect("run rustc --print target-libdir");
    let libdir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    out.status.success() && Path::new(&libdir).is_dir()
}

/// Runs the same build a user runs, into its own target directory so it
/// never waits on the lock of the `cargo test` that runs this test.
fn build_modules() -> PathBuf {
    assert!(target_installed(), "{INSTALL_HINT}");
    let target_dir = workspace().join("target").join("modules-test");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(workspace())
        .args(["build", "--target", TARGET, "--release", "--workspace"])
        .env("CARGO_TARGET_DIR", &target_dir)
        .output()
        .expect("run cargo build");
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        let hint = if stderr.contains("target may not be installed") { INSTALL_HINT } else { "" };
        panic!("cargo build --target {TARGET} --release failed: {hint}\n{stderr}");
    }
    target_dir.join(TARGET).join("release")
}

/// What the host looks at in a module.
#[derive(Default)]
struct Module {
    types: Vec<FuncType>,
    imports: Vec<(String, String, TypeRef)>,
    imported_funcs: u32,
    /// Type index of each function defined in the module.
    funcs: Vec<u32>,
    exports: HashMap<String, (ExternalKind, u32)>,
    bodies: Vec<Vec<String>>,
}

impl Module {
    fn parse(bytes: &[u8]) -> Module {
        let mut m = Module::default();
        for payload in Parser::new(0).parse_all(bytes) {
            match payload.expect("a valid module") {
                Payload::TypeSection(r) => {
                    m.types = r.into_iter_err_on_gc_types().collect::<Result<_, _>>().expect("func types only");
                }
                Payload::ImportSection(r) => {
                    for import in r.into_imports() {
                        let import = import.expect("import");
                        if matches!(import.ty, TypeRef::Func(_) | TypeRef::FuncExact(_)) {
                            m.imported_funcs += 1;
                        }
                        m.imports.push((import.module.to_owned(), import.name.to_owned(), import.ty));
                    }
                }
                Payload::FunctionSection(r) => m.funcs = r.into_iter().collect::<Result<_, _>>().expect("funcs"),
                Payload::ExportSection(r) => {
                    for export in r {
                        let export = export.expect("export");
                        m.exports.insert(export.name.to_owned(), (export.kind, export.index));
                    }
                }
                Payload::CodeSectionEntry(body) => {
                    let ops = body.get_operators_reader().expect("operators");
                    let ops: Vec<Operator> = ops.into_iter().collect::<Result<_, _>>().expect("operators");
                    m.bodies.push(ops.iter().map(|op| format!("{op:?}")).collect());
                }
                _ => {}
            }
        }
        m
    }

    /// Index of the defined function `name` exports, and its type.
    fn exported_func(&self, name: &str) -> (usize, &FuncType) {
        let (kind, index) = self.exports.get(name).unwrap_or_else(|| panic!("no export `{name}`"));
        assert_eq!(*kind, ExternalKind::Func, "`{name}` is not a function");
        let defined = (index - self.imported_funcs) as usize;
        (defined, &self.types[self.funcs[defined] as usize])
    }

    fn assert_func(&self, name: &str, params: &[ValType], results: &[ValType]) {
        let (_, ty) = self.exported_func(name);
        assert_eq!((ty.params(), ty.results()), (params, results), "type of `{name}`");
    }
}

#[test]
fn every_module_follows_the_abi() {
    use ValType::{I32, I64};
    let dir = build_modules();
    for (name, stage, reads) in MODULES {
        let path = dir.join(format!("{name}.wasm"));
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let m = Module::parse(&bytes);
        let context = format!("{name}.wasm");

        assert!(matches!(m.exports.get("memory"), Some((ExternalKind::Memory, 0))), "{context}: exports memory 0");
        m.assert_func("ringkv_abi_version", &[], &[I32]);
        m.assert_func("ringkv_alloc", &[I32], &[I32]);
        m.assert_func(stage, &[I32, I32], &[I64]);

        let (abi_version, _) = m.exported_func("ringkv_abi_version");
        assert_eq!(m.bodies[abi_version], ["I32Const { value: 2 }", "End"], "{context}: ringkv_abi_version returns 2");

        for (module, field, ty) in &m.imports {
            assert_eq!(module, "ringkv", "{context}: imports `{module}.{field}`; only `ringkv` may be imported");
            let want: (&[ValType], &[ValType]) = match field.as_str() {
                "log" => (&[I32, I32, I32], &[]),
                "panic" => (&[I32, I32], &[]),
                "old_version" => (&[], &[I64]),
                "old_value" => (&[I32, I32], &[I64]),
                other => panic!("{context}: imports `ringkv.{other}`, which the host does not provide"),
            };
            let TypeRef::Func(index) = ty else { panic!("{context}: `ringkv.{field}` is not a function") };
            let ty = &m.types[*index as usize];
            assert_eq!((ty.params(), ty.results()), want, "{context}: type of `ringkv.{field}`");
        }

        let mut imported: Vec<&str> = m
            .imports
            .iter()
            .map(|(_, field, _)| field.as_str())
            .filter(|field| OLD_RECORD_IMPORTS.contains(field))
            .collect();
        imported.sort_unstable();
        assert_eq!(imported, reads, "{context}: the stored-record imports are those its hook reads");
    }

    // A panic must reach the host with its message, so the module that
    // panics has to import `ringkv.panic`.
    let panics = Module::parse(&std::fs::read(dir.join("panic_validate.wasm")).expect("read panic_validate.wasm"));
    assert!(
        panics.imports.iter().any(|(m, f, _)| m == "ringkv" && f == "panic"),
        "panic_validate imports ringkv.panic"
    );
}
