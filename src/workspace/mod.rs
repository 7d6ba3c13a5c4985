//! Workspaces on disk: one folder of automation files, an optional
//! `workspace.yml`, and a secrets file kept apart (operators only).
//!
//! Loading is all-or-nothing: a workspace with a broken file is refused as a
//! whole, so a running instance keeps its last good version instead of serving
//! half of an edit. Problems that still let it run (bad expressions, calls to
//! missing automations) come back as diagnostics, for the caller to judge.

mod library;
pub mod redact;
mod watch;

pub use library::{Installer, Library};
pub use redact::{secret_texts, Redactor};
pub use watch::{Change, Edit, Watcher};

use crate::dsl::{parse_automation, parse_yaml, Automation, Compile, Diagnostic};
use crate::limits::named::{self, LimitSpec, NamedLimits};
use crate::limits::Budgets;
use crate::value::{Map, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// A loaded workspace, ready to run.
#[derive(Debug)]
pub struct Workspace<I> {
    /// Workspace id (the folder name).
    pub id: String,
    /// Display name from `workspace.yml` (the id when absent).
    pub name: String,
    /// `config` from `workspace.yml`, with `{{secret.x}}` resolved.
    pub config: Value,
    /// The workspace's secrets (`{{secret.x}}`, rate limit overrides).
    pub secrets: Map,
    /// Hides the secret values in what leaves the process (events, errors, logs).
    pub redactor: Redactor,
    /// Automations by slug.
    pub automations: HashMap<String, Arc<Automation<I>>>,
    /// Automations listening to each event type.
    pub listeners: HashMap<String, Vec<Arc<Automation<I>>>>,
    /// Endpoint automations by endpoint name.
    pub endpoints: HashMap<String, Vec<Arc<Automation<I>>>>,
    /// The `global` context, shared by every run of the workspace.
    pub global: Arc<Mutex<Map>>,
    /// Problems that still let the workspace run (a bad expression, a malformed
    /// instruction, a call to a missing automation) and fail only where they are
    /// reached: `validate` reports them, and `serve` will not let a version with
    /// any replace one without.
    pub diagnostics: Vec<Diagnostic>,
    /// What one execution may use: the settings' budgets with the workspace's
    /// `sluice_max_*` secrets applied when the runtime installs it.
    pub budgets: Budgets,
    /// The named limits `workspace.yml` declares (SPEC section 7).
    pub limits: Vec<LimitSpec>,
    /// Where they are declared and the text as loaded (already bounded), to locate problems
    /// found once the shared ones are known without reading the file again.
    pub limits_file: Option<(PathBuf, Arc<str>)>,
    /// The live registry of those limits, set by the runtime that installs the workspace
    /// (it outlives reloads, so a reload keeps what is used and held).
    pub named: Option<NamedLimits>,
}

impl<I: Compile> Workspace<I> {
    /// The enabled automation with this slug.
    pub fn automation(&self, slug: &str) -> Option<&Arc<Automation<I>>> {
        callable(&self.automations, slug)
    }

    /// The enabled automation with this slug, or why there is none, naming the
    /// ones there are (for `sluice run`).
    pub fn require(&self, slug: &str) -> Result<&Arc<Automation<I>>, String> {
        self.automation(slug).ok_or_else(|| {
            let slugs = enabled_slugs(&self.automations);
            let known = if slugs.is_empty() {
                "; it has no enabled automation".to_string()
            } else {
                crate::dsl::one_of(slug, &slugs)
            };
            format!("no automation `{slug}` in workspace {}{known}", self.id)
        })
    }
}

/// The one rule for running or calling an automation: it exists and is enabled.
fn callable<'a, I>(
    automations: &'a HashMap<String, Arc<Automation<I>>>,
    slug: &str,
) -> Option<&'a Arc<Automation<I>>> {
    automations.get(slug).filter(|a| !a.disabled)
}

/// The slugs of the enabled automations, sorted.
fn enabled_slugs<I>(automations: &HashMap<String, Arc<Automation<I>>>) -> Vec<&str> {
    let mut slugs: Vec<&str> = automations
        .values()
        .filter(|a| !a.disabled)
        .map(|a| a.slug.as_str())
        .collect();
    slugs.sort_unstable();
    slugs
}

/// Whether `path` is one of a workspace folder's files (automations and `workspace.yml`):
/// a YAML file by its extension, `.yml` or `.yaml`.
pub fn is_workspace_file(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yml") | Some("yaml")
    )
}

/// The secrets file of workspace `id` in the secrets folder: `<secrets>/<id>.yml`.
pub fn secrets_file(secrets: &Path, id: &str) -> PathBuf {
    secrets.join(format!("{id}.yml"))
}

