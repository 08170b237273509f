//! Transform chains: each transform's file, name, settings, error policy and limits, with
//! the flags laid over the file's.

use std::path::PathBuf;
use std::time::Duration;

use super::file::{Secret, TransformSection, setting_text};
use super::{ConfigError, invalid, missing};
use crate::cli::{ComponentArgs, TransformArgs};
use crate::transform::{Keys, Limits, OnError, TransformSpec, chain::name_from_path};

impl TransformSection {
    /// The limits it sets, the rest at their defaults.
    pub fn limits(&self) -> Limits {
        Limits {
            memory_bytes: self.memory_mib().max(1) << 20,
            timeout: Duration::from_millis(self.timeout_ms().max(1)),
            fuel: self.fuel,
            recycle_after: self.recycle_after().max(1),
            max_added_bytes: self.max_added_bytes(),
            max_outputs: self.max_outputs().max(1),
            max_batch_output_bytes: self.max_batch_output_mib().max(1) << 20,
            max_tables: self.max_tables(),
            max_log_lines_per_sec: self.max_log_lines_per_sec(),
        }
    }
}

/// The transform chain of one subscription of `org`: the file's (or the flags') transforms,
/// with the flags' settings, policies and limits laid over them. Every file must exist and
/// every setting must name a transform of the chain.
pub(super) fn chain_specs(
    prefix: &str,
    sections: Vec<TransformSection>,
    flags: &TransformArgs,
    org: &str,
) -> Result<Vec<TransformSpec>, ConfigError> {
    let mut specs: Vec<TransformSpec> = Vec::new();
    for section in sections {
        let spec = transform_spec(prefix, section.overlay(flags.limits.clone()), org)?;
        if specs.iter().any(|s| s.name == spec.name) {
            return Err(invalid(
                format!("{prefix}transform"),
                spec.path.display().to_string(),
                format!(
                    "a transform named {} is already in the chain; rename one",
                    spec.name
                ),
            ));
        }
        specs.push(spec);
    }
    apply_flags(&mut specs, flags)?;
    Ok(specs)
}

fn transform_spec(
    prefix: &str,
    section: TransformSection,
    org: &str,
) -> Result<TransformSpec, ConfigError> {
    let key = |k: &str| format!("{prefix}{k}");
    let path = section.path.clone().ok_or_else(|| {
        missing(
            key("transform.path"),
            "give each [[subscription.transform]] the path of its .wasm component",
        )
    })?;
    if !path.is_file() {
        return Err(invalid(
            key("transform"),
            path.display().to_string(),
            "no such file; give the path of a .wasm component",
        ));
    }
    let config = section
        .config
        .iter()
        .flatten()
        .map(|(k, v)| {
            Ok((
                k.clone(),
                setting_text(&key(&format!("transform.config.{k}")), v)?,
            ))
        })
        .collect::<Result<_, ConfigError>>()?;
    let keys = section
        .keys
        .iter()
        .flatten()
        .map(|(name, secret)| {
            Ok((
                name.clone(),
                secret.resolve(&key(&format!("transform.keys.{name}")))?,
            ))
        })
        .collect::<Result<Vec<_>, ConfigError>>()?;
    Ok(TransformSpec {
        name: section
            .name
            .clone()
            .unwrap_or_else(|| name_from_path(&path)),
        config,
        on_error: section.on_error.unwrap_or_default(),
        limits: section.limits(),
        allow_tables: section.allow_tables.unwrap_or_default(),
        keys: Keys::new(keys.iter().map(|(n, k)| (n.clone(), k.as_bytes()))),
        scope: (!section.share_instances.unwrap_or(true)).then(|| org.to_string()),
        path,
    })
}

/// A key given on the command line: `env:VAR` or `file:PATH`, read now. `flag` and `name`
/// (NAME.KEY or KEY) name it in errors, which never carry a value.
fn key_from_flag(flag: &str, name: &str, source: &str) -> Result<String, ConfigError> {
    let secret = if let Some(var) = source.strip_prefix("env:") {
        Secret::Env {
            env: var.to_string(),
        }
    } else if let Some(path) = source.strip_prefix("file:") {
        Secret::File {
            file: PathBuf::from(path),
        }
    } else {
        return Err(invalid(
            flag,
            name,
            "give where the key is, as env:VAR or file:PATH, never the key itself (a command line is visible to every user of the machine)",
        ));
    };
    secret.resolve(&format!("{flag} {name}"))
}

