//! The operator page `GET /ui` in a real headless Chromium (Debian's `chromium`, which
//! scripts/test.sh installs when missing): self-contained, it shows each workspace's
//! percent and flags from a running `sluice serve`, and shows a charge on its next load.
//! The screenshot kept in docs/ui.png comes from here (`SLUICE_UI_SCREENSHOT=docs/ui.png`).

mod common;

use common::{put, secrets, serve_with, Serve};
use std::path::Path;
use std::process::Command;

const TOKEN: &str = "ui-admin";

/// Runs headless Chromium on `url` with `extra` flags, in a fresh profile, bounded in time.
fn chromium(url: &str, extra: &[&str]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let bin = std::env::var("CHROMIUM_BIN").unwrap_or_else(|_| "chromium".to_owned());
    let out = Command::new("timeout")
        .arg("60")
        .arg(&bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            // Long enough for the page's first poll; virtual time runs ahead while idle.
            "--virtual-time-budget=3000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(url)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {bin} (install Debian's chromium package, or set CHROMIUM_BIN): {e}")
        });
    assert!(
        out.status.success(),
        "{bin} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The page's row of `ws`, as text without tags.
fn row_text(dom: &str, ws: &str) -> String {
    let start = dom
        .find(&format!("data-workspace=\"{ws}\""))
        .unwrap_or_else(|| panic!("no row for {ws} in {dom}"));
    let end = dom[start..].find("</tr>").map_or(dom.len(), |e| start + e);
    let mut text = String::new();
    let mut in_tag = false;
    for c in dom[start..end].chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                text.push(' ');
            }
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn workspace(root: &Path, ws: &str, credits: u32) {
    put(
        root,
        ws,
        "work.yml",
        "slug: work\nwhen: {endpoint: true}\nquota: {cost: '{{body.cost}}'}\noutput: ok\n",
    );
    secrets(root, ws, &format!("sluice_quota_credits: {credits}\n"));
}

fn charge(s: &Serve, ws: &str, cost: u32) {
    let r = reqwest::blocking::Client::new()
        .post(format!("{}/v2/workspaces/{ws}/webhooks/work", s.base))
        .json(&serde_json::json!({ "cost": cost }))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[test]
fn the_page_shows_each_workspace_with_its_percent_and_flags_and_follows_charges() {
    let root = tempfile::tempdir().unwrap();
    workspace(root.path(), "acme", 200);
    workspace(root.path(), "globex", 50);
    let s = serve_with(root.path(), &[("SLUICE_ADMIN_TOKEN", TOKEN)], &[]);
    charge(&s, "acme", 20);
    charge(&s, "globex", 41);

    // Self-contained: nothing to fetch from anywhere else.
    let page = common::get(&format!("{}/ui", s.base)).unwrap().1;
    for external in ["http://", "https://", "//cdn", "<link", "src="] {
        assert!(!page.contains(external), "the page refers to {external}");
    }

    let url = format!("{}/ui#token={TOKEN}", s.base);
    let dom = chromium(&url, &["--dump-dom"]);
    let acme = row_text(&dom, "acme");
    assert!(acme.contains("10 %"), "{acme}");
    assert!(
        !acme.contains("near limit") && !acme.contains("over"),
        "{acme}"
    );
    let globex = row_text(&dom, "globex");
    assert!(
        globex.contains("82 %") && globex.contains("near limit"),
        "{globex}"
    );
    assert!(globex.contains("automations 100"), "{globex}");

    charge(&s, "globex", 10);
    let dom = chromium(&url, &["--dump-dom"]);
    let globex = row_text(&dom, "globex");
    assert!(
        globex.contains("102 %") && globex.contains("over"),
        "{globex}"
    );

    // Without the token the page asks for it and shows no data.
    let dom = chromium(&format!("{}/ui", s.base), &["--dump-dom"]);
    assert!(!dom.contains("data-workspace"), "{dom}");
    assert!(dom.contains("Admin token"));

    if let Ok(path) = std::env::var("SLUICE_UI_SCREENSHOT") {
        let path = std::path::absolute(path).unwrap();
        chromium(
            &url,
            &[
                &format!("--screenshot={}", path.display()),
                "--window-size=1400,260",
                "--hide-scrollbars",
            ],
        );
        assert!(std::fs::metadata(&path).is_ok_and(|m| m.len() > 0));
    }
}
