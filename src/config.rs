//! Process settings: built-in defaults, then an optional YAML file, then environment variables.
//!
//! The layering (defaults <- `--config FILE` <- environment) is done by the `config` crate;
//! the environment variables are mapped one by one because their names are part of the
//! product contract (SPEC section 6) and do not follow one prefix. Every value is checked
//! here, at start-up, so that a bad setting stops the process with one line naming the
//! variable or file key, instead of surfacing later as odd behaviour.
//! `config/default.yaml` documents every setting; a test keeps it equal to [`Settings::default`].

use crate::limits::values;
use crate::limits::{Budgets, LimitKind};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};

/// Everything sluice can be configured with.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The workspaces root (`SLUICE_WORKSPACES`).
    pub workspaces: PathBuf,
    /// The folder of `<workspace>.yml` secret files (`SLUICE_SECRETS`).
    pub secrets: PathBuf,
    /// The HTTP listen address (`SLUICE_LISTEN`).
    pub listen: String,
    /// The operator token of the secrets API; `None` turns that API off (`SLUICE_ADMIN_TOKEN`).
    pub admin_token: Option<String>,
    /// The NATS server; `None` means the embedded in-process bus (`NATS_URL`).
    pub nats_url: Option<String>,
    /// `"text"` or `"json"` logs (`SLUICE_LOG_FORMAT`).
    #[serde(deserialize_with = "de::log_format")]
    pub log_format: String,
    /// Interpreter limits.
    pub runtime: RuntimeSettings,
    /// The `fetch` instruction.
    pub fetch: FetchSettings,
    /// The HTTP server.
    pub http: HttpSettings,
    /// Per-workspace rate limits (SPEC section 4).
    pub limits: LimitSettings,
    /// What one execution may hold and do.
    #[serde(default)]
    pub budgets: Budgets,
    /// The NATS event bus, used when `nats_url` is set.
    #[serde(default)]
    pub nats: NatsSettings,
}

/// Interpreter limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeSettings {
    /// The deepest chain of automations calling automations.
    #[serde(deserialize_with = "de::whole")]
    pub max_call_depth: u32,
    /// The default timeout of the `wait` instruction, in seconds.
    #[serde(deserialize_with = "de::non_negative")]
    pub wait_timeout_secs: f64,
    /// The largest payload of an emitted event, in bytes of JSON.
    #[serde(deserialize_with = "de::whole")]
    pub max_event_bytes: usize,
    /// Listener executions the embedded bus runs at once (`nats.max_inflight` for NATS).
    #[serde(deserialize_with = "de::positive")]
    pub max_inflight_events: usize,
    /// Events the embedded bus holds waiting for a free slot; when full, `emit` waits.
    #[serde(deserialize_with = "de::positive")]
    pub event_queue: usize,
    /// The largest automation file or `workspace.yml` loaded, in bytes.
    #[serde(deserialize_with = "de::whole")]
    pub max_file_bytes: u64,
}

/// The `fetch` instruction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FetchSettings {
    /// How long a request may take, in milliseconds.
    #[serde(deserialize_with = "de::whole")]
    pub timeout_ms: u64,
    /// The largest response body read, in bytes.
    #[serde(deserialize_with = "de::whole")]
    pub max_response_bytes: usize,
    /// The `User-Agent` header sent.
    pub user_agent: String,
    /// Requests open at once to one host (scheme, name and port); more wait.
    #[serde(deserialize_with = "de::positive")]
    pub max_connections_per_host: usize,
    /// Networks `fetch` never connects to, redirects included; checked on resolved addresses.
    // `default`: the `config` crate drops an empty list, which must read as empty, not missing.
    #[serde(default, deserialize_with = "de::networks")]
    pub deny_networks: Vec<ipnet::IpNet>,
    /// When not empty, the only networks `fetch` connects to (`deny_networks` still applies).
    #[serde(default, deserialize_with = "de::networks")]
    pub allow_networks: Vec<ipnet::IpNet>,
}

