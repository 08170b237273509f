//! Tenants: many orgs, one small entry each, in a TOML file (`[acme]`, `[globex]`, …) or a
//! directory of such files. Every entry holds the keys of `[salesforce]` (credentials by
//! `{ env = … }` or `{ file = … }`), inherits `[salesforce]` and the flags, and runs every
//! subscription that names no org; `{tenant}` in such a subscription's `sink`,
//! `dead-letter` or `current-state` is the tenant's name.

use std::collections::BTreeMap;
use std::path::Path;

use super::ConfigError;
use super::file::OrgSection;

/// The tenants of a file or directory, by name.
pub fn load(path: &Path) -> Result<BTreeMap<String, OrgSection>, ConfigError> {
    let unreadable = |source| ConfigError::File {
        key: "tenants".into(),
        path: path.display().to_string(),
        source,
    };
    if !path.is_dir() {
        return load_file(path);
    }
    let mut files: Vec<_> = std::fs::read_dir(path)
        .map_err(unreadable)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    let mut tenants = BTreeMap::new();
    for file in files {
        for (name, org) in load_file(&file)? {
            if tenants.insert(name.clone(), org).is_some() {
                return Err(ConfigError::Parse {
                    path: file.display().to_string(),
                    message: format!(
                        "tenant {name:?} is also in another file of {}; names must be unique",
                        path.display()
                    ),
                });
            }
        }
    }
    Ok(tenants)
}

fn load_file(path: &Path) -> Result<BTreeMap<String, OrgSection>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::File {
        key: "tenants".into(),
        path: path.display().to_string(),
        source,
    })?;
    let parse = |message: String| ConfigError::Parse {
        path: path.display().to_string(),
        message,
    };
    let mut tenants: BTreeMap<String, OrgSection> =
        toml::from_str(&text).map_err(|e| parse(e.to_string()))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    for (name, org) in &mut tenants {
        if !valid_name(name) {
            return Err(parse(format!(
                "tenant name {name:?}: use letters, digits, '-', '_' and '.' (it names the tenant's subscriptions, metrics and checkpoints)"
            )));
        }
        org.rebase(dir);
    }
    Ok(tenants)
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// A template's sink, dead-letter or current-state place for one tenant.
pub(super) fn for_tenant(spec: &str, tenant: &str) -> String {
    spec.replace("{tenant}", tenant)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_of_files_holds_distinct_tenants_with_paths_beside_them() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("a.toml"),
            "[acme]\nclient-id = \"1\"\nclient-secret = { file = \"acme.secret\" }\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("b.toml"), "[globex]\nclient-id = \"2\"\n").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not a tenant").unwrap();
        let tenants = load(dir.path()).unwrap();
        assert_eq!(tenants.keys().collect::<Vec<_>>(), ["acme", "globex"]);
        match &tenants["acme"].client_secret {
            Some(super::super::file::Secret::File { file }) => {
                assert_eq!(file, &dir.path().join("acme.secret"))
            }
            other => panic!("{other:?}"),
        }
        std::fs::write(dir.path().join("c.toml"), "[acme]\nclient-id = \"3\"\n").unwrap();
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("\"acme\" is also in another file"), "{err}");
    }

    #[test]
    fn unknown_keys_and_bad_names_are_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t.toml");
        std::fs::write(&file, "[acme]\nclient-idd = \"1\"\n").unwrap();
        let err = load(&file).unwrap_err().to_string();
        assert!(
            err.contains("t.toml") && err.contains("client-idd"),
            "{err}"
        );
        std::fs::write(&file, "[\"a b\"]\nclient-id = \"1\"\n").unwrap();
        let err = load(&file).unwrap_err().to_string();
        assert!(err.contains("tenant name \"a b\""), "{err}");
    }
}
