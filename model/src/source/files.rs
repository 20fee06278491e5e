//! The manifest-directory source: every `*.yaml`, `*.yml` and `*.json` below a
//! directory, multi-document YAML and `kind: List` included, reloaded on
//! change. A file that does not parse keeps its last good objects in force.
//!
//! The source is incremental. A file event re-reads only the files it names
//! and compares their objects with what those files held before; only the
//! difference goes to the writer. Per file the source remembers a hash of the
//! content and, per object, its id, its document and a hash of its content,
//! never the object itself (the writer holds its translation). A full rescan
//! (every file read again, only changed ones parsed) happens at start, when
//! the watcher reports an error or lost events, and when a `ConfigMap` mount
//! swaps its data directory; [`ManifestDir::resync`] starts from scratch.

use std::collections::{BTreeMap, BTreeSet};

// foldhash, not std's SipHash: these maps take every object of a file at start-up.
use foldhash::{HashMap, HashMapExt, HashSet};
use std::hash::Hash;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{debug, info, info_span, warn};

use crate::error::{Error, FieldError, Origin, Problem, Severity};
use crate::object::{DecodeError, decode, decode_json};
use crate::types::ObjectId;
use crate::writer::{Change, ModelWriter};

/// Quiet time after a file event before reloading, so that an editor's
/// write-rename-chmod burst becomes one reload.
pub const DEBOUNCE: Duration = Duration::from_millis(5);
/// Longest a reload waits for quiet under a continuous stream of events.
pub const MAX_DEBOUNCE: Duration = Duration::from_millis(50);

/// One object of a freshly parsed file: id, document, content hash, change.
type Parsed = (ObjectId, Box<str>, u64, Change);

/// One object of a file, as of the file's last good parse.
#[derive(Debug)]
struct Defined {
    id: Arc<ObjectId>,
    /// The document it is in (`2.3`: item 3 of document 2).
    document: Box<str>,
    /// Hash of its content.
    hash: u64,
}

/// What the source remembers of one file.
#[derive(Debug)]
struct FileState {
    /// Hash of the content last read, whether it parsed or not.
    content: u64,
    /// The objects of the last good parse, in document order (objects that
    /// do not decode but have an id included).
    objects: Vec<Defined>,
    /// Problems outside any decodable object (unsupported kinds, …), or the
    /// syntax error.
    problems: Vec<Problem>,
}

