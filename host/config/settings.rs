//! Each setting is defined once, in a [`settings!`] group: that one definition is the flag
//! (clap), the file key (serde, kebab-case), the environment variable, the help and the
//! reference table's text (its doc comment), and the default (one expression). Layering
//! (`overlay`), "was anything set" (`is_empty`) and the default-applying accessors are
//! generated from it, so no list of fields is written twice.
//!
//! The README's configuration table is [`reference_markdown`]; a test keeps the two equal,
//! and `sfzb-host config settings` prints it.

/// One row of the reference table.
#[derive(Clone, Debug)]
pub struct Setting {
    /// Where the key goes in the file: `top level`, `[databricks]`, ….
    pub section: &'static str,
    /// The field's name; the file key is it in kebab-case.
    pub field: &'static str,
    /// The flag, for settings that have one.
    pub flag: Option<&'static str>,
    pub env: Option<&'static str>,
    /// As it would be written in the file.
    pub default: Option<String>,
    pub doc: &'static str,
}

impl Setting {
    pub fn key(&self) -> String {
        self.field.replace('_', "-")
    }

    /// The doc comment as one line.
    pub fn text(&self) -> String {
        self.doc
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// How a default reads in the file.
pub fn default_text<T: serde::Serialize>(value: T) -> String {
    toml::Value::try_from(value)
        .map(|v| v.to_string())
        .unwrap_or_default()
}

/// Declares a group of settings (a section of the file, and flags of `run`):
///
/// ```text
/// settings! {
///     /// The group's doc.
///     pub struct Name in "[section]" {
///         /// A setting's doc: its help and its row in the reference.
///         [arg(value_name = "SECS")]            // more clap / serde attributes
///         field: Type = default, flag "flag-name", env "ENV_VAR";
///     }
///     file_only { /// doc
///         field: Type; }                       // a key with no flag
///     sections { field: Type; }                // nested sections, not settings
/// }
/// ```
///
/// Settings are held as `Option<Type>` (unset until layered); `name.field()` gives the
/// value or its default.
macro_rules! settings {
    (
        $(#[$meta:meta])*
        pub struct $name:ident in $section:literal {
            $(
                $(#[doc = $doc:literal])+
                $([$attr:meta])*
                $field:ident : $ty:ty $(= $default:expr)?, flag $flag:literal $(, env $env:literal)? ;
            )*
        }
        $(file_only {
            $(
                $(#[doc = $fdoc:literal])+
                $([$fattr:meta])*
                $ffield:ident : $fty:ty ;
            )*
        })?
        $(sections {
            $(
                $(#[doc = $sdoc:literal])+
                $([$sattr:meta])*
                $sfield:ident : $sty:ty ;
            )*
        })?
    ) => {
        $(#[$meta])*
        #[derive(Clone, Debug, Default, clap::Args, serde::Deserialize)]
        #[serde(deny_unknown_fields, rename_all = "kebab-case")]
        pub struct $name {
            $(
                $(#[doc = $doc])+
                #[arg(long = $flag, id = $flag $(, env = $env)?)]
                $(#[$attr])*
                pub $field: Option<$ty>,
            )*
            $($(
                $(#[doc = $fdoc])+
                #[arg(skip)]
                $(#[$fattr])*
                pub $ffield: Option<$fty>,
            )*)?
            $($(
                $(#[doc = $sdoc])+
                #[arg(skip)]
                $(#[$sattr])*
                pub $sfield: $sty,
            )*)?
        }

        impl $name {
            /// Each setting set in `over` replaces this one's (sections are left alone).
            pub fn overlay(mut self, over: Self) -> Self {
                $( if over.$field.is_some() { self.$field = over.$field; } )*
                $($( if over.$ffield.is_some() { self.$ffield = over.$ffield; } )*)?
                self
            }

            /// No setting is set.
            pub fn is_empty(&self) -> bool {
                $( self.$field.is_none() && )*
                $($( self.$ffield.is_none() && )*)?
                true
            }

            $($(
                #[doc = concat!("`", stringify!($field), "`, or its default.")]
                pub fn $field(&self) -> $ty {
                    self.$field.clone().unwrap_or_else(|| <$ty>::from($default))
                }
            )?)*

            /// The group's rows of the reference table.
            pub fn reference() -> Vec<$crate::config::settings::Setting> {
                use $crate::config::settings::{Setting, default_text};
                vec![
                    $(Setting {
                        section: $section,
                        field: stringify!($field),
                        flag: Some($flag),
                        env: None $(.or(Some($env)))?,
                        default: None $(.or(Some(default_text(<$ty>::from($default)))))?,
                        doc: concat!($($doc, "\n"),+),
                    },)*
                    $($(Setting {
                        section: $section,
                        field: stringify!($ffield),
                        flag: None,
                        env: None,
                        default: None,
                        doc: concat!($($fdoc, "\n"),+),
                    },)*)?
                ]
            }
        }
    };
}

pub(crate) use settings;

/// Every setting, section by section.
pub fn reference() -> Vec<Setting> {
    use super::file::{
        DatabricksSection, FileConfig, OrgSection, SubscriptionSection, TransformSection,
    };
    [
        FileConfig::reference(),
        OrgSection::reference(),
        DatabricksSection::reference(),
        SubscriptionSection::reference(),
        TransformSection::reference(),
    ]
    .concat()
}

/// The README's configuration reference: a table per section.
pub fn reference_markdown() -> String {
    let mut out = String::new();
    let settings = reference();
    let mut sections: Vec<&str> = settings.iter().map(|s| s.section).collect();
    sections.dedup();
    for section in sections {
        out.push_str(&format!(
            "\n**{section}**\n\n| key | flag | env | default | meaning |\n|---|---|---|---|---|\n"
        ));
        for s in settings.iter().filter(|s| s.section == section) {
            let code = |t: &str| format!("`{t}`");
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} |\n",
                code(&s.key()),
                s.flag.map_or(String::new(), |f| code(&format!("--{f}"))),
                s.env.map_or(String::new(), code),
                s.default.as_deref().map_or(String::new(), code),
                s.text().replace('|', "\\|"),
            ));
        }
    }
    out
}

/// `[default: …]` appended to the help of every flag that has one: defaults are applied
/// after layering (a flag, then the file), so clap itself is given none.
pub fn with_defaults(command: clap::Command) -> clap::Command {
    let defaults: Vec<(&'static str, String)> = reference()
        .into_iter()
        .filter_map(|s| Some((s.flag?, s.default?)))
        .collect();
    annotate(command, &defaults)
}

fn annotate(command: clap::Command, defaults: &[(&'static str, String)]) -> clap::Command {
    command
        .mut_args(|arg| {
            let Some((_, default)) = defaults.iter().find(|(flag, _)| arg.get_id() == *flag) else {
                return arg;
            };
            let note = |help: Option<&clap::builder::StyledStr>| {
                format!(
                    "{} [default: {default}]",
                    help.map(|h| h.to_string()).unwrap_or_default()
                )
            };
            let help = note(arg.get_help());
            match arg.get_long_help().map(|h| note(Some(h))) {
                Some(long) => arg.help(help).long_help(long),
                None => arg.help(help),
            }
        })
        .mut_subcommands(|sub| annotate(sub, defaults))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_setting_has_a_doc_and_a_distinct_flag() {
        let settings = reference();
        let mut flags: Vec<&str> = settings.iter().filter_map(|s| s.flag).collect();
        let count = flags.len();
        flags.sort_unstable();
        flags.dedup();
        assert_eq!(flags.len(), count, "two settings share a flag");
        for s in &settings {
            assert!(!s.text().is_empty(), "{} has no doc", s.key());
        }
    }

    #[test]
    fn the_readme_configuration_table_is_the_generated_one() {
        let readme = include_str!("../../README.md");
        let begin = "<!-- settings: generated by `sfzb-host config settings` -->\n";
        let end = "<!-- settings end -->";
        let start = readme
            .find(begin)
            .expect("the README has the settings marker")
            + begin.len();
        let stop = readme[start..]
            .find(end)
            .expect("the README has the end marker")
            + start;
        let table = reference_markdown();
        assert!(
            readme[start..stop] == table,
            "README.md's configuration table is out of date; replace it with the output of `cargo run --release -- config settings`:\n{table}"
        );
    }

    #[test]
    fn help_names_the_default_and_the_flag_is_still_unset() {
        use clap::{CommandFactory, FromArgMatches};
        let command = with_defaults(crate::cli::Cli::command());
        let run = command.find_subcommand("run").unwrap();
        let flag = run
            .get_arguments()
            .find(|a| a.get_id() == "flush-interval-ms")
            .unwrap();
        let help = flag.get_help().unwrap().to_string();
        assert!(help.ends_with("[default: 1000]"), "{help}");
        let matches = command.try_get_matches_from(["sfzb-host", "run"]).unwrap();
        let cli = crate::cli::Cli::from_arg_matches(&matches).unwrap();
        let crate::cli::Command::Run(args) = cli.into_command() else {
            panic!("run parses as run")
        };
        assert_eq!(args.run.flush_interval_ms, None);
        assert_eq!(args.run.flush_interval_ms(), 1000);
    }
}
