//! `sfzb-host transform init --lang rust|python|js NAME`: a ready-to-build transform — the
//! WIT contract, a starting transform, its build setup, a sample event and a README — and
//! the commands that build and test it.

use std::path::{Path, PathBuf};

use crate::cli::Lang;

const WIT: &str = include_str!("../wit/transform.wit");

/// The Rust SDK, copied into a Rust transform: its bindings read the transform's `wit/`.
const RUST_SDK: [(&str, &str); 4] = [
    (
        "sfzb-transform/Cargo.toml",
        include_str!("../guest-transforms/sdk/rust/Cargo.toml"),
    ),
    (
        "sfzb-transform/src/lib.rs",
        include_str!("../guest-transforms/sdk/rust/src/lib.rs"),
    ),
    (
        "sfzb-transform/src/__wasm.rs",
        include_str!("../guest-transforms/sdk/rust/src/__wasm.rs"),
    ),
    (
        "sfzb-transform/src/testing.rs",
        include_str!("../guest-transforms/sdk/rust/src/testing.rs"),
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    #[error(
        "{name:?} is not a transform name: use letters, digits, '-' and '_', starting with a letter"
    )]
    Name { name: String },
    #[error("{path} already exists; choose another name or remove it")]
    Exists { path: PathBuf },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What was created and how to build and test it.
#[derive(Debug)]
pub struct Scaffold {
    pub dir: PathBuf,
    /// Shell commands, run in `dir`, in order.
    pub build: Vec<String>,
    pub test: String,
}

/// What `transform init` prints: where it is, and the commands that build and test it.
impl std::fmt::Display for Scaffold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "Created {}. Build and test it:", self.dir.display())?;
        writeln!(f, "  cd {}", self.dir.display())?;
        for command in &self.build {
            writeln!(f, "  {command}")?;
        }
        writeln!(f, "  {}", self.test)
    }
}