/// Reads a manifest directory into model changes, remembering what each file
/// defined (ids and content hashes, not the objects).
#[derive(Debug)]
pub struct ManifestDir {
    root: PathBuf,
    /// `root`, canonical, to recognise the watcher's paths.
    canonical: Option<PathBuf>,
    /// By path relative to `root`.
    files: BTreeMap<Arc<Path>, FileState>,
    /// The files defining each object, in path order. The first file's
    /// definition is served; later ones are reported.
    defs: HashMap<Arc<ObjectId>, Vec<Arc<Path>>>,
    /// Objects defined by more than one file.
    duplicates: BTreeSet<Arc<ObjectId>>,
    /// The state may disagree with the writer (an update failed half-way):
    /// the next reload starts from scratch.
    stale: bool,
    /// Read files on this thread only (tests compare both ways).
    sequential: bool,
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

/// What one update found, while it runs.
#[derive(Default)]
struct Update {
    /// Definitions handed to the sink during the update, by file and object.
    staged: HashSet<(Arc<Path>, Arc<ObjectId>)>,
    /// The serving file of every object the update touched, before it.
    before: HashMap<Arc<ObjectId>, Option<Arc<Path>>>,
    /// Definitions that are new or whose content changed.
    redefined: HashSet<(Arc<Path>, Arc<ObjectId>)>,
    /// Files read again whatever their content hash.
    forced: HashSet<Arc<Path>>,
    /// Files read.
    read: usize,
    /// Services and EndpointSlices go to the sink translated
    /// ([`Change::prepare`]), not as objects.
    prepare: bool,
}

/// Paths named by file events while the source waits for quiet.
#[derive(Debug, Default)]
struct Pending {
    paths: BTreeSet<PathBuf>,
    rescan: bool,
}

impl ManifestDir {
    /// A source for `root`; nothing is read yet.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            canonical: None,
            files: BTreeMap::new(),
            defs: HashMap::new(),
            duplicates: BTreeSet::new(),
            stale: false,
            sequential: false,
        }
    }

    /// The directory.
    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Reads the whole directory from scratch, forgetting what was read
    /// before, and returns every object it holds. A file that does not parse
    /// contributes its error only.
    pub fn load(&mut self) -> Result<Loaded, Error> {
        self.forget();
        let paths = self.all_paths()?;
        // Nothing was known: every object's served definition is an upsert,
        // with its object.
        let mut changes = Vec::new();
        self.update(&paths, false, &mut |change| changes.push(change))?;
        changes.sort_by(|a, b| change_origin(a).cmp(&change_origin(b)));
        Ok(Loaded {
            changes,
            problems: self.problems(),
            files: self.files.len(),
        })
    }

    /// Loads the directory into `writer` and marks the model synced. The
    /// first call (and any after a failed update) reads everything and
    /// replaces what `writer` holds; later calls rescan: every file is read,
    /// only changed ones are parsed, and only the difference is applied.
    /// Returns the generation published.
    pub fn sync(&mut self, writer: &mut ModelWriter) -> Result<u64, Error> {
        if self.stale || self.files.is_empty() {
            return self.resync(writer);
        }
        let paths = self.all_paths()?;
        self.apply(&paths, writer)
    }

    /// Reads the directory from scratch and replaces what `writer` holds with
    /// it, marking the model synced. Returns the generation published.
    ///
    /// Each file's objects go to `writer` as the file is parsed (staged, not
    /// published), so that the parsed objects of the whole directory are
    /// never held at once.
    pub fn resync(&mut self, writer: &mut ModelWriter) -> Result<u64, Error> {
        self.forget();
        let paths = self.all_paths().inspect_err(|_| self.stale = true)?;
        self.update(&paths, true, &mut |change| writer.stage(change))
            .inspect_err(|_| self.stale = true)?;
        writer.stage_retain(|id| self.defs.contains_key(id));
        let problems = self.problems();
        info!(
            dir = %self.root.display(),
            files = self.files.len(),
            objects = self.defs.len(),
            problems = problems.len(),
            "manifests loaded"
        );
        Ok(writer.apply_source([], problems, true))
    }

    /// Reads again the files at `paths` (relative to the directory; a
    /// directory stands for the files below it, a missing path for the files
    /// that were there) and applies what changed to `writer`. Returns the
    /// generation published.
    pub fn refresh(
        &mut self,
        paths: impl IntoIterator<Item = PathBuf>,
        writer: &mut ModelWriter,
    ) -> Result<u64, Error> {
        if self.stale {
            return self.resync(writer);
        }
        let mut files = BTreeSet::new();
        for rel in paths {
            self.expand(&rel, &mut files)?;
        }
        self.apply(&files, writer)
    }

    /// Updates the state from `paths` and hands the difference to `writer`.
    fn apply(&mut self, paths: &BTreeSet<PathBuf>, writer: &mut ModelWriter) -> Result<u64, Error> {
        let mut changes = 0usize;
        let read = self
            .update(paths, true, &mut |change| {
                changes += 1;
                writer.stage(change);
            })
            .inspect_err(|_| self.stale = true)?;
        debug!(files = read, changes, "manifests reloaded");
        Ok(writer.apply_source([], self.problems(), true))
    }

    fn forget(&mut self) {
        self.files.clear();
        self.defs.clear();
        self.duplicates.clear();
        self.stale = false;
    }

    /// Every manifest file below the directory, and every file read before.
    fn all_paths(&self) -> Result<BTreeSet<PathBuf>, Error> {
        let mut found = Vec::new();
        collect_files(&self.root, &mut found)?;
        let mut paths: BTreeSet<PathBuf> = found
            .into_iter()
            .map(|p| p.strip_prefix(&self.root).unwrap_or(&p).to_path_buf())
            .collect();
        paths.extend(self.files.keys().map(|p| p.to_path_buf()));
        Ok(paths)
    }

    /// The manifest files `rel` stands for: itself, the files below it if it
    /// is a directory, and the files known below it.
    fn expand(&self, rel: &Path, out: &mut BTreeSet<PathBuf>) -> Result<(), Error> {
        let abs = self.root.join(rel);
        match std::fs::metadata(&abs) {
            Ok(meta) if meta.is_dir() => {
                let mut found = Vec::new();
                collect_files(&abs, &mut found)?;
                out.extend(
                    found
                        .into_iter()
                        .map(|p| p.strip_prefix(&self.root).unwrap_or(&p).to_path_buf()),
                );
            }
            Ok(meta) if meta.is_file() && is_manifest(rel) => {
                out.insert(rel.to_path_buf());
            }
            _ => {}
        }
        // Known files at or below `rel` (gone, or moved with their directory).
        out.extend(
            self.files
                .range::<Path, _>((std::ops::Bound::Included(rel), std::ops::Bound::Unbounded))
                .map(|(p, _)| p)
                .take_while(|p| p.starts_with(rel))
                .map(|p| p.to_path_buf()),
        );
        Ok(())
    }

    /// Reads `paths` into the state and hands `sink` what changed: the
    /// served definition of every object whose serving file or content
    /// changed, as its file is parsed; then reads again the files that now
    /// serve an object they did not serve before; then the deletes. Returns
    /// how many files were read. With `prepare`, Services and EndpointSlices
    /// go to `sink` translated ([`Change::prepare`]).
    fn update(
        &mut self,
        paths: &BTreeSet<PathBuf>,
        prepare: bool,
        sink: &mut dyn FnMut(Change),
    ) -> Result<usize, Error> {
        let mut update = Update {
            prepare,
            ..Update::default()
        };
        self.read_files(paths, &mut update, sink)?;
        loop {
            // An object whose serving file changed to one not parsed in this
            // update (its first definition was removed): that file's
            // definition is needed.
            let mut needed = BTreeSet::new();
            for (id, before) in &update.before {
                if let Some(owner) = self.owner(id)
                    && before.as_ref() != Some(owner)
                    && !update.forced.contains(owner)
                    && !update.staged.contains(&(Arc::clone(owner), Arc::clone(id)))
                {
                    needed.insert(Arc::clone(owner));
                }
            }
            if needed.is_empty() {
                self.finish(&update, sink);
                return Ok(update.read);
            }
            for file in needed {
                update.forced.insert(Arc::clone(&file));
                self.read_file(&file, true, &mut update, sink)?;
            }
        }
    }

    /// The file whose definition of `id` is served.
    fn owner(&self, id: &ObjectId) -> Option<&Arc<Path>> {
        self.defs.get(id).and_then(|files| files.first())
    }

    /// Ends an update: deletes of objects no file defines any more, and
    /// the bookkeeping of objects defined more than once.
    fn finish(&mut self, update: &Update, sink: &mut dyn FnMut(Change)) {
        for (id, before) in &update.before {
            if self.defs.get(id).is_some_and(|files| files.len() > 1) {
                self.duplicates.insert(Arc::clone(id));
            } else {
                self.duplicates.remove(id);
            }
            match (self.owner(id), before) {
                (None, Some(_)) => sink(Change::Delete(ObjectId::clone(id))),
                (Some(owner), before)
                    if before.as_ref() != Some(owner)
                        && !update.staged.contains(&(Arc::clone(owner), Arc::clone(id))) =>
                {
                    // The serving file no longer parses: its last good
                    // definition was never applied and is not kept.
                    warn!(object = %id, file = %owner.display(), "definition not available; the previous one stays in force");
                }
                _ => {}
            }
        }
    }

    /// Problems of every file, and of objects defined more than once.
    fn problems(&self) -> Vec<Problem> {
        let mut problems: Vec<Problem> = self
            .files
            .values()
            .flat_map(|f| f.problems.iter().cloned())
            .collect();
        for id in &self.duplicates {
            let Some(files) = self.defs.get(id) else {
                continue;
            };
            let origin = |file: &Arc<Path>| {
                self.files.get(file).and_then(|state| {
                    state.objects.iter().find(|d| d.id == *id).map(|d| Origin {
                        file: file.to_path_buf(),
                        document: d.document.to_string(),
                    })
                })
            };
            let first = origin(&files[0]);
            for file in &files[1..] {
                problems.push(Problem {
                    severity: Severity::Error,
                    origin: origin(file),
                    object: Some(ObjectId::clone(id)),
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
            }
        }
        problems
    }

    /// Notes that `id`'s serving file may change, remembering the current one.
    fn touch(&self, id: &Arc<ObjectId>, update: &mut Update) {
        if !update.before.contains_key(id) {
            update
                .before
                .insert(Arc::clone(id), self.owner(id).cloned());
        }
    }

    /// Reads one file (gone if it is not a manifest file any more) into the
    /// state. Unless `force`, a file whose content hash did not change is not
    /// parsed.
    fn read_file(
        &mut self,
        rel: &Path,
        force: bool,
        update: &mut Update,
        sink: &mut dyn FnMut(Change),
    ) -> Result<(), Error> {
        let known = if force { None } else { self.content_of(rel) };
        let read = read_manifest(&self.root, rel, known, update.prepare)?;
        self.accept(rel, read, update, sink);
        Ok(())
    }

    /// The content hash last read from `rel`.
    fn content_of(&self, rel: &Path) -> Option<u64> {
        self.files.get(rel).map(|state| state.content)
    }

    /// Reads `paths` in order, parsing them on several threads when there
    /// are many (the first load of a large directory): workers read and
    /// parse files ahead, this thread puts them into the state (and hands
    /// `sink` their changes) in path order, so the outcome is the same as
    /// reading one by one. At most [`PARSE_AHEAD`] parsed files wait.
    fn read_files(
        &mut self,
        paths: &BTreeSet<PathBuf>,
        update: &mut Update,
        sink: &mut dyn FnMut(Change),
    ) -> Result<(), Error> {
        let workers = if self.sequential {
            1
        } else {
            parse_workers(paths.len())
        };
        if workers <= 1 {
            for rel in paths {
                self.read_file(rel, false, update, sink)?;
            }
            return Ok(());
        }
        let jobs: Vec<(&Path, Option<u64>)> = paths
            .iter()
            .map(|rel| (rel.as_path(), self.content_of(rel)))
            .collect();
        let ahead = Ahead::new(jobs.len());
        let prepare = update.prepare;
        let root = self.root.clone();
        std::thread::scope(|scope| {
            for _ in 0..workers {
                scope.spawn(|| {
                    while let Some(i) = ahead.take() {
                        let (rel, known) = jobs[i];
                        ahead.put(i, read_manifest(&root, rel, known, prepare));
                    }
                });
            }
            let result = (0..jobs.len()).try_for_each(|i| {
                let read = ahead.wait(i)?;
                self.accept(jobs[i].0, read, update, sink);
                Ok(())
            });
            ahead.stop();
            result
        })
    }

    /// Puts what [`read_manifest`] found in `rel` into the state.
    fn accept(
        &mut self,
        rel: &Path,
        read: Read,
        update: &mut Update,
        sink: &mut dyn FnMut(Change),
    ) {
        update.read += 1;
        let (hash, outcome) = match read {
            Read::Gone => {
                self.remove_file(rel, update);
                return;
            }
            Read::Unchanged => return,
            Read::Content { hash, outcome } => (hash, outcome),
        };
        let key = match self.files.get_key_value(rel) {
            Some((key, _)) => Arc::clone(key),
            None => Arc::from(rel),
        };
        match outcome {
            Ok((objects, problems)) => {
                self.replace_file(key, hash, objects, problems, update, sink);
            }
            Err((document, message)) => {
                let state = self.files.entry(Arc::clone(&key)).or_insert(FileState {
                    content: hash,
                    objects: Vec::new(),
                    problems: Vec::new(),
                });
                let problem = Problem {
                    severity: Severity::Error,
                    origin: Some(Origin {
                        file: rel.to_path_buf(),
                        document,
                    }),
                    object: None,
                    error: FieldError::new(
                        "",
                        if state.objects.is_empty() {
                            message
                        } else {
                            format!("{message}; the file's previous contents stay in force")
                        },
                    ),
                };
                warn!(file = %rel.display(), %problem, "manifest does not parse");
                // The new content is remembered, so that restoring the old
                // one parses again; the objects stay.
                state.content = hash;
                state.problems = vec![problem];
            }
        }
    }

    /// Puts a newly parsed file into the state.
    fn replace_file(
        &mut self,
        key: Arc<Path>,
        content: u64,
        objects: Vec<Parsed>,
        problems: Vec<Problem>,
        update: &mut Update,
        sink: &mut dyn FnMut(Change),
    ) {
        let old = self.files.remove(&key);
        let mut old_objects: HashMap<Arc<ObjectId>, (Box<str>, u64)> = old
            .map(|state| {
                state
                    .objects
                    .into_iter()
                    .map(|d| (d.id, (d.document, d.hash)))
                    .collect()
            })
            .unwrap_or_default();
        let mut defined = Vec::with_capacity(objects.len());
        for (id, document, hash, change) in objects {
            let id = if let Some((id, old)) = old_objects.remove_entry(&id) {
                if old != (document.clone(), hash) {
                    self.touch(&id, update);
                    update.redefined.insert((Arc::clone(&key), Arc::clone(&id)));
                }
                id
            } else {
                let id = match self.defs.get_key_value(&id) {
                    Some((shared, _)) => Arc::clone(shared),
                    None => Arc::new(id),
                };
                self.touch(&id, update);
                update.redefined.insert((Arc::clone(&key), Arc::clone(&id)));
                let files = self.defs.entry(Arc::clone(&id)).or_default();
                if let Err(at) = files.binary_search(&key) {
                    files.insert(at, Arc::clone(&key));
                }
                id
            };
            // Served from this file, and new or moved here: apply it.
            let pair = (Arc::clone(&key), Arc::clone(&id));
            if self.owner(&id) == Some(&key)
                && (update.redefined.contains(&pair)
                    || update
                        .before
                        .get(&id)
                        .is_some_and(|before| before.as_ref() != Some(&key)))
            {
                sink(change);
                update.staged.insert(pair);
            }
            defined.push(Defined { id, document, hash });
        }
        for id in old_objects.into_keys() {
            self.touch(&id, update);
            self.undefine(&id, &key);
        }
        self.files.insert(
            key,
            FileState {
                content,
                objects: defined,
                problems,
            },
        );
    }

    /// Forgets a file that is gone.
    fn remove_file(&mut self, rel: &Path, update: &mut Update) {
        let Some((key, state)) = self.files.remove_entry(rel) else {
            return;
        };
        for defined in state.objects {
            self.touch(&defined.id, update);
            self.undefine(&defined.id, &key);
        }
    }

    fn undefine(&mut self, id: &ObjectId, file: &Arc<Path>) {
        if let Some(files) = self.defs.get_mut(id) {
            files.retain(|f| f != file);
            if files.is_empty() {
                self.defs.remove(id);
            }
        }
    }

    /// Loads the directory into `writer`, then reloads what changed whenever
    /// a file below it changes, until `writer` has no receivers left or the
    /// watcher fails. Run it as a task.
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
        self.canonical = std::fs::canonicalize(&self.root).ok();
        self.sync(&mut writer)?;
        loop {
            let mut pending = Pending::default();
            match rx.recv().await {
                None => return Ok(()),
                Some(event) => {
                    if !self.note(event, &mut pending) {
                        continue;
                    }
                }
            }
            // Debounce: wait for a quiet period, but not forever.
            let deadline = tokio::time::Instant::now() + MAX_DEBOUNCE;
            loop {
                let quiet = tokio::time::sleep(DEBOUNCE);
                tokio::select! {
                    () = quiet => break,
                    () = tokio::time::sleep_until(deadline) => break,
                    event = rx.recv() => match event {
                        None => return Ok(()),
                        Some(event) => { self.note(event, &mut pending); }
                    },
                }
            }
            if !writer.has_consumers() {
                return Ok(());
            }
            let result = if pending.rescan {
                self.sync(&mut writer)
            } else {
                self.refresh(pending.paths, &mut writer)
            };
            match result {
                Ok(generation) => debug!(generation, "reloaded"),
                Err(e) => warn!(error = %e, "reload failed; keeping the current model"),
            }
        }
    }

    /// Records what a file event asks to read again; whether it asks for
    /// anything.
    fn note(&self, event: notify::Result<notify::Event>, pending: &mut Pending) -> bool {
        let event = match event {
            Err(e) => {
                warn!(error = %e, "file watcher error; rescanning");
                pending.rescan = true;
                return true;
            }
            // A file closed after writing is complete: read it (again).
            Ok(event)
                if matches!(
                    event.kind,
                    notify::EventKind::Access(notify::event::AccessKind::Close(
                        notify::event::AccessMode::Write
                    ))
                ) =>
            {
                event
            }
            // Reading a file opens it: other access events come from our
            // own reloads and would make them loop.
            Ok(event) if matches!(event.kind, notify::EventKind::Access(_)) => return false,
            Ok(event) => event,
        };
        debug!(?event.kind, paths = ?event.paths, "file event");
        if event.need_rescan() {
            warn!("file watcher lost events; rescanning");
            pending.rescan = true;
            return true;
        }
        let mut wanted = false;
        for path in &event.paths {
            let rel = path
                .strip_prefix(&self.root)
                .ok()
                .or_else(|| path.strip_prefix(self.canonical.as_ref()?).ok());
            let Some(rel) = rel else {
                pending.rescan = true;
                wanted = true;
                continue;
            };
            let names: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if names.is_empty() || names.iter().any(|n| n.starts_with("..")) {
                // The directory itself, or a ConfigMap mount swapping its
                // `..data` link: every file may have changed.
                pending.rescan = true;
                wanted = true;
            } else if names.iter().any(|n| n.starts_with('.')) {
                // Hidden entries (editors' temporary files) are not read.
            } else {
                pending.paths.insert(rel.to_path_buf());
                wanted = true;
            }
        }
        wanted
    }
}

