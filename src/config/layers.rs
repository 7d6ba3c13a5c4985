//! The layering of the settings: built-in defaults, then an optional YAML file, then the
//! environment variables of SPEC section 6, each read and checked into one line of error.

use super::de::LOG_FORMAT_EXPECTED;
use super::{ConfigError, Settings};
use crate::limits::values;
use crate::limits::LimitKind;
use std::path::Path;

/// How an environment variable's text becomes a setting.
#[derive(Clone, Copy)]
enum Parse {
    Text,
    LogFormat,
    Switch,
    Rate,
    Burst,
}

/// An environment variable, the settings key it sets, and how its text is read.
pub(super) struct EnvVar {
    pub(super) name: &'static str,
    key: &'static str,
    parse: Parse,
}

const fn var(name: &'static str, key: &'static str, parse: Parse) -> EnvVar {
    EnvVar { name, key, parse }
}

/// Every environment variable of SPEC section 6 (`RUST_LOG` belongs to tracing).
pub(super) const ENV_VARS: &[EnvVar] = &[
    var("SLUICE_WORKSPACES", "workspaces", Parse::Text),
    var("SLUICE_SECRETS", "secrets", Parse::Text),
    var("SLUICE_LISTEN", "listen", Parse::Text),
    var("SLUICE_ADMIN_TOKEN", "admin_token", Parse::Text),
    var("NATS_URL", "nats_url", Parse::Text),
    var("SLUICE_LOG_FORMAT", "log_format", Parse::LogFormat),
    var("SLUICE_DATA", "quotas.data_dir", Parse::Text),
    var("RATE_LIMIT_DISABLED", "limits.disabled", Parse::Switch),
    var(
        "RATE_LIMIT_AUTOMATIONS",
        "limits.automations.rate",
        Parse::Rate,
    ),
    var(
        "RATE_LIMIT_AUTOMATIONS_BURST",
        "limits.automations.burst",
        Parse::Burst,
    ),
    var("RATE_LIMIT_EMITS", "limits.emits.rate", Parse::Rate),
    var("RATE_LIMIT_EMITS_BURST", "limits.emits.burst", Parse::Burst),
    var("RATE_LIMIT_FETCHS", "limits.fetchs.rate", Parse::Rate),
    var(
        "RATE_LIMIT_FETCHS_BURST",
        "limits.fetchs.burst",
        Parse::Burst,
    ),
    var("RATE_LIMIT_REPEATS", "limits.repeats.rate", Parse::Rate),
    var(
        "RATE_LIMIT_REPEATS_BURST",
        "limits.repeats.burst",
        Parse::Burst,
    ),
];

