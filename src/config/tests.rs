//! Settings layering and the wording of every refusal.

use super::layers::ENV_VARS;
use super::*;
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

fn no_env(_: &str) -> Option<String> {
    None
}

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name| map.get(name).cloned()
}

fn yaml(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file
}

fn load_env(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    Settings::load_from(None, &env_of(pairs))
}

/// Every key path of a YAML tree, to check that a file lists every setting.
fn keys(value: &serde_yaml::Value, prefix: &str, out: &mut Vec<String>) {
    if let serde_yaml::Value::Mapping(map) = value {
        for (k, v) in map {
            let key = format!("{prefix}{}", k.as_str().unwrap());
            keys(v, &format!("{key}."), out);
            out.push(key);
        }
    }
    out.sort();
}

#[test]
fn defaults_apply_without_file_or_environment() {
    let settings = Settings::load_from(None, &no_env).unwrap();
    assert_eq!(settings, Settings::default());
    assert_eq!(
        settings.limits.automations,
        RateSetting {
            rate: 100.0,
            burst: 400
        }
    );
    assert_eq!(
        settings.limits.emits,
        RateSetting {
            rate: 30.0,
            burst: 100
        }
    );
    assert_eq!(
        settings.limits.fetchs,
        RateSetting {
            rate: 50.0,
            burst: 200
        }
    );
    assert_eq!(
        settings.limits.repeats,
        RateSetting {
            rate: 1000.0,
            burst: 4000
        }
    );
    assert_eq!(settings.listen, "127.0.0.1:3003");
    assert_eq!(settings.fetch.max_response_bytes, 10 * 1024 * 1024);
}

#[test]
fn default_yaml_lists_every_setting_with_the_built_in_default() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/default.yaml");
    assert_eq!(
        Settings::load_from(Some(&path), &no_env).unwrap(),
        Settings::default()
    );
    let file: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let builtin = serde_yaml::to_value(Settings::default()).unwrap();
    let (mut in_file, mut in_code) = (Vec::new(), Vec::new());
    keys(&file, "", &mut in_file);
    keys(&builtin, "", &mut in_code);
    assert_eq!(in_file, in_code);
}

#[test]
fn nats_settings_come_from_the_file() {
    let file = yaml("nats: {max_deliver: -1, max_inflight: 8, consumer: w}\n");
    let s = Settings::load_from(Some(file.path()), &no_env).unwrap();
    assert_eq!(s.nats.max_deliver, -1);
    assert_eq!(s.nats.max_inflight, 8);
    assert_eq!(s.nats.consumer, "w");
    assert_eq!(s.nats.stream, "SLUICE_EVENTS");
}

#[test]
fn a_list_in_the_file_replaces_the_default_list_whole() {
    let file = yaml("http: {event_headers: [x-api-version]}\n");
    let settings = Settings::load_from(Some(file.path()), &no_env).unwrap();
    assert_eq!(settings.http.event_headers, ["x-api-version"]);
}

#[test]
fn environment_overrides_file_which_overrides_defaults() {
    let file = yaml(
        "listen: 0.0.0.0:1\nruntime: {max_call_depth: 5}\n\
         limits: {emits: {rate: 10, burst: 20}, fetchs: {rate: 0.5, burst: 1}}\n",
    );
    let env = env_of(&[
        ("RATE_LIMIT_EMITS", "0.5"),
        ("SLUICE_LISTEN", "127.0.0.1:9"),
    ]);
    let s = Settings::load_from(Some(file.path()), &env).unwrap();
    assert_eq!(s.listen, "127.0.0.1:9");
    assert_eq!(
        s.limits.emits,
        RateSetting {
            rate: 0.5,
            burst: 20
        }
    );
    assert_eq!(
        s.limits.fetchs,
        RateSetting {
            rate: 0.5,
            burst: 1
        }
    );
    assert_eq!(s.runtime.max_call_depth, 5);
    assert_eq!(s.runtime.wait_timeout_secs, 20.0);
    let file = yaml("budgets: {max_depth: 12, max_list_index: 0}\n");
    let s = Settings::load_from(Some(file.path()), &no_env).unwrap();
    assert_eq!(s.budgets.max_depth, 12);
    assert_eq!(s.budgets.max_list_index, 0);
    assert_eq!(s.budgets.max_instructions, 1_000_000);
    assert_eq!(s.limits.automations, Settings::default().limits.automations);
}