/// Whether `id` is a valid workspace id (`[A-Za-z0-9_-]{1,64}`).
pub fn valid_id(id: &str) -> bool {
    crate::value::is_name(id)
}

fn diag(file: &Path, message: String) -> Diagnostic {
    Diagnostic {
        file: file.to_path_buf(),
        line: 0,
        column: 0,
        message,
    }
}

/// The id of the workspace in `dir`: its folder name (also for `.` or a path
/// ending in `/`).
pub fn id_of(dir: &Path) -> String {
    dir.canonicalize()
        .unwrap_or_else(|_| dir.to_path_buf())
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Reads a secrets file: a YAML mapping of names to values. A missing file is
/// no secrets.
pub fn read_secrets(file: &Path) -> Result<Map, Diagnostic> {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Map::new()),
        Err(e) => return Err(diag(file, format!("cannot read secrets: {e}"))),
    };
    // A YAML error message can quote the file's text: keep secrets out of it.
    match parse_yaml(file, &text, false)? {
        Value::Object(m) => Ok(Arc::unwrap_or_clone(m)),
        Value::Null => Ok(Map::new()),
        _ => Err(diag(
            file,
            "a secrets file must be a mapping of names to values".into(),
        )),
    }
}

/// Reads a workspace file of at most `max_bytes` bytes; a larger one is refused
/// before it is read whole, so its size costs neither memory nor parsing time.
fn read_bounded(file: &Path, max_bytes: u64) -> Result<String, Diagnostic> {
    use std::io::Read;
    let too_big = |size: u64| Diagnostic {
        file: file.to_path_buf(),
        line: 1,
        column: 1,
        message: format!("file is {size} bytes, over runtime.max_file_bytes ({max_bytes})"),
    };
    let opened = std::fs::File::open(file).and_then(|f| Ok((f.metadata()?.len(), f)));
    let (size, f) = opened.map_err(|e| diag(file, format!("cannot read file: {e}")))?;
    if size > max_bytes {
        return Err(too_big(size));
    }
    // The file may grow between the size check and the read: read one byte over.
    let mut text = String::new();
    f.take(max_bytes.saturating_add(1))
        .read_to_string(&mut text)
        .map_err(|e| diag(file, format!("cannot read file: {e}")))?;
    if text.len() as u64 > max_bytes {
        let size = std::fs::metadata(file).map_or(text.len() as u64, |m| m.len());
        return Err(too_big(size));
    }
    Ok(text)
}

/// Loads the workspace in `dir` with the secrets of `secrets_file`, refusing
/// files over the default `runtime.max_file_bytes`; see [`load_with`].
pub fn load<I: Compile>(
    dir: &Path,
    secrets_file: Option<&Path>,
) -> Result<Workspace<I>, Vec<Diagnostic>> {
    load_with(
        dir,
        secrets_file,
        crate::config::Settings::default().runtime.max_file_bytes,
    )
}

