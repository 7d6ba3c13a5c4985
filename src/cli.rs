//! The commands: `sluice run`, `sluice validate` and `sluice serve` (SPEC §2).
//!
//! Each returns the process exit code: 0 success, 1 the automation failed (or
//! validation found problems), 2 bad input. Messages a user can act on go to
//! stderr, one line each; stdout carries only the result.

use crate::bus::EmbeddedBus;
use crate::config::Settings;
use crate::limits::{LimitKind, Limiters};
use crate::runtime::{Runtime, Start};
use crate::value::{number_to_json, Map, Value};
use crate::workspace;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Arguments of `sluice run`.
#[derive(clap::Args)]
pub struct RunArgs {
    /// The automation's slug.
    pub slug: String,
    /// The workspace folder.
    #[arg(long)]
    pub workspace: PathBuf,
    /// The trigger payload, a JSON object whose keys become variables.
    #[arg(long, default_value = "{}")]
    pub payload: String,
    /// The workspace's secrets file (default: $SLUICE_SECRETS/WORKSPACE.yml).
    #[arg(long)]
    pub secrets: Option<PathBuf>,
    /// Print a JSON report: output, emitted events, throttled, duration, error.
    #[arg(long)]
    pub report: bool,
    /// A settings file (YAML); environment variables win over it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Keep credit usage in this folder (as `quotas.data_dir`), so the workspace's quota
    /// charges and restricts as with `serve`; without it, `run` applies no quota.
    #[arg(long)]
    pub data: Option<PathBuf>,
}

/// Arguments of `sluice serve`.
#[derive(clap::Args)]
pub struct ServeArgs {
    /// The workspaces root (default ./automations, or SLUICE_WORKSPACES).
    #[arg(long)]
    pub workspaces: Option<PathBuf>,
    /// A settings file (YAML); environment variables win over it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The HTTP address (default 127.0.0.1:3003, or SLUICE_LISTEN).
    #[arg(long)]
    pub listen: Option<String>,
}

fn init_logs(default: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| crate::runtime::RedactedStderr);
    let _ = if json {
        logs.json().try_init()
    } else {
        logs.try_init()
    };
}

/// The multi-threaded tokio runtime, or `None` after telling the user why not.
fn async_runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(t) => Some(t),
        Err(e) => {
            eprintln!("sluice: cannot start the async runtime: {e}");
            None
        }
    }
}

/// `sluice serve`: the server until SIGINT/SIGTERM.
pub fn serve(args: ServeArgs) -> u8 {
    let mut settings = match Settings::load(args.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sluice: {e}");
            return 2;
        }
    };
    init_logs("info", settings.log_format == "json");
    if let Some(w) = args.workspaces {
        settings.workspaces = w;
    }
    if let Some(l) = args.listen {
        settings.listen = l;
    }
    let Some(tokio) = async_runtime() else {
        return 2;
    };
    match tokio.block_on(crate::server::serve(settings)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("sluice: {e}");
            1
        }
    }
}

/// `sluice run`: runs one automation and the listeners of its events.
pub fn run(args: RunArgs) -> u8 {
    init_logs("warn", false);
    let settings = match Settings::load(args.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sluice: {e}");
            return 2;
        }
    };
    let payload = match serde_json::from_str::<serde_json::Value>(&args.payload) {
        Ok(serde_json::Value::Object(o)) => match Value::from(serde_json::Value::Object(o)) {
            Value::Object(m) => Arc::unwrap_or_clone(m),
            _ => Map::new(),
        },
        Ok(_) => {
            eprintln!("sluice: --payload must be a JSON object, like '{{\"body\": {{}}}}'");
            return 2;
        }
        Err(e) => {
            eprintln!("sluice: --payload is not valid JSON: {e}");
            return 2;
        }
    };
    let secrets = args.secrets.clone().or_else(|| {
        let id = workspace::id_of(&args.workspace);
        let f = workspace::secrets_file(&settings.secrets, &id);
        f.exists().then_some(f)
    });
    if let Some(s) = &args.secrets {
        if !s.is_file() {
            eprintln!("sluice: --secrets {}: no such file", s.display());
            return 2;
        }
    }
    let max_bytes = settings.runtime.max_file_bytes;
    let ws = match workspace::load_with(&args.workspace, secrets.as_deref(), max_bytes) {
        Ok(ws) => ws,
        Err(errors) => {
            for e in errors {
                eprintln!("{e}");
            }
            return 2;
        }
    };
    let Some(tokio) = async_runtime() else {
        return 2;
    };
    tokio.block_on(run_async(args, settings, ws, payload))
}