#[test]
fn every_environment_variable_is_mapped() {
    let s = load_env(&[
        ("SLUICE_WORKSPACES", "/w"),
        ("SLUICE_SECRETS", "/s"),
        ("SLUICE_LISTEN", "0.0.0.0:80"),
        ("SLUICE_ADMIN_TOKEN", "tok"),
        ("NATS_URL", "nats://127.0.0.1:4222"),
        ("SLUICE_LOG_FORMAT", "JSON"),
        ("SLUICE_DATA", "/d"),
        ("RATE_LIMIT_DISABLED", "true"),
        ("RATE_LIMIT_AUTOMATIONS", "1"),
        ("RATE_LIMIT_AUTOMATIONS_BURST", "2"),
        ("RATE_LIMIT_EMITS", "3"),
        ("RATE_LIMIT_EMITS_BURST", "4"),
        ("RATE_LIMIT_FETCHS", "5"),
        ("RATE_LIMIT_FETCHS_BURST", "6"),
        ("RATE_LIMIT_REPEATS", "0"),
        ("RATE_LIMIT_REPEATS_BURST", "0"),
    ])
    .unwrap();
    assert_eq!(s.workspaces, PathBuf::from("/w"));
    assert_eq!(s.secrets, PathBuf::from("/s"));
    assert_eq!(s.listen, "0.0.0.0:80");
    assert_eq!(s.admin_token.as_deref(), Some("tok"));
    assert_eq!(s.nats_url.as_deref(), Some("nats://127.0.0.1:4222"));
    assert_eq!(s.log_format, "json");
    assert_eq!(s.quotas.data_dir, PathBuf::from("/d"));
    assert!(s.limits.disabled);
    assert_eq!(
        s.limits.automations,
        RateSetting {
            rate: 1.0,
            burst: 2
        }
    );
    assert_eq!(
        s.limits.emits,
        RateSetting {
            rate: 3.0,
            burst: 4
        }
    );
    assert_eq!(
        s.limits.fetchs,
        RateSetting {
            rate: 5.0,
            burst: 6
        }
    );
    assert_eq!(
        s.limits.repeats,
        RateSetting {
            rate: 0.0,
            burst: 0
        }
    );
}

#[test]
fn an_empty_variable_counts_as_unset() {
    let s = load_env(&[("SLUICE_ADMIN_TOKEN", ""), ("RATE_LIMIT_EMITS", " ")]).unwrap();
    assert_eq!(s, Settings::default());
}

#[test]
fn each_bad_variable_gives_one_line_naming_it_and_its_value() {
    let cases = [
        ("RATE_LIMIT_EMITS", "abc", "RATE_LIMIT_EMITS: expected a non-negative number, got \"abc\""),
        ("RATE_LIMIT_EMITS", "-1", "RATE_LIMIT_EMITS: expected a non-negative number, got \"-1\""),
        (
            "RATE_LIMIT_EMITS_BURST",
            "2.5",
            "RATE_LIMIT_EMITS_BURST: expected a whole number from 0 to 1000000000, got \"2.5\"",
        ),
        (
            "RATE_LIMIT_FETCHS_BURST",
            "0",
            "RATE_LIMIT_FETCHS_BURST: expected a burst of at least 1 when the rate is not 0, got \"0\"",
        ),
        ("RATE_LIMIT_DISABLED", "maybe", "RATE_LIMIT_DISABLED: expected true or false, got \"maybe\""),
        (
            "SLUICE_LOG_FORMAT",
            "xml",
            "SLUICE_LOG_FORMAT: expected \"text\" or \"json\", got \"xml\"",
        ),
    ];
    for (var, value, expected) in cases {
        let error = load_env(&[(var, value)]).unwrap_err();
        assert_eq!(error.to_string(), expected);
    }
    for var in ENV_VARS
        .iter()
        .filter(|v| v.name.starts_with("RATE_LIMIT_"))
    {
        for value in ["abc", "-5", "1.5e400"] {
            let message = load_env(&[(var.name, value)]).unwrap_err().to_string();
            assert!(
                message.starts_with(&format!("{}: expected ", var.name)),
                "{message}"
            );
            assert!(message.ends_with(&format!("got {value:?}")), "{message}");
            assert!(!message.contains('\n'));
        }
    }
}

