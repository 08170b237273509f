//! Builds the example and test components in `guest-transforms/` once per test run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The directory holding `mask.wasm`, `tenant-filter.wasm`, `route.wasm`, `faulty.wasm`.
pub fn dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(build)
}

pub fn component(name: &str) -> PathBuf {
    dir().join(format!("{name}.wasm"))
}

pub fn target_dir() -> PathBuf {
    // The test binary lives in <target>/<profile>/deps/.
    let exe = std::env::current_exe().expect("the test binary knows its path");
    exe.ancestors()
        .nth(3)
        .expect("the test binary is in <target>/<profile>/deps")
        .to_path_buf()
}

fn build() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("guest-transforms");
    let target = target_dir().join("guests");
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .current_dir(&root)
        .output();
    if let Ok(out) = installed {
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("wasm32-wasip2"),
            "the guest transforms need the wasm32-wasip2 target: run `rustup target add wasm32-wasip2`"
        );
    }
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "--target", "wasm32-wasip2", "--quiet"])
        .env("CARGO_TARGET_DIR", &target)
        .env_remove("RUSTFLAGS")
        .current_dir(&root)
        .status()
        .expect("cargo runs");
    assert!(
        status.success(),
        "building guest-transforms failed (see above)"
    );
    let out = target.join("components");
    std::fs::create_dir_all(&out).unwrap();
    for (crate_file, name) in [
        ("mask", "mask"),
        ("tenant_filter", "tenant-filter"),
        ("route", "route"),
        ("faulty", "faulty"),
        ("bench_record_mask", "bench-record-mask"),
    ] {
        let built = target
            .join("wasm32-wasip2/release")
            .join(format!("{crate_file}.wasm"));
        std::fs::copy(&built, out.join(format!("{name}.wasm")))
            .unwrap_or_else(|e| panic!("{}: {e}", built.display()));
    }
    out
}

/// A Python (`python`) or JavaScript (`js`) component of `guest-transforms/`, built with
/// componentize-py or jco when its sources changed since the last build.
pub fn polyglot(lang: &str, name: &str) -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    static JS: OnceLock<PathBuf> = OnceLock::new();
    let dir = match lang {
        "python" => PYTHON.get_or_init(build_python),
        "js" => JS.get_or_init(build_js),
        other => panic!("no {other} guests"),
    };
    dir.join(format!("{name}.wasm"))
}

fn sources_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn modified(path: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// True when `out` is missing or older than any of `inputs`.
fn stale(out: &Path, inputs: &[PathBuf]) -> bool {
    let Some(built) = modified(out) else {
        return true;
    };
    inputs.iter().any(|i| modified(i).is_none_or(|m| m > built))
}

fn build_python() -> PathBuf {
    let root = sources_root();
    let out = target_dir().join("guests").join("python");
    std::fs::create_dir_all(&out).unwrap();
    for (module, name) in [("mask", "mask"), ("tenant_filter", "tenant-filter")] {
        let source = root.join("guest-transforms/python").join(module);
        let wasm = out.join(format!("{name}.wasm"));
        let sdk = root.join("guest-transforms/sdk/python");
        let inputs = [
            source.join("app.py"),
            sdk.join("sfzb_transform.py"),
            root.join("wit/transform.wit"),
        ];
        if !stale(&wasm, &inputs) {
            continue;
        }
        let status = Command::new("componentize-py")
            .arg("-d")
            .arg(root.join("wit"))
            .args(["-w", "transform", "componentize", "-p"])
            .arg(&source)
            .arg("-p")
            .arg(&sdk)
            .arg("app")
            .arg("-o")
            .arg(&wasm)
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap_or_else(|e| {
                panic!("componentize-py is needed for the Python transforms ({e}): run `pip install componentize-py==0.25.1`")
            });
        assert!(
            status.success(),
            "componentize-py failed on {}",
            source.display()
        );
    }
    out
}

fn build_js() -> PathBuf {
    let root = sources_root().join("guest-transforms/js");
    let out = root.join("dist");
    let npm = |args: &[&str]| {
        let status = Command::new("npm")
            .args(args)
            .current_dir(&root)
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap_or_else(|e| {
                panic!("npm is needed for the JavaScript transforms ({e}): install Node.js and npm")
            });
        assert!(
            status.success(),
            "npm {args:?} failed in {}",
            root.display()
        );
    };
    if !root.join("node_modules/.bin/jco").exists() {
        npm(&["ci", "--no-audit", "--no-fund"]);
    }
    let lock = root.join("package-lock.json");
    let wit = sources_root().join("wit/transform.wit");
    for name in ["mask", "tenant-filter"] {
        let inputs = [
            root.join(format!("src/{name}.js")),
            root.join("../sdk/js/sfzb-transform.js"),
            lock.clone(),
            wit.clone(),
        ];
        if stale(&out.join(format!("{name}.wasm")), &inputs) {
            npm(&["run", "--silent", &format!("build:{name}")]);
        }
    }
    out
}