/// What reading one file found.
enum Read {
    /// Not a manifest file (any more), or gone.
    Gone,
    /// The content hash is the one known: not parsed.
    Unchanged,
    /// New content: its hash, and its objects and problems, or the
    /// document that does not parse and why.
    Content {
        hash: u64,
        outcome: Result<(Vec<Parsed>, Vec<Problem>), (String, String)>,
    },
}

/// Reads and parses `root`/`rel`, unless its content hash is `known`.
/// Touches no state, so files can be read on several threads.
/// With `prepare`, Services and EndpointSlices come translated
/// ([`Change::prepare`]).
fn read_manifest(
    root: &Path,
    rel: &Path,
    known: Option<u64>,
    prepare: bool,
) -> Result<Read, Error> {
    let abs = root.join(rel);
    let is_file = is_manifest(rel) && std::fs::metadata(&abs).is_ok_and(|m| m.is_file());
    if !is_file {
        return Ok(Read::Gone);
    }
    let content = match std::fs::read(&abs) {
        Ok(content) => content,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Read::Gone),
        Err(source) => return Err(Error::Io { path: abs, source }),
    };
    let hash = hash_of(&content[..]);
    if known == Some(hash) {
        return Ok(Read::Unchanged);
    }
    let outcome =
        split_documents(rel, &content).map(|documents| decode_documents(rel, documents, prepare));
    Ok(Read::Content { hash, outcome })
}