async fn run_async(
    args: RunArgs,
    settings: Settings,
    ws: crate::runtime::Workspace,
    payload: Map,
) -> u8 {
    let bus = Arc::new(EmbeddedBus::with_settings(&settings.runtime));
    let quota_settings = settings.quotas.clone();
    let runtime = match Runtime::new(settings, bus) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sluice: {e}");
            return 2;
        }
    };
    let quotas = match &args.data {
        None => None,
        Some(dir) => match crate::quota::RedbStore::open(dir) {
            Ok(store) => {
                let quotas = crate::quota::Quotas::new(quota_settings, Arc::new(store));
                runtime.set_quotas(quotas.clone());
                Some((quotas.subscribe(), quotas))
            }
            Err(e) => {
                eprintln!("sluice: --data: {e}");
                return 2;
            }
        },
    };
    let id = ws.id.clone();
    if let Err(e) = ws.require(&args.slug) {
        eprintln!("sluice: {e}");
        return 2;
    }
    for problem in runtime.install(ws) {
        eprintln!("sluice: {problem}");
    }
    if let Some((_, quotas)) = &quotas {
        // Reads the usage kept so far, so this run is restricted as the last one left it.
        if let Err(e) = quotas.flush(chrono::Utc::now()).await {
            eprintln!("sluice: {e}");
        }
    }
    runtime.record_emits();
    let progress = tokio::spawn(show_throttling(runtime.limiters().clone(), id.clone()));
    let result = runtime
        .run(Start::endpoint(&id, &args.slug).with_payload(payload))
        .await;
    // Listeners of the emitted events run too before the command ends.
    runtime.bus().settled().await;
    if let Some((mut bands, quotas)) = quotas {
        if let Err(e) = quotas.flush(chrono::Utc::now()).await {
            eprintln!("sluice: {e}");
        }
        while let Ok(band) = bands.try_recv() {
            let payload = serde_json::to_value(&band)
                .map(Value::from)
                .unwrap_or(Value::Null);
            if let Err(e) = runtime
                .emit_external(&id, "runtime.quota.band", payload)
                .await
            {
                eprintln!("sluice: {e}");
            }
        }
        runtime.bus().settled().await;
    }
    progress.abort();
    let emitted: Vec<serde_json::Value> = runtime
        .take_recorded()
        .into_iter()
        .map(|e| serde_json::json!({"event": e.kind, "payload": e.payload.to_json()}))
        .collect();
    let code = if result.is_ok() { 0 } else { 1 };
    if args.report {
        let empty = Vec::new();
        let (output, throttled, duration, by, shadow, error) = match &result {
            Ok(o) => (
                o.output.to_json(),
                o.throttled.as_millis(),
                o.duration.as_millis(),
                &o.throttled_by,
                &o.shadow,
                serde_json::Value::Null,
            ),
            Err(e) => {
                let mut error = crate::runtime::error_value(e).to_json();
                if let Some(m) = error.as_object_mut() {
                    m.insert("error".into(), e.kind.name().into());
                }
                (serde_json::Value::Null, 0, 0, &empty, &empty, error)
            }
        };
        let millis = |w: &crate::runtime::Waits| {
            crate::runtime::to_millis(w)
                .map_or(serde_json::json!({}), |m| Value::object(m).to_json())
        };
        let report = serde_json::json!({
            "output": output,
            "emitted": emitted,
            "throttled": number_to_json(throttled as f64),
            "throttledBy": millis(by),
            "shadow": millis(shadow),
            "duration": number_to_json(duration as f64),
            "error": error,
        });
        println!("{report}");
    } else {
        match &result {
            Ok(o) => println!("{}", o.output.to_json()),
            Err(e) => eprintln!("sluice: {e}"),
        }
    }
    code
}