impl Settings {
    /// Loads defaults <- optional YAML file (`--config FILE`) <- the process environment.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        // A variable that is not valid Unicode cannot hold any valid setting, so it counts as unset.
        Settings::load_from(file, &|name| std::env::var(name).ok())
    }

    /// Like [`Settings::load`], reading variables through `env`; an empty variable counts as unset.
    pub fn load_from(
        file: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Settings, ConfigError> {
        let file_name = file.map(|f| f.display().to_string());
        let file_error = |e: config::ConfigError| ConfigError::File {
            file: file_name.clone().unwrap_or_else(|| "settings".to_owned()),
            message: one_line(&describe(&e)),
        };
        let defaults = config::Config::try_from(&Settings::default()).map_err(&file_error)?;
        let mut builder = config::Config::builder().add_source(defaults);
        if let Some(path) = file {
            builder = builder.add_source(
                config::File::from(path)
                    .format(config::FileFormat::Yaml)
                    .required(true),
            );
        }
        let mut given = Vec::new();
        for var in ENV_VARS {
            let Some(text) = env(var.name).filter(|t| !t.trim().is_empty()) else {
                continue;
            };
            let value = env_value(var, &text)?;
            builder = builder.set_override(var.key, value).map_err(&file_error)?;
            given.push((var.name, text));
        }
        let settings: Settings = builder
            .build()
            .and_then(config::Config::try_deserialize)
            .map_err(&file_error)?;
        settings.check_limit_pairs(file_name.as_deref(), &given)?;
        if let Err(e) = settings.limits.cluster().validate() {
            return Err(ConfigError::File {
                file: file_name.unwrap_or_else(|| "settings".to_owned()),
                message: e.to_string(),
            });
        }
        settings.quotas.validate().map_err(|e| ConfigError::File {
            file: file_name.unwrap_or_else(|| "settings".to_owned()),
            message: e.to_string(),
        })?;
        settings.check_shared_limits(file)?;
        Ok(settings)
    }

    /// Checks `shared_limits`; the first problem is reported at its place in the file.
    fn check_shared_limits(&self, file: Option<&Path>) -> Result<(), ConfigError> {
        let Err(errors) = self.shared_limits() else {
            return Ok(());
        };
        let Some(first) = errors.first() else {
            return Ok(());
        };
        let text = file.and_then(|f| std::fs::read_to_string(f).ok());
        let (line, column) = text
            .as_deref()
            .map_or((1, 1), |t| crate::dsl::locate_path(t, &first.path));
        Err(ConfigError::File {
            file: format!(
                "{}:{line}:{column}",
                file.map_or("settings".into(), |f| f.display().to_string())
            ),
            message: first.to_string(),
        })
    }

    /// Checks each rate against its burst, which the per-value checks cannot do. The error
    /// names where the burst came from, since changing the burst is what fixes the pair.
    fn check_limit_pairs(
        &self,
        file: Option<&str>,
        given: &[(&'static str, String)],
    ) -> Result<(), ConfigError> {
        let given_for = |key: &str| {
            let var = ENV_VARS.iter().find(|v| v.key == key)?;
            given.iter().find(|(name, _)| *name == var.name)
        };
        for kind in LimitKind::ALL {
            let setting = self.limits.get(kind);
            let Err(problem) = values::quota(setting.rate, setting.burst) else {
                continue;
            };
            let burst_key = format!("limits.{}.burst", kind.as_str());
            let rate_key = format!("limits.{}.rate", kind.as_str());
            // Built-in bursts fit every valid rate, so with no file the rate variable is to blame.
            let env = given_for(&burst_key)
                .or_else(|| file.is_none().then(|| given_for(&rate_key)).flatten());
            return Err(match (env, file) {
                (Some((var, text)), _) => ConfigError::Env {
                    var,
                    value: text.clone(),
                    expected: problem.to_string(),
                },
                (None, file) => ConfigError::File {
                    file: file.unwrap_or("settings").to_owned(),
                    message: format!("{burst_key}: {problem}, got {}", setting.burst),
                },
            });
        }
        Ok(())
    }
}

/// Reads one environment variable's text into the value its settings key takes.
fn env_value(var: &EnvVar, text: &str) -> Result<config::Value, ConfigError> {
    let refuse = |expected: String| ConfigError::Env {
        var: var.name,
        value: text.to_owned(),
        expected,
    };
    let kind = match var.parse {
        Parse::Text => config::ValueKind::from(text),
        Parse::LogFormat => match text.trim().to_ascii_lowercase().as_str() {
            format @ ("text" | "json") => config::ValueKind::from(format),
            _ => return Err(refuse(LOG_FORMAT_EXPECTED.to_owned())),
        },
        Parse::Switch => values::parse_bool(text)
            .map_err(|e| refuse(e.to_string()))?
            .into(),
        Parse::Rate => values::parse_rate(text)
            .map_err(|e| refuse(e.to_string()))?
            .into(),
        Parse::Burst => values::parse_burst(text)
            .map_err(|e| refuse(e.to_string()))?
            .into(),
    };
    Ok(config::Value::new(
        Some(&format!("environment variable {}", var.name)),
        kind,
    ))
}

/// A `config` error as "key: what is wrong", the form every other settings error takes.
fn describe(error: &config::ConfigError) -> String {
    match error {
        config::ConfigError::Type {
            unexpected,
            expected,
            key: Some(key),
            ..
        } => format!("{key}: expected {expected}, got {unexpected}"),
        config::ConfigError::At {
            error,
            key: Some(key),
            ..
        } => format!("{key}: {}", describe(error)),
        config::ConfigError::NotFound(key) => format!("{key}: missing"),
        // The file's path already starts the message.
        config::ConfigError::FileParse { cause, .. } => cause.to_string(),
        other => other.to_string(),
    }
}

/// Error texts from parsers may span lines; the contract is one line per error.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}