/// The HTTP server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    /// The largest request body accepted, in bytes; larger gets 413.
    #[serde(deserialize_with = "de::whole")]
    pub max_body: usize,
    /// Milliseconds a client has to send a request's head, from its first byte.
    #[serde(deserialize_with = "de::positive")]
    pub header_read_timeout_ms: u64,
    /// Seconds a keep-alive connection may sit without a request before it is closed.
    #[serde(deserialize_with = "de::positive")]
    pub idle_timeout_secs: u64,
    /// Connections open at once; past it, idle ones are closed to make room, or new ones wait.
    #[serde(deserialize_with = "de::positive")]
    pub max_connections: usize,
    /// Seconds a stopping server lets requests in flight finish before cancelling them.
    #[serde(deserialize_with = "de::whole")]
    pub shutdown_grace_secs: u64,
    /// The request headers a webhook's executed event shows (the automation
    /// still receives them all): the others may carry credentials.
    pub event_headers: Vec<String>,
}

/// The NATS event bus (SPEC section 5): JetStream names, delivery and shutdown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsSettings {
    /// The JetStream stream that stores emitted events.
    #[serde(deserialize_with = "de::name")]
    pub stream: String,
    /// The durable pull consumer shared by every instance.
    #[serde(deserialize_with = "de::name")]
    pub consumer: String,
    /// Seconds an instance may hold an event without acknowledging it before it is redelivered.
    #[serde(deserialize_with = "de::positive")]
    pub ack_wait_secs: u64,
    /// Deliveries of one event before JetStream gives up on it; -1 means no limit.
    #[serde(deserialize_with = "de::max_deliver")]
    pub max_deliver: i64,
    /// Events one instance runs at once; it pulls no more than that.
    #[serde(deserialize_with = "de::positive")]
    pub max_inflight: usize,
    /// Seconds an event stays in the stream; 0 keeps it until acknowledged and the stream is full.
    #[serde(deserialize_with = "de::whole")]
    pub max_age_secs: u64,
    /// Seconds a stopping instance waits for its running events before handing them back.
    #[serde(deserialize_with = "de::whole")]
    pub shutdown_grace_secs: u64,
    /// Seconds during which a resent event id (`Nats-Msg-Id`) is stored only once.
    #[serde(deserialize_with = "de::positive")]
    pub duplicate_window_secs: u64,
}

impl Default for NatsSettings {
    fn default() -> NatsSettings {
        NatsSettings {
            stream: "SLUICE_EVENTS".to_owned(),
            consumer: "sluice-workers".to_owned(),
            ack_wait_secs: 5,
            max_deliver: 10,
            max_inflight: 64,
            max_age_secs: 86_400,
            shutdown_grace_secs: 10,
            duplicate_window_secs: 120,
        }
    }
}

/// The default limits of every workspace; secrets may override them per workspace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    /// Turns every limit of every workspace off (`RATE_LIMIT_DISABLED`).
    pub disabled: bool,
    /// Automation executions.
    pub automations: RateSetting,
    /// `emit` instructions.
    pub emits: RateSetting,
    /// `fetch` instructions.
    pub fetchs: RateSetting,
    /// `repeat` iterations.
    pub repeats: RateSetting,
}

/// One token bucket: its refill rate and its capacity.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateSetting {
    /// Tokens per second, possibly fractional; 0 turns the limit off.
    #[serde(deserialize_with = "de::rate")]
    pub rate: f64,
    /// The bucket's capacity, the most tokens taken at once after a quiet time.
    #[serde(deserialize_with = "de::burst")]
    pub burst: u32,
}

/// A setting that cannot be used; `Display` is one line naming the variable or file key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// An environment variable holds a bad value.
    #[error("{var}: {expected}, got {value:?}")]
    Env {
        /// The variable's name.
        var: &'static str,
        /// Its value as given.
        value: String,
        /// What was expected instead.
        expected: String,
    },
    /// The settings file cannot be read, does not parse, or holds a bad or unknown key.
    #[error("{file}: {message}")]
    File {
        /// The file's path.
        file: String,
        /// What is wrong, starting with the key when there is one.
        message: String,
    },
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            workspaces: PathBuf::from("./automations"),
            secrets: PathBuf::from("./config/secrets"),
            listen: "127.0.0.1:3003".to_owned(),
            admin_token: None,
            nats_url: None,
            log_format: "text".to_owned(),
            runtime: RuntimeSettings {
                max_call_depth: 20,
                wait_timeout_secs: 20.0,
                max_event_bytes: 100_000,
                max_inflight_events: 64,
                event_queue: 10_000,
                max_file_bytes: 4 * 1024 * 1024,
            },
            fetch: FetchSettings {
                timeout_ms: 30_000,
                max_response_bytes: 10 * 1024 * 1024,
                user_agent: "Prisme.ai Workspaces".to_owned(),
                max_connections_per_host: 32,
                // Link-local holds cloud metadata services (169.254.169.254).
                deny_networks: vec![
                    ipnet::IpNet::new_assert([169, 254, 0, 0].into(), 16),
                    ipnet::IpNet::new_assert([0xfe80, 0, 0, 0, 0, 0, 0, 0].into(), 10),
                ],
                allow_networks: Vec::new(),
            },
            http: HttpSettings {
                max_body: 1024 * 1024,
                header_read_timeout_ms: 10_000,
                idle_timeout_secs: 60,
                max_connections: 10_000,
                shutdown_grace_secs: 10,
                event_headers: [
                    "content-type",
                    "user-agent",
                    "x-request-id",
                    "x-correlation-id",
                ]
                .map(String::from)
                .to_vec(),
            },
            limits: LimitSettings::default(),
            budgets: Budgets::default(),
            nats: NatsSettings::default(),
        }
    }
}