#[test]
fn a_zero_rate_may_have_a_zero_burst() {
    let s = load_env(&[("RATE_LIMIT_EMITS", "0"), ("RATE_LIMIT_EMITS_BURST", "0")]).unwrap();
    assert_eq!(
        s.limits.emits,
        RateSetting {
            rate: 0.0,
            burst: 0
        }
    );
}

#[test]
fn network_lists_from_the_file_replace_the_defaults() {
    let file =
        yaml("fetch: {deny_networks: [127.0.0.2, 'fd00::1/8'], allow_networks: [10.1.2.3/8]}\n");
    let s = Settings::load_from(Some(file.path()), &no_env).unwrap();
    let nets =
        |list: &[&str]| -> Vec<ipnet::IpNet> { list.iter().map(|n| n.parse().unwrap()).collect() };
    // A bare address is that address; host bits after the prefix are dropped.
    assert_eq!(s.fetch.deny_networks, nets(&["127.0.0.2/32", "fd00::/8"]));
    assert_eq!(s.fetch.allow_networks, nets(&["10.0.0.0/8"]));
    let file = yaml("fetch: {deny_networks: []}\n");
    let s = Settings::load_from(Some(file.path()), &no_env).unwrap();
    assert!(s.fetch.deny_networks.is_empty());
}

#[test]
fn bad_file_values_give_one_line_naming_the_file_and_key() {
    let cases = [
        (
            "limits: {emits: {rate: -1}}",
            "limits.emits.rate: expected a non-negative number, got -1",
        ),
        (
            "limits: {emits: {rate: abc}}",
            "limits.emits.rate: expected a non-negative number, got \"abc\"",
        ),
        (
            "limits: {emits: {burst: 2.5}}",
            "limits.emits.burst: expected a whole number from 0 to 1000000000, got 2.5",
        ),
        (
            "limits: {emits: {burst: 0}}",
            "limits.emits.burst: expected a burst of at least 1 when the rate is not 0, got 0",
        ),
        (
            "http: {max_body: -3}",
            "http.max_body: expected a non-negative whole number, got -3",
        ),
        (
            "log_format: xml",
            "log_format: expected \"text\" or \"json\", got \"xml\"",
        ),
        (
            "nats: {ack_wait_secs: 0}",
            "nats.ack_wait_secs: expected a whole number of at least 1, got 0",
        ),
        (
            "nats: {max_inflight: 1.5}",
            "nats.max_inflight: expected a whole number of at least 1, got 1.5",
        ),
        (
            "nats: {max_deliver: 0}",
            "nats.max_deliver: expected a whole number of at least 1, or -1 for no limit, got 0",
        ),
        (
            "nats: {stream: a.b}",
            "nats.stream: expected a name of 1 to 64 characters",
        ),
        (
            "budgets: {max_depth: 5000}",
            "budgets.max_depth: expected a whole number from 1 to 1000, got 5000",
        ),
        (
            "budgets: {max_instructions: 0}",
            "budgets.max_instructions: expected a whole number of at least 1, got 0",
        ),
        (
            "fetch: {deny_networks: [10.0.0.0/8, 10.0.0.0/33]}",
            "fetch.deny_networks: expected CIDRs such as 10.0.0.0/8 or fc00::/7, got \"10.0.0.0/33\"",
        ),
        (
            "fetch: {allow_networks: [intranet]}",
            "fetch.allow_networks: expected CIDRs such as 10.0.0.0/8 or fc00::/7, got \"intranet\"",
        ),
        ("budgets: {max_instruction: 5}", "max_instruction"),
        ("nats: {strem: x}", "strem"),
        ("limits: {emits: {rat: 5}}", "rat"),
        ("listn: x", "listn"),
        ("limits: [unclosed", ""),
    ];
    for (text, expected) in cases {
        let file = yaml(text);
        let message = Settings::load_from(Some(file.path()), &no_env)
            .unwrap_err()
            .to_string();
        let prefix = format!("{}: ", file.path().display());
        assert!(message.starts_with(&prefix), "{message}");
        assert!(message.contains(expected), "{text}: {message}");
        assert!(!message.contains('\n'), "{message}");
    }
    let missing = Settings::load_from(Some(Path::new("/nonexistent/sluice.yaml")), &no_env)
        .unwrap_err()
        .to_string();
    assert!(
        missing.starts_with("/nonexistent/sluice.yaml: "),
        "{missing}"
    );
}

