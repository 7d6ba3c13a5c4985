//! Notices edits to workspace folders and secrets files by polling their
//! fingerprints (names, sizes, modification times).
//!
//! Polling a few small folders twice a second is cheap, works the same on every
//! file system (network mounts and container volumes included) and needs no
//! platform watcher; the SPEC's "live within 2 s" leaves room for it.

use super::{load, valid_id, Workspace};
use crate::dsl::Diagnostic;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// What changed since the previous scan.
#[derive(Debug)]
pub enum Change {
    /// A new or edited workspace, loaded.
    Loaded(Box<Workspace>),
    /// An edit that does not load: the previous version stays.
    Failed {
        /// The workspace id.
        id: String,
        /// What is wrong, with locations.
        errors: Vec<Diagnostic>,
    },
    /// The workspace folder is gone.
    Removed(String),
}

type Fingerprint = Vec<(PathBuf, u64, Option<SystemTime>)>;

/// Scans a workspaces root and its secrets folder.
pub struct Watcher {
    root: PathBuf,
    secrets: PathBuf,
    known: HashMap<String, Fingerprint>,
}

fn entry(path: &Path) -> Option<(PathBuf, u64, Option<SystemTime>)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((path.to_path_buf(), meta.len(), meta.modified().ok()))
}

impl Watcher {
    /// A watcher that has seen nothing yet: the first scan loads everything.
    pub fn new(root: PathBuf, secrets: PathBuf) -> Watcher {
        Watcher {
            root,
            secrets,
            known: HashMap::new(),
        }
    }

    fn secrets_file(&self, id: &str) -> PathBuf {
        self.secrets.join(format!("{id}.yml"))
    }

    fn fingerprint(&self, id: &str, dir: &Path) -> Fingerprint {
        let mut files: Fingerprint = std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| {
                        matches!(
                            p.extension().and_then(|e| e.to_str()),
                            Some("yml") | Some("yaml")
                        )
                    })
                    .filter_map(|p| entry(&p))
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files.extend(entry(&self.secrets_file(id)));
        files
    }

    /// Loads what is new or changed and reports what went away.
    pub fn scan(&mut self) -> Vec<Change> {
        let mut changes = Vec::new();
        let mut seen = Vec::new();
        let dirs = std::fs::read_dir(&self.root)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.is_dir())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        for dir in dirs {
            let Some(id) = dir.file_name().and_then(|n| n.to_str()).map(str::to_string) else {
                continue;
            };
            if !valid_id(&id) {
                continue;
            }
            seen.push(id.clone());
            let print = self.fingerprint(&id, &dir);
            if self.known.get(&id) == Some(&print) {
                continue;
            }
            let secrets = self.secrets_file(&id);
            changes.push(match load(&dir, Some(&secrets)) {
                Ok(ws) => Change::Loaded(Box::new(ws)),
                Err(errors) => Change::Failed {
                    id: id.clone(),
                    errors,
                },
            });
            // Remember failures too: a broken file is reported once, not every scan.
            self.known.insert(id, print);
        }
        let gone: Vec<String> = self
            .known
            .keys()
            .filter(|id| !seen.contains(id))
            .cloned()
            .collect();
        for id in gone {
            self.known.remove(&id);
            changes.push(Change::Removed(id));
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(changes: &[Change]) -> Vec<String> {
        changes
            .iter()
            .map(|c| match c {
                Change::Loaded(ws) => format!("loaded {}", ws.id),
                Change::Failed { id, .. } => format!("failed {id}"),
                Change::Removed(id) => format!("removed {id}"),
            })
            .collect()
    }

    #[test]
    fn loads_reloads_on_change_and_reports_removal() {
        let root = tempfile::tempdir().unwrap();
        let secrets = tempfile::tempdir().unwrap();
        let ws = root.path().join("a");
        std::fs::create_dir(&ws).unwrap();
        std::fs::write(ws.join("x.yml"), "do: []\n").unwrap();
        let mut w = Watcher::new(root.path().into(), secrets.path().into());
        assert_eq!(ids(&w.scan()), vec!["loaded a"]);
        assert!(w.scan().is_empty());

        std::fs::write(ws.join("x.yml"), "do: [\n").unwrap();
        assert_eq!(ids(&w.scan()), vec!["failed a"]);
        assert!(w.scan().is_empty(), "a failure is reported once");

        std::fs::write(secrets.path().join("a.yml"), "k: v\n").unwrap();
        std::fs::write(ws.join("x.yml"), "do: []\n").unwrap();
        assert_eq!(ids(&w.scan()), vec!["loaded a"]);

        std::fs::remove_dir_all(&ws).unwrap();
        assert_eq!(ids(&w.scan()), vec!["removed a"]);
    }
}