impl Default for LimitSettings {
    fn default() -> LimitSettings {
        let limit = |rate, burst| RateSetting { rate, burst };
        LimitSettings {
            disabled: false,
            automations: limit(100.0, 400),
            emits: limit(30.0, 100),
            fetchs: limit(50.0, 200),
            repeats: limit(1000.0, 4000),
        }
    }
}

impl LimitSettings {
    /// The setting of one kind of limit.
    pub fn get(&self, kind: LimitKind) -> RateSetting {
        match kind {
            LimitKind::Automations => self.automations,
            LimitKind::Emits => self.emits,
            LimitKind::Fetchs => self.fetchs,
            LimitKind::Repeats => self.repeats,
        }
    }
}

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
struct EnvVar {
    name: &'static str,
    key: &'static str,
    parse: Parse,
}

const fn var(name: &'static str, key: &'static str, parse: Parse) -> EnvVar {
    EnvVar { name, key, parse }
}

/// Every environment variable of SPEC section 6 (`RUST_LOG` belongs to tracing).
const ENV_VARS: &[EnvVar] = &[
    var("SLUICE_WORKSPACES", "workspaces", Parse::Text),
    var("SLUICE_SECRETS", "secrets", Parse::Text),
    var("SLUICE_LISTEN", "listen", Parse::Text),
    var("SLUICE_ADMIN_TOKEN", "admin_token", Parse::Text),
    var("NATS_URL", "nats_url", Parse::Text),
    var("SLUICE_LOG_FORMAT", "log_format", Parse::LogFormat),
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

const LOG_FORMAT_EXPECTED: &str = "expected \"text\" or \"json\"";

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
        Ok(settings)
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

/// Hand-written so that the admin token and NATS credentials never reach a log.
impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("workspaces", &self.workspaces)
            .field("secrets", &self.secrets)
            .field("listen", &self.listen)
            .field(
                "admin_token",
                &self.admin_token.as_ref().map(|_| "<redacted>"),
            )
            .field("nats_url", &self.nats_url.as_deref().map(redact_userinfo))
            .field("log_format", &self.log_format)
            .field("runtime", &self.runtime)
            .field("fetch", &self.fetch)
            .field("http", &self.http)
            .field("limits", &self.limits)
            .field("budgets", &self.budgets)
            .field("nats", &self.nats)
            .finish()
    }
}