/// Files a worker may have parsed ahead of the one being put into the state.
const PARSE_AHEAD: usize = 64;

/// Fewer files than this are read on the calling thread alone.
const PARALLEL_FILES: usize = 16;

/// Threads that parse `files` files: one per core, none for a few files.
fn parse_workers(files: usize) -> usize {
    if files < PARALLEL_FILES {
        return 1;
    }
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

/// The files read ahead by the workers of [`ManifestDir::read_files`]: each
/// worker takes the next index (no further than [`PARSE_AHEAD`] past the
/// one awaited) and puts its result in its slot.
struct Ahead {
    state: std::sync::Mutex<AheadState>,
    changed: std::sync::Condvar,
}

struct AheadState {
    /// Next index to take.
    next: usize,
    /// Index awaited by the consumer.
    awaited: usize,
    slots: Vec<Option<Result<Read, Error>>>,
    stopped: bool,
}

impl Ahead {
    fn new(n: usize) -> Self {
        Self {
            state: std::sync::Mutex::new(AheadState {
                next: 0,
                awaited: 0,
                slots: (0..n).map(|_| None).collect(),
                stopped: false,
            }),
            changed: std::sync::Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, AheadState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The next index to read, once it is no more than [`PARSE_AHEAD`] ahead;
    /// `None` when every index is taken or the consumer stopped.
    fn take(&self) -> Option<usize> {
        let mut state = self.lock();
        loop {
            if state.stopped || state.next >= state.slots.len() {
                return None;
            }
            if state.next < state.awaited + PARSE_AHEAD {
                state.next += 1;
                return Some(state.next - 1);
            }
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    fn put(&self, i: usize, read: Result<Read, Error>) {
        self.lock().slots[i] = Some(read);
        self.changed.notify_all();
    }

    /// The result of index `i`, once a worker has put it.
    fn wait(&self, i: usize) -> Result<Read, Error> {
        let mut state = self.lock();
        state.awaited = i;
        self.changed.notify_all();
        loop {
            if let Some(read) = state.slots[i].take() {
                return read;
            }
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    /// The consumer is done (or failed): workers take nothing more.
    fn stop(&self) {
        self.lock().stopped = true;
        self.changed.notify_all();
    }
}

/// Decodes the documents of one file: its objects (id, document, content
/// hash, change), the first definition of each, and its problems.
fn decode_documents(
    rel: &Path,
    documents: Vec<(String, Document<'_>)>,
    prepare: bool,
) -> (Vec<Parsed>, Vec<Problem>) {
    let mut objects: Vec<Parsed> = Vec::with_capacity(documents.len());
    // The document defining each id first.
    let mut first: HashMap<ObjectId, usize> = HashMap::with_capacity(documents.len());
    let mut problems = Vec::new();
    // Decoding and translating are most of a large file's time, and each
    // object's is its own: on several threads when there are many.
    let decoded = map_in_parallel(documents, |(document, content)| {
        let (hash, decoded) = match content {
            Document::Value(value) => (hash_of(&value), decode(value)),
            Document::Json(text) => (hash_of(text.get()), decode_json(text.get())),
        };
        let origin = Some(Origin {
            file: rel.to_path_buf(),
            document: document.clone(),
        });
        let change = match decoded {
            Ok(object) if prepare => Ok(Change::Upsert { object, origin }.prepare()),
            Ok(object) => Ok(Change::Upsert { object, origin }),
            Err(DecodeError {
                object: Some(id),
                error,
            }) => Ok(Change::Invalid { id, origin, error }),
            Err(DecodeError {
                object: None,
                error,
            }) => Err(Problem {
                severity: Severity::Error,
                origin,
                object: None,
                error,
            }),
        };
        (document, hash, change)
    });
    for (document, hash, change) in decoded {
        let change = match change {
            Ok(change) => change,
            Err(problem) => {
                problems.push(problem);
                continue;
            }
        };
        let id = change.id();
        if let Some(&at) = first.get(&id) {
            let first = &objects[at].1;
            problems.push(Problem {
                severity: Severity::Error,
                origin: Some(Origin {
                    file: rel.to_path_buf(),
                    document,
                }),
                object: Some(id),
                error: FieldError::new(
                    "",
                    format!(
                        "defined twice; the definition in {} (document {first}) is used",
                        rel.display()
                    ),
                ),
            });
            continue;
        }
        first.insert(id.clone(), objects.len());
        objects.push((id, document.into_boxed_str(), hash, change));
    }
    (objects, problems)
}

/// The origin of a change, to order changes as the files hold them.
fn change_origin(change: &Change) -> Option<&Origin> {
    match change {
        Change::Upsert { origin, .. }
        | Change::Invalid { origin, .. }
        | Change::Translated { origin, .. } => origin.as_ref(),
        Change::Delete(_) => None,
    }
}

fn hash_of(value: &(impl Hash + ?Sized)) -> u64 {
    // Content hashes live as long as the process, so a fixed seed will do; foldhash
    // rather than SipHash, which was a tenth of loading a large file.
    std::hash::BuildHasher::hash_one(&foldhash::quality::FixedState::default(), value)
}

/// Objects of one file below this are decoded on the calling thread alone.
const PARALLEL_OBJECTS: usize = 1024;

/// `f` of every item, in order; on one thread per core when there are at
/// least [`PARALLEL_OBJECTS`] items.
fn map_in_parallel<T: Send, U: Send>(items: Vec<T>, f: impl Fn(T) -> U + Sync) -> Vec<U> {
    let workers = if items.len() < PARALLEL_OBJECTS {
        1
    } else {
        std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
    };
    if workers <= 1 {
        return items.into_iter().map(f).collect();
    }
    let per_worker = items.len().div_ceil(workers);
    let mut chunks: Vec<Vec<T>> = Vec::with_capacity(workers);
    let mut items = items.into_iter();
    loop {
        let chunk: Vec<T> = items.by_ref().take(per_worker).collect();
        if chunk.is_empty() {
            break;
        }
        chunks.push(chunk);
    }
    let f = &f;
    std::thread::scope(|scope| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| scope.spawn(move || chunk.into_iter().map(f).collect::<Vec<U>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|handle| match handle.join() {
                Ok(out) => out,
                Err(panic) => std::panic::resume_unwind(panic),
            })
            .collect()
    })
}

/// Whether a path names a manifest file (by extension; hidden names are not).
fn is_manifest(rel: &Path) -> bool {
    !rel.components()
        .any(|c| c.as_os_str().to_string_lossy().starts_with('.'))
        && rel
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
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

/// One object of a file, not yet decoded.
enum Document<'a> {
    /// Parsed into a value (YAML, and JSON the fast path does not take).
    Value(serde_json::Value),
    /// The JSON text of one object, not parsed yet.
    Json(&'a serde_json::value::RawValue),
}

/// The objects of a JSON file as text, without building their values: the
/// items of a `kind: *List` or the file's one object. `None` where the file
/// needs [`split_documents`]' value path: not one object, a key given twice,
/// anything unusual. The labels are the value path's.
fn json_objects(text: &str) -> Option<Vec<(String, Document<'_>)>> {
    use serde_json::value::RawValue;
    #[derive(serde::Deserialize)]
    struct Top<'a> {
        #[serde(borrow, default)]
        kind: Option<std::borrow::Cow<'a, str>>,
        #[serde(borrow, default)]
        items: Option<&'a RawValue>,
    }
    let top: Top<'_> = serde_json::from_str(text).ok()?;
    let items = top.items.filter(|items| items.get().starts_with('['));
    if let Some(items) = items
        && top.kind.is_some_and(|kind| kind.ends_with("List"))
    {
        let items: Vec<&RawValue> = serde_json::from_str(items.get()).ok()?;
        return Some(
            items
                .into_iter()
                .enumerate()
                .map(|(j, item)| (format!("1.{}", j + 1), Document::Json(item)))
                .collect(),
        );
    }
    let whole: &RawValue = serde_json::from_str(text).ok()?;
    Some(vec![("1".to_owned(), Document::Json(whole))])
}

/// Splits a file into untyped objects, each with its document label. Lists
/// are flattened (`2.3` is item 3 of document 2). The error names the
/// document and what is wrong.
fn split_documents<'a>(
    rel: &Path,
    content: &'a [u8],
) -> Result<Vec<(String, Document<'a>)>, (String, String)> {
    let text =
        std::str::from_utf8(content).map_err(|e| ("1".to_owned(), format!("not UTF-8: {e}")))?;
    let is_json = rel.extension().is_some_and(|e| e == "json");
    if is_json && let Some(objects) = json_objects(text) {
        return Ok(objects);
    }
    let mut docs = Vec::new();
    if is_json {
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| ("1".to_owned(), format!("JSON syntax error: {e}")))?;
        docs.push(value);
    } else {
        for (i, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
            let label = (i + 1).to_string();
            let value = <serde_norway::Value as serde::Deserialize>::deserialize(doc)
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
            serde_json::Value::Object(mut map)
                if map
                    .get("kind")
                    .and_then(|k| k.as_str())
                    .is_some_and(|k| k.ends_with("List"))
                    && map.get("items").is_some_and(serde_json::Value::is_array) =>
            {
                // Moved out, not cloned: a List of 10k Services is hundreds of MiB as values.
                let Some(serde_json::Value::Array(items)) = map.remove("items") else {
                    unreachable!("checked above")
                };
                for (j, item) in items.into_iter().enumerate() {
                    out.push((format!("{label}.{}", j + 1), Document::Value(item)));
                }
            }
            serde_json::Value::Object(_) => out.push((label, Document::Value(doc))),
            _ => return Err((label, "a document must be a mapping (an object)".to_owned())),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a change says, comparable: the object or the error, and where it came from.
    fn said(change: &Change) -> String {
        match change {
            Change::Upsert { object, origin } => format!("upsert {object:?} from {origin:?}"),
            Change::Invalid { id, origin, error } => {
                format!("invalid {id} from {origin:?}: {error}")
            }
            Change::Delete(id) => format!("delete {id}"),
            Change::Translated {
                id,
                origin,
                translation,
            } => format!("translated {id} from {origin:?}: {translation:?}"),
        }
    }

    /// Items of a List: Services and EndpointSlices, and every way an item can be wrong.
    fn list_items(n: usize) -> Vec<serde_json::Value> {
        let mut items = Vec::new();
        for i in 0..n {
            items.push(serde_json::json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": format!("s{i}"), "namespace": "demo", "labels": {"app": "x"}},
                "spec": {"clusterIP": format!("10.96.{}.{}", i / 250, i % 250 + 1),
                         "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
            }));
            items.push(serde_json::json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": format!("s{i}-1"), "namespace": "demo",
                             "labels": {"kubernetes.io/service-name": format!("s{i}")}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 8080}],
                "endpoints": [{"addresses": [format!("10.1.{}.{}", i / 250, i % 250 + 1)],
                               "conditions": {"ready": true}}]
            }));
        }
        for bad in [
            serde_json::json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "port-text", "namespace": "demo"}, "spec": {"ports": [{"port": "eighty"}]}}),
            serde_json::json!({"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "demo"}, "spec": {}}),
            serde_json::json!({"apiVersion": "v2", "kind": "Service", "metadata": {"name": "v2", "namespace": "demo"}}),
            serde_json::json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "namespace": "demo"}}),
            serde_json::json!({"apiVersion": "v1", "metadata": {"name": "no-kind"}}),
            serde_json::json!({"apiVersion": "v1", "kind": 7, "metadata": {"name": "kind-number"}}),
            serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": 7}}),
            serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "cluster-scoped", "namespace": "ignored"}}),
            serde_json::json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s3", "namespace": "demo"}, "spec": {"ports": [{"port": 81}]}}),
            serde_json::json!(5),
            serde_json::json!(null),
            serde_json::json!(["not", "an", "object"]),
        ] {
            items.push(bad);
        }
        items
    }

    /// The changes and problems of a directory holding `file` with `text`,
    /// with the file's name left out of the origins.
    fn load_one(file: &str, text: &str) -> (Vec<String>, Vec<String>) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(file), text).unwrap();
        let loaded = ManifestDir::new(dir.path()).load().unwrap();
        let unnamed = |s: String| s.replace(file, "FILE");
        (
            loaded.changes.iter().map(|c| unnamed(said(c))).collect(),
            loaded
                .problems
                .iter()
                .map(|p| unnamed(p.to_string()))
                .collect(),
        )
    }

    /// The JSON fast path (objects decoded from their text, on several
    /// threads for a large List) loads exactly what the value path loads:
    /// the same List as YAML, with a key given twice (which the fast path
    /// leaves to the value path), and small.
    #[test]
    fn a_json_list_loads_as_the_same_list_in_yaml() {
        for n in [3, PARALLEL_OBJECTS] {
            let items = list_items(n);
            let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
            let json = serde_json::to_string_pretty(&list).unwrap();
            let yaml = serde_norway::to_string(&list).unwrap();
            let from_json = load_one("all.json", &json);
            let from_yaml = load_one("all.yaml", &yaml);
            assert!(from_json.0.len() > 2 * n, "{n}: {:?}", from_json.0.len());
            assert_eq!(from_json, from_yaml, "{n} items");
            // A key given twice: the value path takes the last, and so must the file.
            let twice = json.replacen(
                "\"kind\": \"List\"",
                "\"kind\": \"Lost\", \"kind\": \"List\"",
                1,
            );
            assert_ne!(twice, json);
            assert_eq!(
                load_one("all.json", &twice),
                from_yaml,
                "{n} items, a key twice"
            );
        }
        // One object, not a List; and a document that is not an object.
        let one = serde_json::to_string(&list_items(1)[0]).unwrap();
        assert_eq!(load_one("one.json", &one), load_one("one.yaml", &one));
        assert_eq!(load_one("n.json", "[1]"), load_one("n.yaml", "[1]"));
        assert_eq!(load_one("n.json", "null"), load_one("n.yaml", "null"));
    }

    #[test]
    fn json_text_decodes_as_its_value_does() {
        for item in list_items(2) {
            let text = item.to_string();
            assert_eq!(
                crate::object::decode_json(&text),
                decode(item.clone()),
                "{text}"
            );
        }
        // A field given twice: the value path takes the last one.
        let twice =
            r#"{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a", "name": "b"}}"#;
        let decoded = crate::object::decode_json(twice).unwrap();
        assert_eq!(decoded.id().name, "b");
        assert_eq!(Ok(decoded), decode(serde_json::from_str(twice).unwrap()));
    }

    fn service(name: &str, port: u32) -> String {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: demo\nspec:\n  clusterIP: 10.96.0.1\n  ports:\n    - port: {port}\n"
        )
    }

    /// 120 files: Services defined in several files (the first file wins),
    /// broken files, a JSON List, empty files.
    fn directory(dir: &Path) {
        for f in 0..120u32 {
            let text = match f % 7 {
                0 => "kind: [\n".to_owned(),
                1 => String::new(),
                2 => format!(
                    "{{\"apiVersion\": \"v1\", \"kind\": \"List\", \"items\": [{{\"apiVersion\": \"v1\", \"kind\": \"Service\", \"metadata\": {{\"name\": \"l{f}\", \"namespace\": \"demo\"}}, \"spec\": {{\"ports\": [{{\"port\": 80}}]}}}}]}}"
                ),
                _ => format!(
                    "{}---\n{}---\n{}",
                    service(&format!("s{f}"), 80),
                    service(&format!("s{}", f / 3), 81 + f),
                    service(&format!("s{f}"), 90)
                ),
            };
            let ext = if f % 7 == 2 { "json" } else { "yaml" };
            std::fs::write(dir.join(format!("f{f:03}.{ext}")), text).unwrap();
        }
    }

    #[test]
    fn files_read_on_several_threads_load_what_one_thread_loads() {
        assert!(parse_workers(120) >= 1);
        let dir = tempfile::tempdir().unwrap();
        directory(dir.path());
        let mut parallel = ManifestDir::new(dir.path());
        let mut sequential = ManifestDir::new(dir.path());
        sequential.sequential = true;
        let (a, b) = (parallel.load().unwrap(), sequential.load().unwrap());
        assert_eq!(a.files, 120);
        assert_eq!(a.files, b.files);
        assert_eq!(a.problems, b.problems);
        assert!(a.problems.len() > 20, "{}", a.problems.len());
        let ids = |l: &Loaded| l.changes.iter().map(Change::id).collect::<Vec<_>>();
        assert_eq!(ids(&a), ids(&b));
        let (mut wa, _ra) = ModelWriter::new();
        let (mut wb, _rb) = ModelWriter::new();
        ManifestDir::new(dir.path()).sync(&mut wa).unwrap();
        let mut sequential = ManifestDir::new(dir.path());
        sequential.sequential = true;
        sequential.sync(&mut wb).unwrap();
        let (sa, sb) = (wa.snapshot(), wb.snapshot());
        assert_eq!(sa.services, sb.services);
        assert_eq!(sa.problems, sb.problems);
        assert_eq!(sa.generation, 1, "one snapshot for the whole load");
    }

    #[test]
    fn an_object_twice_in_one_file_keeps_the_first_definition() {
        let rel = Path::new("f.yaml");
        let text = format!("{}---\n{}", service("a", 80), service("a", 81));
        let documents = split_documents(rel, text.as_bytes()).unwrap();
        let (objects, problems) = decode_documents(rel, documents, false);
        assert_eq!(objects.len(), 1);
        assert_eq!(&*objects[0].1, "1");
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].to_string().contains("(document 1) is used"),
            "{}",
            problems[0]
        );
    }
}
