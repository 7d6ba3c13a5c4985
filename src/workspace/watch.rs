//! Notices edits to workspace folders and secrets files by polling their
//! fingerprints (names, sizes, modification times).
//!
//! Polling a few small folders twice a second is cheap, works the same on every
//! file system (network mounts and container volumes included) and needs no
//! platform watcher; the SPEC's "live within 2 s" leaves room for it.
//!
//! A scan only reports what changed; loading is left to the caller
//! ([`Edit::load`]), so a slow workspace can load on its own thread without
//! holding up the scan of the others.

use super::{load_with, valid_id, Workspace};
use crate::dsl::Diagnostic;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// What changed since the previous scan.
#[derive(Debug)]
pub enum Change {
    /// A new or edited workspace, to load.
    Edited(Edit),
    /// The workspace folder is gone.
    Removed(String),
}

/// A workspace to (re)load: where it is and how large its files may be.
#[derive(Debug, Clone)]
pub struct Edit {
    /// The workspace id.
    pub id: String,
    dir: PathBuf,
    secrets: PathBuf,
    max_file_bytes: u64,
}

impl Edit {
    /// Reads and compiles the workspace; errors carry their locations.
    pub fn load<I: crate::dsl::Compile>(&self) -> Result<Workspace<I>, Vec<Diagnostic>> {
        load_with(&self.dir, Some(&self.secrets), self.max_file_bytes)
    }
}

type Fingerprint = Vec<(PathBuf, u64, Option<SystemTime>)>;

/// Scans a workspaces root and its secrets folder.
pub struct Watcher {
    root: PathBuf,
    secrets: PathBuf,
    max_file_bytes: u64,
    known: HashMap<String, Fingerprint>,
}

fn entry(path: &Path) -> Option<(PathBuf, u64, Option<SystemTime>)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((path.to_path_buf(), meta.len(), meta.modified().ok()))
}

impl Watcher {
    /// A watcher that has seen nothing yet: the first scan reports every
    /// workspace; their files may be up to `max_file_bytes` long.
    pub fn new(root: PathBuf, secrets: PathBuf, max_file_bytes: u64) -> Watcher {
        Watcher {
            root,
            secrets,
            max_file_bytes,
            known: HashMap::new(),
        }
    }

    fn secrets_file(&self, id: &str) -> PathBuf {
        super::secrets_file(&self.secrets, id)
    }

    fn fingerprint(&self, id: &str, dir: &Path) -> Fingerprint {
        let mut files: Fingerprint = std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| super::is_workspace_file(p))
                    .filter_map(|p| entry(&p))
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files.extend(entry(&self.secrets_file(id)));
        files
    }

    fn edit(&self, id: &str, dir: PathBuf) -> Edit {
        Edit {
            id: id.to_string(),
            dir,
            secrets: self.secrets_file(id),
            max_file_bytes: self.max_file_bytes,
        }
    }

    /// The workspace `id` as it is now, changed or not (an operator asked for
    /// it to be reloaded); `None` when it is not a workspace.
    pub fn take(&mut self, id: &str) -> Option<Change> {
        if !valid_id(id) {
            return None;
        }
        let dir = self.root.join(id);
        if !dir.is_dir() {
            return self
                .known
                .remove(id)
                .map(|_| Change::Removed(id.to_string()));
        }
        let print = self.fingerprint(id, &dir);
        self.known.insert(id.to_string(), print);
        Some(Change::Edited(self.edit(id, dir)))
    }

    /// Reports what is new or changed and what went away.
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
            changes.push(Change::Edited(self.edit(&id, dir)));
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
                Change::Edited(edit) => match edit.load::<crate::runtime::Instruction>() {
                    Ok(ws) => format!("loaded {}", ws.id),
                    Err(_) => format!("failed {}", edit.id),
                },
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
        let mut w = Watcher::new(root.path().into(), secrets.path().into(), 1024);
        assert_eq!(ids(&w.scan()), vec!["loaded a"]);
        assert!(w.scan().is_empty());

        std::fs::write(ws.join("x.yml"), "do: [\n").unwrap();
        assert_eq!(ids(&w.scan()), vec!["failed a"]);
        assert!(w.scan().is_empty(), "a failure is reported once");

        std::fs::write(secrets.path().join("a.yml"), "k: v\n").unwrap();
        std::fs::write(ws.join("x.yml"), "do: []\n").unwrap();
        assert_eq!(ids(&w.scan()), vec!["loaded a"]);

        std::fs::write(ws.join("x.yml"), format!("do: []\n#{}\n", "x".repeat(1024))).unwrap();
        assert_eq!(ids(&w.scan()), vec!["failed a"], "over max_file_bytes");
        assert_eq!(
            ids(&w.take("a").into_iter().collect::<Vec<_>>()),
            vec!["failed a"]
        );

        std::fs::remove_dir_all(&ws).unwrap();
        assert_eq!(ids(&w.scan()), vec!["removed a"]);
        assert!(w.take("a").is_none());
    }
}
