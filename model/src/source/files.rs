//! The manifest-directory source: every `*.yaml`, `*.yml` and `*.json` below a
//! directory, multi-document YAML and `kind: List` included, reloaded on
//! change. A file that does not parse keeps its last good objects in force.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{debug, info, info_span, warn};

use crate::error::{Error, FieldError, Origin, Problem, Severity};
use crate::object::{DecodeError, decode};
use crate::types::ObjectId;
use crate::writer::{Change, ModelWriter};

/// Quiet time after a file event before reloading, so that an editor's
/// write-rename-chmod burst becomes one reload.
pub const DEBOUNCE: Duration = Duration::from_millis(100);
/// Longest a reload waits for quiet under a continuous stream of events.
pub const MAX_DEBOUNCE: Duration = Duration::from_millis(500);

/// What one file held when it last parsed.
#[derive(Debug, Clone)]
struct FileState {
    content: Vec<u8>,
    /// Objects (or per-object errors) of the last good parse.
    changes: Vec<Change>,
    /// Problems found in the file (unsupported kinds, …), or its syntax error.
    problems: Vec<Problem>,
}

/// Reads a manifest directory into model changes, remembering the last good
/// parse of every file.
#[derive(Debug)]
pub struct ManifestDir {
    root: PathBuf,
    files: BTreeMap<PathBuf, FileState>,
}

/// Everything a directory holds right now.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    /// One change per object (upserts and invalid objects).
    pub changes: Vec<Change>,
    /// Problems outside any decodable object.
    pub problems: Vec<Problem>,
    /// Files read.
    pub files: usize,
}

impl ManifestDir {
    /// A source for `root`; nothing is read yet.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            files: BTreeMap::new(),
        }
    }

    /// The directory.
    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Reads the directory. Files whose content has not changed are not parsed
    /// again; a file that no longer parses keeps its last good objects, and
    /// its error is reported.
    pub fn load(&mut self) -> Result<Loaded, Error> {
        let mut paths = Vec::new();
        collect_files(&self.root, &mut paths)?;
        paths.sort();
        let mut next = BTreeMap::new();
        for path in paths {
            let rel = path.strip_prefix(&self.root).unwrap_or(&path).to_path_buf();
            let content = match std::fs::read(&path) {
                Ok(c) => c,
                // Gone between listing and reading: it will be seen as deleted.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => return Err(Error::Io { path, source }),
            };
            let previous = self.files.remove(&rel);
            let state = match previous {
                Some(prev) if prev.content == content => prev,
                prev => parse_file(&rel, content, prev),
            };
            next.insert(rel, state);
        }
        self.files = next;

        // One change per object id: the first definition wins, later ones are
        // reported.
        let mut seen: HashMap<ObjectId, Option<Origin>> = HashMap::new();
        let mut loaded = Loaded {
            files: self.files.len(),
            ..Loaded::default()
        };
        for state in self.files.values() {
            loaded.problems.extend(state.problems.iter().cloned());
            for change in &state.changes {
                let (id, origin) = match change {
                    Change::Upsert { object, origin } => (object.id(), origin),
                    Change::Invalid { id, origin, .. } => (id.clone(), origin),
                    Change::Delete(_) => continue,
                };
                if let Some(first) = seen.get(&id) {
                    loaded.problems.push(Problem {
                        severity: Severity::Error,
                        origin: origin.clone(),
                        object: Some(id.clone()),
                        error: FieldError::new(
                            "",
                            format!(
                                "defined twice; the definition in {} is used",
                                first
                                    .as_ref()
                                    .map_or_else(|| "another file".to_owned(), ToString::to_string)
                            ),
                        ),
                    });
                    continue;
                }
                seen.insert(id, origin.clone());
                loaded.changes.push(change.clone());
            }
        }
        Ok(loaded)
    }

    /// Loads the directory into `writer`, replacing what it holds and marking
    /// the model synced. Returns the generation published.
    pub fn sync(&mut self, writer: &mut ModelWriter) -> Result<u64, Error> {
        let loaded = self.load()?;
        info!(
            dir = %self.root.display(),
            files = loaded.files,
            objects = loaded.changes.len(),
            problems = loaded.problems.len(),
            "manifests loaded"
        );
        Ok(writer.replace_all(loaded.changes, loaded.problems, true))
    }

    /// Loads the directory into `writer`, then reloads it whenever a file
    /// below it changes, until `writer` has no receivers left or the watcher
    /// fails. Run it as a task.
    pub async fn watch(self, writer: ModelWriter) -> Result<(), Error> {
        // Instrumented, not entered: a span entered across awaits would
        // label other tasks' log lines.
        let span = info_span!("manifests", dir = %self.root.display());
        tracing::Instrument::instrument(self.watch_inner(writer), span).await
    }

    async fn watch_inner(mut self, mut writer: ModelWriter) -> Result<(), Error> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                // The receiver is gone only when the task ends.
                let _ = tx.send(event);
            })
            .map_err(|source| Error::Watch {
                path: self.root.clone(),
                source,
            })?;
        notify::Watcher::watch(&mut watcher, &self.root, notify::RecursiveMode::Recursive)
            .map_err(|source| Error::Watch {
                path: self.root.clone(),
                source,
            })?;
        self.sync(&mut writer)?;
        loop {
            match rx.recv().await {
                None => return Ok(()),
                Some(Err(e)) => warn!(error = %e, "file watcher error; reloading"),
                // Reading the directory opens it: access events come from
                // our own reloads and would make them loop.
                Some(Ok(event)) if matches!(event.kind, notify::EventKind::Access(_)) => continue,
                Some(Ok(event)) => debug!(?event.kind, paths = ?event.paths, "file event"),
            }
            // Debounce: wait for a quiet period, but not forever.
            let deadline = tokio::time::Instant::now() + MAX_DEBOUNCE;
            loop {
                let quiet = tokio::time::sleep(DEBOUNCE);
                tokio::select! {
                    () = quiet => break,
                    () = tokio::time::sleep_until(deadline) => break,
                    event = rx.recv() => if event.is_none() { return Ok(()) },
                }
            }
            if !writer.has_consumers() {
                return Ok(());
            }
            match self.sync(&mut writer) {
                Ok(generation) => debug!(generation, "reloaded"),
                Err(e) => warn!(error = %e, "reload failed; keeping the current model"),
            }
        }
    }
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), Error> {
    let entries = std::fs::read_dir(dir).map_err(|source| Error::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    for entry in entries {
        let entry = entry.map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let name = entry.file_name();
        // Hidden entries are skipped: editors' swap files, and the `..data`
        // directories of a mounted ConfigMap (whose files are also linked at
        // the top level).
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        // `metadata` follows symlinks, as ConfigMap mounts need.
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            collect_files(&path, out)?;
        } else if meta.is_file()
            && path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
        {
            out.push(path);
        }
    }
    Ok(())
}

