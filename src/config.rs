//! Process settings: built-in defaults, then an optional YAML file, then environment variables.
//!
//! The layering (defaults <- `--config FILE` <- environment) is done by the `config` crate;
//! the environment variables are mapped one by one because their names are part of the
//! product contract (SPEC section 6) and do not follow one prefix. Every value is checked
//! here, at start-up, so that a bad setting stops the process with one line naming the
//! variable or file key, instead of surfacing later as odd behaviour.
//! `config/default.yaml` documents every setting; a test keeps it equal to [`Settings::default`].

mod de;
mod layers;

use crate::limits::Budgets;
pub use crate::limits::{LimitSettings, RateSetting};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::PathBuf;

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
    /// Credit quotas per workspace (SPEC section 8); `data_dir` is `SLUICE_DATA`.
    #[serde(default)]
    pub quotas: crate::quota::QuotaSettings,
    /// Named limits shared by every workspace (SPEC section 7), as written; checked by
    /// [`Settings::load`] and read with [`Settings::shared_limits`].
    #[serde(default = "no_limits")]
    pub shared_limits: serde_json::Value,
}

fn no_limits() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

impl Settings {
    /// The `shared_limits` section, read and checked.
    pub fn shared_limits(
        &self,
    ) -> Result<Vec<crate::limits::named::LimitSpec>, Vec<crate::limits::named::SpecError>> {
        let section = crate::value::Value::from(self.shared_limits.clone());
        crate::limits::named::spec::parse_limits(&section, &["shared_limits"])
    }
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
            quotas: crate::quota::QuotaSettings::default(),
            shared_limits: no_limits(),
        }
    }
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
            .field("quotas", &self.quotas)
            .field("shared_limits", &self.shared_limits)
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

#[cfg(test)]
mod tests;