/// How long an execution may be held back before `sluice run` says so on stderr, and how
/// often it says it again: a silent wait of minutes looks like a hang.
const THROTTLE_NOTICE: Duration = Duration::from_secs(2);

/// Prints a line on stderr every [`THROTTLE_NOTICE`] while the limits of workspace `ws`
/// have held its executions back longer than that; checks once a second.
async fn show_throttling(limiters: Limiters, ws: String) {
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    let (mut shown, mut last) = (Duration::ZERO, None::<Instant>);
    loop {
        ticks.tick().await;
        let quotas = limiters.workspace(&ws);
        let worst = LimitKind::ALL
            .into_iter()
            .map(|kind| (limiters.throttled_so_far(kind), kind))
            .max_by_key(|(waited, _)| *waited);
        let Some((waited, kind)) = worst else {
            continue;
        };
        // Only while waiting goes on, and at most one line per THROTTLE_NOTICE of wall time.
        let quiet = last.is_none_or(|at| at.elapsed() >= THROTTLE_NOTICE);
        if waited > THROTTLE_NOTICE && waited > shown && quiet {
            (shown, last) = (waited, Some(Instant::now()));
            eprintln!("{}", throttle_line(waited, kind, quotas.quota(kind)));
        }
    }
}

/// `throttled 2.0 s so far by automations (10/s)…`
fn throttle_line(waited: Duration, kind: LimitKind, quota: Option<governor::Quota>) -> String {
    let rate = quota
        .map(|q| format!(" ({}/s)", 1.0 / q.replenish_interval().as_secs_f64()))
        .unwrap_or_default();
    format!(
        "throttled {:.1} s so far by {}{rate}…",
        waited.as_secs_f64(),
        kind.as_str()
    )
}

/// `sluice validate`: reports every problem as `path:line:column: message`.
pub fn validate(dirs: &[PathBuf]) -> u8 {
    init_logs("warn", false);
    let mut problems = 0;
    // The operator's shared limits, when the environment's settings give them, are names
    // an automation may use.
    let shared = Settings::load(None)
        .ok()
        .and_then(|s| s.shared_limits().ok())
        .unwrap_or_default();
    for dir in dirs {
        if !dir.is_dir() {
            eprintln!("{}: not a workspace folder", dir.display());
            problems += 1;
            continue;
        }
        match workspace::load::<crate::runtime::Instruction>(dir, None) {
            Err(errors) => {
                for e in &errors {
                    eprintln!("{e}");
                }
                problems += errors.len();
            }
            Ok(ws) => {
                let mut found = ws.diagnostics.clone();
                found.extend(ws.limit_diagnostics(&shared));
                found.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
                for d in &found {
                    eprintln!("{d}");
                }
                problems += found.len();
                if found.is_empty() {
                    println!("{}: {} automations ok", dir.display(), ws.automations.len());
                }
            }
        }
    }
    if problems > 0 {
        1
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_throttle_line_names_the_limit_and_its_rate() {
        let quota = crate::limits::values::quota(10.0, 5).unwrap();
        assert_eq!(
            throttle_line(Duration::from_millis(2040), LimitKind::Automations, quota),
            "throttled 2.0 s so far by automations (10/s)…"
        );
        assert_eq!(
            throttle_line(Duration::from_secs(3), LimitKind::Emits, None),
            "throttled 3.0 s so far by emits…"
        );
    }
}