/// Loads the workspace in `dir` with the secrets of `secrets_file`. The
/// workspace id is the folder name. Fatal problems (unreadable, oversized or
/// unparsable files, duplicate slugs) are returned as errors; compile problems
/// and calls to missing automations are kept in `Workspace::diagnostics`.
pub fn load_with<I: Compile>(
    dir: &Path,
    secrets_file: Option<&Path>,
    max_file_bytes: u64,
) -> Result<Workspace<I>, Vec<Diagnostic>> {
    let id = id_of(dir);
    let mut errors = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            return Err(vec![diag(
                dir,
                format!("cannot read workspace folder: {e}"),
            )]);
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && is_workspace_file(p))
        .collect();
    files.sort();

    let secrets = match secrets_file.map(read_secrets).transpose() {
        Ok(s) => s.unwrap_or_default(),
        Err(d) => {
            errors.push(d);
            Map::new()
        }
    };
    let mut name = id.clone();
    let mut config = Value::empty_object();
    let mut limits = Vec::new();
    let mut limits_file = None;
    let mut automations: HashMap<String, Arc<Automation<I>>> = HashMap::new();
    let mut diagnostics = Vec::new();
    // Kept to locate calls to missing automations once every slug is known.
    for file in files {
        let text = match read_bounded(&file, max_file_bytes) {
            Ok(t) => t,
            Err(d) => {
                errors.push(d);
                continue;
            }
        };
        let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        if stem == "workspace" {
            match workspace_file(&file, &text, &secrets) {
                Ok((n, c, l)) => {
                    name = n.unwrap_or(name);
                    config = c;
                    limits = l;
                    limits_file = Some((file.clone(), Arc::from(text.as_str())));
                }
                Err(d) => errors.extend(d),
            }
            continue;
        }
        match parse_automation(&file, &text) {
            Ok(compiled) => {
                let a = compiled.automation;
                diagnostics.extend(compiled.diagnostics);
                if let Some(previous) = automations.get(&a.slug) {
                    errors.push(diag(
                        &file,
                        format!(
                            "duplicate slug `{}` (also in {})",
                            a.slug,
                            previous.file.display()
                        ),
                    ));
                    continue;
                }
                automations.insert(a.slug.clone(), Arc::new(a));
            }
            Err(d) => errors.push(d),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    diagnostics.extend(missing_calls(&automations));
    let mut listeners: HashMap<String, Vec<Arc<Automation<I>>>> = HashMap::new();
    let mut endpoints: HashMap<String, Vec<Arc<Automation<I>>>> = HashMap::new();
    let mut sorted: Vec<&Arc<Automation<I>>> = automations.values().collect();
    sorted.sort_by(|a, b| a.slug.cmp(&b.slug));
    for a in sorted.into_iter().filter(|a| !a.disabled) {
        for e in &a.when.events {
            listeners.entry(e.clone()).or_default().push(a.clone());
        }
        if let Some(ep) = &a.when.endpoint {
            let ep = if ep.is_empty() {
                a.slug.clone()
            } else {
                ep.clone()
            };
            endpoints.entry(ep).or_default().push(a.clone());
        }
    }
    Ok(Workspace {
        id,
        name,
        config,
        redactor: Redactor::new(&secrets),
        secrets,
        automations,
        listeners,
        endpoints,
        global: Arc::default(),
        diagnostics,
        budgets: Budgets::default(),
        limits,
        limits_file,
        named: None,
    })
}

impl<I: Compile> Workspace<I> {
    /// The problems of its named limits that need the operator's `shared_limits` to be
    /// seen: a declaration that takes a shared name, and uses of limits declared nowhere.
    pub fn limit_diagnostics(&self, shared: &[LimitSpec]) -> Vec<Diagnostic> {
        let mut found = Vec::new();
        let taken = named::spec::check_not_shared(&self.limits, shared, &["limits"]);
        if let (Some((file, text)), false) = (&self.limits_file, taken.is_empty()) {
            for e in taken {
                let (line, column) = crate::dsl::locate_path(text, &e.path);
                found.push(Diagnostic {
                    file: file.clone(),
                    line,
                    column,
                    message: e.message,
                });
            }
        }
        let mut names: Vec<&str> = self.limits.iter().map(|l| &*l.name).collect();
        names.extend(shared.iter().map(|l| &*l.name));
        names.sort_unstable();
        let known = |n: &str| names.contains(&n);
        let mut sorted: Vec<&Arc<Automation<I>>> = self.automations.values().collect();
        sorted.sort_by(|a, b| a.slug.cmp(&b.slug));
        for a in sorted {
            for (u, span) in a.limit_uses() {
                if let Some(e) = u.check_known(&known, &names) {
                    found.push(Diagnostic::at(span, e.message));
                }
            }
        }
        found
    }
}

/// The calls to automations that are not in `automations` (or are disabled),
/// each at the callee's name in its file, with the closest instruction or
/// automation name: in DSUL a misspelt instruction is a call.
fn missing_calls<I: Compile>(automations: &HashMap<String, Arc<Automation<I>>>) -> Vec<Diagnostic> {
    let mut found = Vec::new();
    let mut sorted: Vec<&Arc<Automation<I>>> = automations.values().collect();
    sorted.sort_by(|a, b| a.slug.cmp(&b.slug));
    let mut valid: Vec<&str> = I::NAMES.to_vec();
    valid.extend(enabled_slugs(automations));
    for a in &sorted {
        for (callee, span) in a.calls() {
            if callable(automations, callee).is_some() {
                continue;
            }
            let message = match automations.get(callee) {
                Some(_) => format!("automation `{callee}` is disabled, so it cannot be called"),
                None => format!(
                    "unknown instruction or automation `{callee}`{}",
                    crate::dsl::one_of(callee, &valid)
                ),
            };
            found.push(Diagnostic::at(span, message));
        }
    }
    found
}

/// Reads `workspace.yml`: its `name`, its `config`, whose `{{secret.x}}`
/// templates are resolved once here, and its named `limits`.
fn workspace_file(
    file: &Path,
    text: &str,
    secrets: &Map,
) -> Result<(Option<String>, Value, Vec<LimitSpec>), Vec<Diagnostic>> {
    let Value::Object(m) = parse_yaml(file, text, true).map_err(|d| vec![d])? else {
        return Err(vec![diag(file, "workspace.yml must be a mapping".into())]);
    };
    let name = m.get("name").and_then(Value::as_str).map(str::to_string);
    let config = match m.get("config") {
        None | Some(Value::Null) => Value::empty_object(),
        Some(c) => {
            let mut scope = Map::new();
            scope.insert("secret".into(), Value::object(secrets.clone()));
            resolve_config(c, &Value::object(scope)).map_err(|e| {
                let mut loc = crate::dsl::Locator::new(text);
                let (line, column) = loc.find_key("config");
                vec![Diagnostic {
                    file: file.to_path_buf(),
                    line,
                    column,
                    message: format!("in config: {e}"),
                }]
            })?
        }
    };
    let limits =
        named::spec::parse_limits(m.get("limits").unwrap_or(&Value::Undefined), &["limits"])
            .map_err(|errors| {
                errors
                    .into_iter()
                    .map(|e| {
                        let (line, column) = crate::dsl::locate_path(text, &e.path);
                        Diagnostic {
                            file: file.to_path_buf(),
                            line,
                            column,
                            message: e.to_string(),
                        }
                    })
                    .collect::<Vec<_>>()
            })?;
    Ok((name, config, limits))
}

/// Resolves templates in config values against `scope` (`{secret: ...}`).
fn resolve_config(v: &Value, scope: &Value) -> Result<Value, crate::expr::ExprError> {
    match v {
        Value::String(s) if s.contains("{{") || s.contains("{%") => {
            crate::expr::Template::parse(s)?.render(scope)
        }
        Value::List(items) => items
            .iter()
            .map(|i| resolve_config(i, scope))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::list),
        Value::Object(m) => {
            let mut out = Map::with_capacity(m.len());
            for (k, v) in m.iter() {
                out.insert(k.clone(), resolve_config(v, scope)?);
            }
            Ok(Value::object(out))
        }
        other => Ok(other.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_ids() {
        assert!(valid_id("demo_1-a"));
        assert!(!valid_id(""));
        assert!(!valid_id("a/b"));
        assert!(!valid_id(&"x".repeat(65)));
    }

    #[test]
    fn loads_automations_config_and_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().join("demo");
        std::fs::create_dir(&ws).unwrap();
        std::fs::write(
            ws.join("workspace.yml"),
            "name: Demo\nconfig:\n  key: '{{secret.apiKey}}'\n",
        )
        .unwrap();
        std::fs::write(
            ws.join("hello.yml"),
            "when: {endpoint: true, events: [x]}\ndo: []\n",
        )
        .unwrap();
        let secrets = dir.path().join("demo.secrets.yml");
        std::fs::write(&secrets, "apiKey: s3cret\n").unwrap();
        let w = load::<crate::runtime::Instruction>(&ws, Some(&secrets)).unwrap();
        assert_eq!(w.id, "demo");
        assert_eq!(w.name, "Demo");
        assert_eq!(w.config, Value::from(serde_json::json!({"key": "s3cret"})));
        assert!(w.automation("hello").is_some());
        assert_eq!(w.listeners["x"].len(), 1);
        assert_eq!(w.endpoints["hello"].len(), 1);
    }

    #[test]
    fn a_broken_file_refuses_the_workspace() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yml"), "do: [\n").unwrap();
        std::fs::write(dir.path().join("b.yml"), "slug: a\ndo: []\n").unwrap();
        let errs = load::<crate::runtime::Instruction>(dir.path(), None).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert!(errs[0].to_string().contains("a.yml:"));
    }

    #[test]
    fn require_names_the_enabled_automations_with_the_closest_first() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hello.yml"), "do: []\n").unwrap();
        std::fs::write(dir.path().join("off.yml"), "disabled: true\ndo: []\n").unwrap();
        let ws = load::<crate::runtime::Instruction>(dir.path(), None).unwrap();
        assert!(ws.require("hello").is_ok());
        let missing = ws.require("helo").err().unwrap_or_default();
        assert!(
            missing.ends_with("; did you mean `hello`? expected one of hello"),
            "{missing}"
        );
        let disabled = ws.require("off").err().unwrap_or_default();
        assert!(disabled.starts_with("no automation `off`"), "{disabled}");
    }

    #[test]
    fn a_call_to_a_missing_automation_is_a_located_diagnostic() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("a.yml"),
            "do:
  - b: {}
  - nobody: {}
",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("b.yml"),
            "do: []
",
        )
        .unwrap();
        let ws = load::<crate::runtime::Instruction>(dir.path(), None).unwrap();
        let found: Vec<String> = ws.diagnostics.iter().map(|d| d.to_string()).collect();
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].ends_with(
                "a.yml:3:5: unknown instruction or automation `nobody`; expected one of set, \
                 delete, conditions, repeat, all, break, emit, wait, fetch, charge, acquire, comment, a, b"
            ),
            "{found:?}"
        );
    }
}