/// Parses one file. On a syntax error the previous good parse (if any) is
/// kept, with the error added to its problems.
fn parse_file(rel: &Path, content: Vec<u8>, previous: Option<FileState>) -> FileState {
    let documents = match split_documents(rel, &content) {
        Ok(docs) => docs,
        Err(error) => {
            let problem = Problem {
                severity: Severity::Error,
                origin: Some(Origin {
                    file: rel.to_path_buf(),
                    document: error.0,
                }),
                object: None,
                error: FieldError::new(
                    "",
                    if previous.is_some() {
                        format!("{}; the file's previous contents stay in force", error.1)
                    } else {
                        error.1
                    },
                ),
            };
            warn!(file = %rel.display(), %problem, "manifest does not parse");
            let (changes, mut problems) = previous
                .map(|p| (p.changes, p.problems))
                .unwrap_or_default();
            problems.retain(|p| p.object.is_some());
            problems.push(problem);
            // Keep the old content so that restoring it parses again.
            return FileState {
                content,
                changes,
                problems,
            };
        }
    };
    let mut changes = Vec::new();
    let mut problems = Vec::new();
    for (document, value) in documents {
        let origin = Some(Origin {
            file: rel.to_path_buf(),
            document,
        });
        match decode(value) {
            Ok(object) => changes.push(Change::Upsert { object, origin }),
            Err(DecodeError {
                object: Some(id),
                error,
            }) => changes.push(Change::Invalid { id, origin, error }),
            Err(DecodeError {
                object: None,
                error,
            }) => problems.push(Problem {
                severity: Severity::Error,
                origin,
                object: None,
                error,
            }),
        }
    }
    FileState {
        content,
        changes,
        problems,
    }
}

/// Splits a file into untyped objects, each with its document label. Lists
/// are flattened (`2.3` is item 3 of document 2). The error names the
/// document and what is wrong.
fn split_documents(
    rel: &Path,
    content: &[u8],
) -> Result<Vec<(String, serde_json::Value)>, (String, String)> {
    let text =
        std::str::from_utf8(content).map_err(|e| ("1".to_owned(), format!("not UTF-8: {e}")))?;
    let is_json = rel.extension().is_some_and(|e| e == "json");
    let mut docs = Vec::new();
    if is_json {
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| ("1".to_owned(), format!("JSON syntax error: {e}")))?;
        docs.push(value);
    } else {
        for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let label = (i + 1).to_string();
            let value = <serde_yaml::Value as serde::Deserialize>::deserialize(doc)
                .map_err(|e| (label.clone(), format!("YAML syntax error: {e}")))?;
            if value.is_null() {
                docs.push(serde_json::Value::Null);
                continue;
            }
            let json = serde_json::to_value(&value)
                .map_err(|e| (label, format!("YAML that is not plain JSON data: {e}")))?;
            docs.push(json);
        }
    }
    let mut out = Vec::new();
    for (i, doc) in docs.into_iter().enumerate() {
        let label = (i + 1).to_string();
        match doc {
            // Empty documents (a trailing `---`, comments only) hold nothing.
            serde_json::Value::Null => {}
            serde_json::Value::Object(ref map)
                if map
                    .get("kind")
                    .and_then(|k| k.as_str())
                    .is_some_and(|k| k.ends_with("List"))
                    && map.get("items").is_some_and(serde_json::Value::is_array) =>
            {
                let Some(serde_json::Value::Array(items)) = map.get("items").cloned() else {
                    unreachable!("checked above")
                };
                for (j, item) in items.into_iter().enumerate() {
                    out.push((format!("{label}.{}", j + 1), item));
                }
            }
            serde_json::Value::Object(_) => out.push((label, doc)),
            _ => return Err((label, "a document must be a mapping (an object)".to_owned())),
        }
    }
    Ok(out)
}
