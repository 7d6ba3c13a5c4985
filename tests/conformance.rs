//! The DSUL conformance cases (tests/conformance/*.yaml, and the shared suite
//! beside the project when present), each run through `sluice run --report`
//! exactly as the shared runner does.

use serde_json::Value as J;
use std::path::{Path, PathBuf};
use std::process::Command;

fn cases() -> Vec<PathBuf> {
    let mut dirs = vec![PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/conformance")];
    let shared = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/conformance/dsul");
    if shared.is_dir() {
        dirs.push(shared);
    }
    let mut files: Vec<PathBuf> = Vec::new();
    for d in dirs {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_owned();
            if p.extension().is_some_and(|x| x == "yaml")
                && !files.iter().any(|f| f.file_name() == Some(&name))
            {
                files.push(p);
            }
        }
    }
    files.sort();
    files
}

/// Runs one case; returns a description of the mismatch, if any.
fn run_case(file: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(file).unwrap();
    let case: J = serde_yaml::from_str(&text).map_err(|e| format!("bad case file: {e}"))?;
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("ws");
    std::fs::create_dir(&ws).unwrap();
    for (slug, def) in case["automations"].as_object().unwrap() {
        let mut def = def.clone();
        def["slug"] = J::String(slug.clone());
        std::fs::write(
            ws.join(format!("{slug}.yml")),
            serde_yaml::to_string(&def).unwrap(),
        )
        .unwrap();
    }
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("run")
        .arg(case["run"]["slug"].as_str().unwrap())
        .arg("--workspace")
        .arg(&ws)
        .arg("--payload")
        .arg(case["run"]["payload"].to_string())
        .arg("--report")
        .env("RATE_LIMIT_DISABLED", "true")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expect = &case["expect"];
    let report: Option<J> = serde_json::from_str(stdout.trim()).ok();
    if expect["error"] == J::Bool(true) {
        let failed =
            !out.status.success() || report.as_ref().is_some_and(|r| !r["error"].is_null());
        if !failed {
            return Err(format!("expected an error, got {stdout}"));
        }
    } else {
        let report = report
            .clone()
            .ok_or_else(|| format!("no report: {stdout} {stderr}"))?;
        if !out.status.success() || !report["error"].is_null() {
            return Err(format!("unexpected error: {} {stderr}", report["error"]));
        }
        if let Some(expected) = expect.get("output") {
            if !json_eq(&report["output"], expected) {
                return Err(format!(
                    "output {} != expected {}",
                    report["output"], expected
                ));
            }
        }
    }
    if let Some(expected) = expect.get("emitted").and_then(J::as_array) {
        let report = report.ok_or_else(|| format!("no report: {stdout} {stderr}"))?;
        let got = report["emitted"].as_array().cloned().unwrap_or_default();
        if got.len() != expected.len() {
            return Err(format!(
                "emitted {} != expected {}",
                report["emitted"],
                J::Array(expected.clone())
            ));
        }
        for (g, e) in got.iter().zip(expected) {
            for field in ["event", "payload"] {
                if let Some(ev) = e.get(field) {
                    if !json_eq(&g[field], ev) {
                        return Err(format!("emitted {g} != expected {e}"));
                    }
                }
            }
        }
    }
    Ok(())
}

/// JSON equality where 5 and 5.0 are the same number (as the shared runner's Python).
fn json_eq(a: &J, b: &J) -> bool {
    match (a, b) {
        (J::Number(x), J::Number(y)) => x.as_f64() == y.as_f64(),
        (J::Array(x), J::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_eq(a, b))
        }
        (J::Object(x), J::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

#[test]
fn conformance_cases_pass() {
    let files = cases();
    assert!(files.len() >= 26, "conformance cases missing");
    let failures: Vec<String> = files
        .iter()
        .filter_map(|f| {
            run_case(f)
                .err()
                .map(|e| format!("{}: {e}", f.file_name().unwrap().to_string_lossy()))
        })
        .collect();
    println!(
        "{} passed, {} failed",
        files.len() - failures.len(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "failing cases:\n{}",
        failures.join("\n")
    );
}
