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

fn target_dir() -> PathBuf {
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