/// `nats://user:pass@host` becomes `nats://<redacted>@host`.
pub fn redact_userinfo(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}<redacted>{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// Checked deserialisation of the file's values, so that each bad value is refused with the
/// same wording as the environment variables (the `config` crate alone would round `2.5` to a
/// whole `3` and accept negative rates).
pub(crate) mod de {
    use super::LOG_FORMAT_EXPECTED;
    use crate::limits::values;
    use serde::de::{Error, Visitor};
    use serde::{Deserialize, Deserializer};
    use std::fmt;

    /// A number as given: its value (when it is one) and how to show it in a message.
    struct Raw {
        number: Option<f64>,
        shown: String,
    }

    struct RawVisitor;

    impl Visitor<'_> for RawVisitor {
        type Value = Raw;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a number")
        }

        fn visit_u64<E: Error>(self, v: u64) -> Result<Raw, E> {
            Ok(Raw {
                number: Some(v as f64),
                shown: v.to_string(),
            })
        }

        fn visit_i64<E: Error>(self, v: i64) -> Result<Raw, E> {
            Ok(Raw {
                number: Some(v as f64),
                shown: v.to_string(),
            })
        }

        fn visit_f64<E: Error>(self, v: f64) -> Result<Raw, E> {
            Ok(Raw {
                number: Some(v),
                shown: v.to_string(),
            })
        }

        fn visit_str<E: Error>(self, v: &str) -> Result<Raw, E> {
            Ok(Raw {
                number: v.trim().parse::<f64>().ok(),
                shown: format!("{v:?}"),
            })
        }
    }

    fn raw<'de, D: Deserializer<'de>>(d: D) -> Result<Raw, D::Error> {
        d.deserialize_any(RawVisitor)
    }

    fn refuse<E: Error>(expected: impl fmt::Display, raw: &Raw) -> E {
        E::custom(format!("{expected}, got {}", raw.shown))
    }

    pub(super) fn rate<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        let raw = raw(d)?;
        let rate = raw.number.ok_or(values::ValueError::NotANumber);
        rate.and_then(values::check_rate)
            .map_err(|e| refuse(e, &raw))
    }

    pub(super) fn burst<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        let raw = raw(d)?;
        let burst = raw.number.ok_or(values::ValueError::NotWhole);
        burst
            .and_then(values::check_burst)
            .map_err(|e| refuse(e, &raw))
    }

    pub(super) fn non_negative<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        let raw = raw(d)?;
        match raw.number {
            Some(n) if n.is_finite() && n >= 0.0 => Ok(n),
            _ => Err(refuse("expected a non-negative number", &raw)),
        }
    }

    pub(crate) fn whole<'de, D, T>(d: D) -> Result<T, D::Error>
    where
        D: Deserializer<'de>,
        T: TryFrom<u64>,
    {
        whole_from(d, 0.0, "expected a non-negative whole number")
    }

    pub(crate) fn positive<'de, D, T>(d: D) -> Result<T, D::Error>
    where
        D: Deserializer<'de>,
        T: TryFrom<u64>,
    {
        whole_from(d, 1.0, "expected a whole number of at least 1")
    }

    fn whole_from<'de, D, T>(d: D, min: f64, expected: &str) -> Result<T, D::Error>
    where
        D: Deserializer<'de>,
        T: TryFrom<u64>,
    {
        let raw = raw(d)?;
        // Below 2^53 every whole f64 is exact, which covers every sensible size or count.
        let exact = raw
            .number
            .filter(|n| n.fract() == 0.0 && (min..9_007_199_254_740_992.0).contains(n));
        exact
            .and_then(|n| T::try_from(n as u64).ok())
            .ok_or_else(|| refuse(expected, &raw))
    }

    pub(super) fn max_deliver<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        let raw = raw(d)?;
        match raw.number {
            Some(n) if n == -1.0 || (n.fract() == 0.0 && (1.0..=1e9).contains(&n)) => Ok(n as i64),
            _ => Err(refuse(
                "expected a whole number of at least 1, or -1 for no limit",
                &raw,
            )),
        }
    }

    /// A JetStream stream or consumer name: NATS refuses spaces, `.`, `*`, `>` and path separators.
    pub(super) fn name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        let text = String::deserialize(d)?;
        let bad = |c: char| c.is_whitespace() || c.is_control() || ".*>/\\".contains(c);
        if text.is_empty() || text.len() > 64 || text.contains(bad) {
            return Err(D::Error::custom(format!(
                "expected a name of 1 to 64 characters without spaces, `.`, `*`, `>`, `/` or `\\`, got {text:?}"
            )));
        }
        Ok(text)
    }

    /// A list of CIDRs (`10.0.0.0/8`, `fc00::/7`); a bare address is that one address.
    pub(super) fn networks<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ipnet::IpNet>, D::Error> {
        let entries = Vec::<String>::deserialize(d)?;
        entries
            .iter()
            .map(|entry| {
                let text = entry.trim();
                text.parse::<ipnet::IpNet>()
                    .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map(|net| net.trunc())
                    .map_err(|_| {
                        D::Error::custom(format!(
                            "expected CIDRs such as 10.0.0.0/8 or fc00::/7, got {entry:?}"
                        ))
                    })
            })
            .collect()
    }

    pub(super) fn log_format<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        let text = String::deserialize(d)?;
        match text.as_str() {
            "text" | "json" => Ok(text),
            _ => Err(D::Error::custom(format!(
                "{LOG_FORMAT_EXPECTED}, got {text:?}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests;