/// A `NAME.KEY=VALUE` flag: the transform of `specs` it names, its key and value. Errors
/// name the item by NAME.KEY only: the value may be a secret.
fn named_item<'a, 's>(
    flag: &str,
    item: &'a str,
    example: &str,
    specs: &'s mut [TransformSpec],
    chain: &str,
) -> Result<(&'s mut TransformSpec, &'a str, &'a str), ConfigError> {
    let named = item.split_once('=').map_or("(no =)", |(k, _)| k);
    let parsed = item
        .split_once('=')
        .and_then(|(k, v)| k.split_once('.').map(|(n, k)| (n, k, v)))
        .filter(|(n, k, _)| !n.is_empty() && !k.is_empty());
    let Some((name, key, value)) = parsed else {
        return Err(invalid(flag, named, format!("write it as {example}")));
    };
    let spec = specs.iter_mut().find(|s| s.name == name).ok_or_else(|| {
        invalid(
            flag,
            named,
            format!("no transform named {name} in the chain (transforms: {chain})"),
        )
    })?;
    Ok((spec, key, value))
}

/// `--transform-config NAME.KEY=VALUE`, `--transform-key NAME.KEY=env:VAR|file:PATH` and
/// `--transform-on-error [NAME=]POLICY`.
fn apply_flags(specs: &mut [TransformSpec], flags: &TransformArgs) -> Result<(), ConfigError> {
    let chain = specs
        .iter()
        .map(|s| s.name.clone())
        .collect::<Vec<_>>()
        .join(", ");
    for item in &flags.config {
        let example = "NAME.KEY=VALUE, e.g. mask.fields=Email,Phone";
        let (spec, setting, value) = named_item("transform-config", item, example, specs, &chain)?;
        spec.config.retain(|(k, _)| k != setting);
        spec.config.push((setting.to_string(), value.to_string()));
    }
    for item in &flags.keys {
        let example = "NAME.KEY=env:VAR or NAME.KEY=file:PATH, e.g. mask.pii=env:MASK_KEY";
        let (spec, key_name, source) = named_item("transform-key", item, example, specs, &chain)?;
        let named = item.split_once('=').map_or(item.as_str(), |(k, _)| k);
        let key = key_from_flag("transform-key", named, source)?;
        spec.keys = spec.keys.with(key_name, key.as_bytes());
    }
    for item in &flags.on_error {
        let (name, policy) = match item.split_once('=') {
            Some((n, p)) => (Some(n), p),
            None => (None, item.as_str()),
        };
        let policy = <OnError as clap::ValueEnum>::from_str(policy, true).map_err(|_| {
            invalid(
                "transform-on-error",
                item,
                "the policy is dead-letter, skip or stop",
            )
        })?;
        match name {
            None => specs.iter_mut().for_each(|s| s.on_error = policy),
            Some(name) => {
                let spec = specs.iter_mut().find(|s| s.name == name).ok_or_else(|| {
                    invalid(
                        "transform-on-error",
                        item,
                        format!("no transform named {name} in the chain (transforms: {chain})"),
                    )
                })?;
                spec.on_error = policy;
            }
        }
    }
    Ok(())
}

impl ComponentArgs {
    /// The component as a one-transform chain.
    pub fn spec(&self) -> Result<TransformSpec, ConfigError> {
        if !self.component.is_file() {
            return Err(invalid(
                "component",
                self.component.display().to_string(),
                "no such file; give the path of a .wasm component",
            ));
        }
        let config = self
            .config
            .iter()
            .map(|item| {
                item.split_once('=')
                    .filter(|(k, _)| !k.is_empty())
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .ok_or_else(|| {
                        invalid(
                            "config",
                            item,
                            "write it as KEY=VALUE, e.g. fields=Email,Phone",
                        )
                    })
            })
            .collect::<Result<_, _>>()?;
        let mut keys = Keys::default();
        for item in &self.keys {
            let Some((name, source)) = item.split_once('=').filter(|(k, _)| !k.is_empty()) else {
                return Err(invalid(
                    "key",
                    item.split_once('=').map_or("(no =)", |(k, _)| k),
                    "write it as KEY=env:VAR or KEY=file:PATH, e.g. pii=env:MASK_KEY",
                ));
            };
            keys = keys.with(name, key_from_flag("key", name, source)?.as_bytes());
        }
        Ok(TransformSpec {
            name: name_from_path(&self.component),
            path: self.component.clone(),
            config,
            on_error: OnError::DeadLetter,
            limits: self.limits.limits(),
            allow_tables: Vec::new(),
            keys,
            scope: None,
        })
    }

    pub fn cache(&self) -> Option<PathBuf> {
        cache_dir(self.cache_dir.clone())
    }
}

/// The compile cache directory: the setting, else the user's cache directory.
pub fn cache_dir(setting: Option<PathBuf>) -> Option<PathBuf> {
    setting.or_else(|| {
        std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .map(|d| d.join("sfzb-host"))
    })
}