fn write(path: &Path, text: &str) -> Result<(), ScaffoldError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|source| ScaffoldError::Write {
            path: parent.to_path_buf(),
            source,
        })?;
    }
    std::fs::write(path, text).map_err(|source| ScaffoldError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Creates `parent/NAME/`.
pub fn init(lang: Lang, name: &str, parent: &Path) -> Result<Scaffold, ScaffoldError> {
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid {
        return Err(ScaffoldError::Name {
            name: name.to_string(),
        });
    }
    let dir = parent.join(name);
    if dir.exists() {
        return Err(ScaffoldError::Exists { path: dir });
    }
    let fill = |template: &str| template.replace("__NAME__", name);
    write(&dir.join("wit/transform.wit"), WIT)?;
    write(&dir.join("sample-event.json"), &sample_event())?;
    let (wasm, build, files): (String, Vec<String>, Vec<(&str, &str)>) = match lang {
        Lang::Rust => (
            format!(
                "target/wasm32-wasip2/release/{}.wasm",
                name.replace('-', "_")
            ),
            vec![
                "cargo test".into(),
                "cargo build --release --target wasm32-wasip2".into(),
            ],
            vec![
                ("Cargo.toml", include_str!("scaffold/rust-Cargo.toml")),
                ("src/lib.rs", include_str!("scaffold/rust-lib.rs")),
            ],
        ),
        Lang::Python => (
            format!("{name}.wasm"),
            vec![format!(
                "componentize-py -d wit -w transform componentize app -o {name}.wasm"
            )],
            vec![
                ("app.py", include_str!("scaffold/python-app.py")),
                (
                    "sfzb_transform.py",
                    include_str!("../guest-transforms/sdk/python/sfzb_transform.py"),
                ),
            ],
        ),
        Lang::Js => (
            format!("{name}.wasm"),
            vec![
                "npm install --no-audit --no-fund".into(),
                "npm run build".into(),
            ],
            vec![
                ("package.json", include_str!("scaffold/js-package.json")),
                ("transform.js", include_str!("scaffold/js-transform.js")),
                (
                    "sfzb-transform.js",
                    include_str!("../guest-transforms/sdk/js/sfzb-transform.js"),
                ),
            ],
        ),
    };
    if lang == Lang::Rust {
        for (file, text) in RUST_SDK {
            // In this repository the SDK reads the top-level wit/; here, the transform's.
            write(
                &dir.join(file),
                &text.replace("\"../../../wit\"", "\"../wit\""),
            )?;
        }
    }
    for (file, template) in files {
        let file = if file == "transform.js" {
            format!("{name}.js")
        } else {
            file.to_string()
        };
        write(&dir.join(file), &fill(template))?;
    }
    let test = format!(
        "sfzb-host transform test {wasm} --event sample-event.json --config fields=Email,Phone"
    );
    write(
        &dir.join("README.md"),
        &readme(lang, name, &build, &test, &wasm),
    )?;
    Ok(Scaffold { dir, build, test })
}

fn sample_event() -> String {
    let entity = crate::sim::catalog::Entity::load("Account")
        .and_then(Result::ok)
        .expect("the simulator's Account schema is built in");
    let event = crate::sim::generator::standard_account_event(&entity);
    let row = crate::sink::Row::from_event(event, crate::clock::now_ms());
    serde_json::to_string_pretty(&row).expect("a row serializes") + "\n"
}

fn readme(lang: Lang, name: &str, build: &[String], test: &str, wasm: &str) -> String {
    let (tool, setup) = match lang {
        Lang::Rust => ("Rust", "rustup target add wasm32-wasip2"),
        Lang::Python => ("Python", "pip install componentize-py==0.25.1"),
        Lang::Js => (
            "JavaScript",
            "Node.js and npm (the build installs jco 1.35 and componentize-js 0.23)",
        ),
    };
    let sdk = match lang {
        Lang::Rust => {
            "\n\nIt is written with the Rust SDK (`sfzb-transform/`, a copy): a plain type with\n`init` and `process`, whose tests `cargo test` runs natively against the SDK's stub host\n(`sfzb_transform::testing`), with no Wasm. With `CARGO_TARGET_DIR` set, the component\nis built there instead of `target/`."
        }
        Lang::Python => {
            "\n\n`sfzb_transform.py` is the SDK's helper module: settings (`Config`), outcomes\n(`keep`, `route`, `drop`) and the host's functions."
        }
        Lang::Js => {
            "\n\n`sfzb-transform.js` is the SDK's helper module: settings (`Config`), outcomes\n(`keep`, `route`, `drop`) and value helpers."
        }
    };
    format!(
        r#"# {name}

A {tool} transform for sfzb-host. It implements the `transform` world of
`wit/transform.wit` (package `sfzb:transform@0.1.1`): `init` gets the settings, `process`
gets each change event and returns the events to write.{sdk}

## Build

Once: {setup}.

```sh
{build}
```

## Test

Run it on the sample event (an Account UPDATE as the jsonl sink writes it; any rows from
`--sink jsonl:FILE` work too) with the exact host a pipeline uses:

```sh
{test}
sfzb-host transform bench {wasm} --config fields=Email,Phone
```

## Deploy

```sh
sfzb-host --transform {wasm} --transform-config {stem}.fields=Email,Phone
```

or in `sfzb.toml`:

```toml
[[subscription.transform]]
path = "{wasm}"
config = {{ fields = "Email,Phone" }}
```

The component runs sandboxed: no files, network or environment; 64 MiB and 100 ms per
event by default (`memory-mib`, `timeout-ms`). The first start compiles it (seconds for
Python and JavaScript) into the compile cache; later starts load it in milliseconds.
"#,
        build = build.join("\n"),
        stem = Path::new(wasm)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_nothing_is_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            init(Lang::Python, "../x", dir.path()),
            Err(ScaffoldError::Name { .. })
        ));
        let made = init(Lang::Js, "my-filter", dir.path()).unwrap();
        assert!(made.dir.join("my-filter.js").is_file());
        assert!(made.dir.join("wit/transform.wit").is_file());
        let sample: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(made.dir.join("sample-event.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(sample["entity_name"], "Account");
        assert!(matches!(
            init(Lang::Js, "my-filter", dir.path()),
            Err(ScaffoldError::Exists { .. })
        ));
    }
}