#[test]
fn a_file_burst_of_zero_with_a_rate_from_the_environment_names_the_burst_key() {
    let file = yaml("limits: {emits: {rate: 0, burst: 0}}");
    let env = env_of(&[("RATE_LIMIT_EMITS", "5")]);
    let message = Settings::load_from(Some(file.path()), &env)
        .unwrap_err()
        .to_string();
    assert!(message.ends_with(
        "limits.emits.burst: expected a burst of at least 1 when the rate is not 0, got 0"
    ));
}

#[test]
fn debug_output_hides_credentials() {
    let s = load_env(&[
        ("SLUICE_ADMIN_TOKEN", "hunter2"),
        ("NATS_URL", "nats://me:pa55@127.0.0.1:4222"),
    ])
    .unwrap();
    let shown = format!("{s:?}");
    assert!(
        !shown.contains("hunter2") && !shown.contains("pa55"),
        "{shown}"
    );
    assert!(shown.contains("nats://<redacted>@127.0.0.1:4222"));
}

#[test]
fn cluster_limit_settings_are_read_under_limits_and_checked() {
    let file = yaml("limits: {lease_secs: 10, cluster_bucket: owners}");
    let s = Settings::load_from(Some(file.path()), &env_of(&[])).unwrap();
    assert_eq!(s.limits.cluster().lease_secs, 10);
    assert_eq!(s.limits.cluster().cluster_bucket, "owners");
    assert_eq!(Settings::default().limits.lease_secs, 5);
    let file = yaml("limits: {lease_secs: 1}");
    let message = Settings::load_from(Some(file.path()), &env_of(&[]))
        .unwrap_err()
        .to_string();
    assert!(
        message.ends_with(
            "limits.lease_secs is 1; it must be a whole number of seconds from 2 to 3600"
        ),
        "{message}"
    );
}

#[test]
fn bad_quota_settings_give_one_line_naming_the_key() {
    for (text, expected) in [
        (
            "quotas: {default_plan: gold}\n",
            "quotas.default_plan: unknown plan `gold`",
        ),
        ("quotas: {cycle: {day: 32}}\n", "quotas.cycle.day: 32"),
        ("quotas: {cycle: {day: 0}}\n", "quotas.cycle.day: 0"),
        (
            "quotas: {cycle: {timezone: Mars/Olympus}}\n",
            "quotas.cycle.timezone: `Mars/Olympus`",
        ),
        ("quotas: {costs: {emits: -1}}\n", "quotas.costs.emits: -1"),
        (
            "quotas: {plans: {p: {credits: -5}}}\n",
            "quotas.plans.p.credits: -5",
        ),
    ] {
        let file = yaml(text);
        let e = Settings::load_from(Some(file.path()), &no_env)
            .unwrap_err()
            .to_string();
        assert!(e.contains(expected), "{text}: {e}");
        assert!(!e.contains('\n'), "{e}");
    }
}

#[test]
fn quota_plans_come_from_the_file() {
    let file = yaml("quotas: {plans: {pro: {credits: 500}}, default_plan: pro}\n");
    let s = Settings::load_from(Some(file.path()), &no_env).unwrap();
    assert_eq!(s.quotas.default_policy().plan.as_deref(), Some("pro"));
}

#[test]
fn shared_limits_are_read_and_a_bad_one_is_refused_at_its_place() {
    let file = yaml(
        "shared_limits:\n  openai:\n    rate: 90000\n    per: minute\n    lanes: {team-a: 2}\n",
    );
    let s = Settings::load_from(Some(file.path()), &no_env).unwrap();
    let limits = s.shared_limits().unwrap();
    assert_eq!(limits.len(), 1);
    assert_eq!(&*limits[0].name, "openai");

    let file = yaml("shared_limits:\n  openai:\n    rate: 90000\n    per: fortnight\n");
    let e = Settings::load_from(Some(file.path()), &no_env)
        .unwrap_err()
        .to_string();
    let place = format!("{}:4:5: `shared_limits.openai.per`", file.path().display());
    assert!(e.starts_with(&place), "{e}");
    assert!(e.contains("fortnight"), "{e}");

    let file = yaml("shared_limits:\n  emits: {rate: 1}\n");
    let e = Settings::load_from(Some(file.path()), &no_env)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(":2:3: `shared_limits.emits`") && e.contains("built-in"),
        "{e}"
    );
}
