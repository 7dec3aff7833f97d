//! Manifests from a directory: every `*.yaml`, `*.yml` and `*.json` file in
//! it (not in subdirectories), read in name order.
//!
//! Hidden files (names starting with `.`, which also covers the `..data`
//! entries of a mounted ConfigMap) and editor leftovers (`*~`, `*.swp`) are
//! skipped. Symbolic links are followed, so a mounted ConfigMap works. A
//! file that cannot be read is a [`ManifestProblem`] like a malformed one: the other
//! files still load. So is a file larger than [`MAX_FILE_BYTES`], which is
//! not read at all, and one that takes longer than [`MAX_PARSE_TIME`] to
//! parse. Such a file that loaded before keeps its last good content.
//!
//! [`DirReader`] reads a file again only when its identity, size or times
//! changed, so watching a directory costs one `stat` per file and poll
//! while nothing changes, and it keeps the view up to date file by file
//! ([`Assembly`]), so a change costs the objects of the files that changed.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use zerohop_k8s::{manifest::Assembly, parse_manifests, ManifestProblem, Origins, Parsed};
use zerohop_planner::ClusterView;

/// The view built from a directory, and what was wrong in it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Loaded {
    /// Every object that loaded.
    pub view: ClusterView,
    /// Unreadable files, malformed documents, invalid or duplicate objects.
    pub problems: Vec<ManifestProblem>,
    /// The file each object comes from.
    pub origins: Origins,
}

/// The largest manifest file read: 16 MiB, some 50,000 Services or
/// EndpointSlices.
pub const MAX_FILE_BYTES: u64 = 16 << 20;

/// The longest a file may take to parse (16 MiB of Services take about
/// 2 s here); one that takes longer is reported and its parse left to
/// finish in the background.
pub const MAX_PARSE_TIME: Duration = Duration::from_secs(20);

/// Loads the manifests of directory `path`. Fails only when the directory
/// itself cannot be listed (for instance when it does not exist).
pub fn load_dir(path: &Path) -> io::Result<Loaded> {
    Ok(DirReader::new(path.to_owned()).read()?.unwrap_or_default())
}

/// Reads a directory again and again, parsing only the files that changed.
pub struct DirReader {
    dir: PathBuf,
    /// Every manifest file of the last read, by name.
    files: BTreeMap<String, File>,
    /// The objects of the files' good contents, kept up to date file by file.
    assembly: Assembly,
    /// Whether a read happened yet.
    read_once: bool,
}

/// A file as last read.
struct File {
    stamp: Stamp,
    /// Whether it was ever read well (its last good content is in the
    /// reader's assembly).
    good: bool,
    /// Why the last read failed, if it did.
    failed: Option<String>,
}

/// What tells that a file changed: which file it is, its size, and its
/// modification and status change times (in ns).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    modified: (i64, i64),
    changed: (i64, i64),
}

impl Stamp {
    fn of(metadata: &fs::Metadata) -> Stamp {
        Stamp {
            dev: metadata.dev(),
            ino: metadata.ino(),
            len: metadata.len(),
            modified: (metadata.mtime(), metadata.mtime_nsec()),
            changed: (metadata.ctime(), metadata.ctime_nsec()),
        }
    }
}

impl DirReader {
    pub fn new(dir: PathBuf) -> DirReader {
        DirReader {
            dir,
            files: BTreeMap::new(),
            assembly: Assembly::new(),
            read_once: false,
        }
    }

    /// Reads the files that changed since the last call: the directory's
    /// view when anything did (a file added, changed or removed), `None`
    /// when nothing did. Fails only when the directory cannot be listed.
    pub fn read(&mut self) -> io::Result<Option<Loaded>> {
        // Each manifest file's stamp, and whether it can be followed to a
        // file (else the stamp is the dangling link's own, and reading it
        // fails with the reason).
        let mut current: BTreeMap<String, (Stamp, bool)> = BTreeMap::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let Ok(name) = entry.file_name().into_string() else {
                continue; // Not UTF-8, so not named *.yaml either.
            };
            if !is_manifest_name(&name) {
                continue;
            }
            let found = match fs::metadata(entry.path()) {
                Ok(metadata) if metadata.is_dir() => continue,
                Ok(metadata) => (Stamp::of(&metadata), true),
                Err(_) => match fs::symlink_metadata(entry.path()) {
                    Ok(metadata) => (Stamp::of(&metadata), false),
                    Err(_) => continue, // Gone since the listing.
                },
            };
            current.insert(name, found);
        }
        let mut changed = !self.read_once || self.files.len() != current.len();
        self.read_once = true;
        let removed: Vec<String> = self
            .files
            .keys()
            .filter(|name| !current.contains_key(*name))
            .cloned()
            .collect();
        for name in removed {
            self.files.remove(&name);
            self.assembly.set(&name, None);
        }
        let to_read: Vec<(String, Stamp, bool)> = current
            .into_iter()
            .filter(|(name, (stamp, _))| {
                self.files.get(name).is_none_or(|file| file.stamp != *stamp)
            })
            .map(|(name, (stamp, readable))| (name, stamp, readable))
            .collect();
        changed |= !to_read.is_empty();
        // A quarter of the files or more (the first read: all of them).
        let read_many = to_read.len() > 1 && to_read.len() * 4 >= self.files.len();
        let reads = read_and_parse_all(&self.dir, &to_read);
        for ((name, stamp, _), read) in to_read.into_iter().zip(reads) {
            let good = self.files.get(&name).is_some_and(|file| file.good);
            let file = match read {
                Ok(parsed) => {
                    self.assembly.set(&name, Some(&parsed));
                    File {
                        stamp,
                        good: true,
                        failed: None,
                    }
                }
                Err(why) => File {
                    stamp,
                    good,
                    failed: Some(why),
                },
            };
            self.files.insert(name, file);
        }
        if read_many {
            self.assembly.pack();
        }
        Ok(changed.then(|| self.loaded()))
    }

    /// The view of the files as last read.
    fn loaded(&self) -> Loaded {
        let mut problems: Vec<ManifestProblem> = self
            .files
            .iter()
            .filter_map(|(name, file)| {
                let why = file.failed.as_ref()?;
                let kept = if file.good {
                    "; its last good content is kept"
                } else {
                    ""
                };
                Some(ManifestProblem {
                    file: name.clone(),
                    object: None,
                    message: format!("{why}{kept}"),
                })
            })
            .collect();
        problems.extend(self.assembly.problems());
        Loaded {
            view: self.assembly.view().clone(),
            problems,
            origins: self.assembly.origins().clone(),
        }
    }
}

/// Reads and parses the files `(name, stamp, readable)` of `dir`, as many
/// at a time as there are CPUs (the first read of a large directory is
/// mostly parsing), each within [`MAX_PARSE_TIME`]; the results are in the
/// order given.
fn read_and_parse_all(dir: &Path, files: &[(String, Stamp, bool)]) -> Vec<Result<Parsed, String>> {
    if files.is_empty() {
        return Vec::new(); // The usual poll; counting CPUs reads cgroup files.
    }
    let at_once = std::thread::available_parallelism().map_or(1, usize::from);
    let mut results = Vec::with_capacity(files.len());
    for batch in files.chunks(at_once) {
        let parses: Vec<Result<mpsc::Receiver<Parsed>, String>> = batch
            .iter()
            .map(|(name, _, readable)| {
                let path = dir.join(name);
                let text = if *readable {
                    read_text(&path)?
                } else {
                    let error = fs::metadata(&path).err();
                    return Err(format!(
                        "cannot read: {}",
                        error.map_or_else(|| "changed while read".to_owned(), |e| e.to_string())
                    ));
                };
                let (send, receive) = mpsc::channel();
                let name = name.clone();
                std::thread::Builder::new()
                    .name("zerohop-parse".into())
                    .spawn(move || send.send(parse_manifests(&name, &text)))
                    .map_err(|error| format!("cannot parse: {error}"))?;
                Ok(receive)
            })
            .collect();
        let deadline = Instant::now() + MAX_PARSE_TIME;
        results.extend(parses.into_iter().map(|parse| {
            parse?
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .map_err(|_| {
                    format!(
                        "took longer than {} s to parse; not used",
                        MAX_PARSE_TIME.as_secs()
                    )
                })
        }));
    }
    results
}

/// A file's text, within [`MAX_FILE_BYTES`].
fn read_text(path: &Path) -> Result<String, String> {
    match read_limited(path) {
        Ok(Some(text)) => Ok(text),
        Ok(None) => Err(format!(
            "larger than {} MiB; not read",
            MAX_FILE_BYTES >> 20
        )),
        Err(error) => Err(format!("cannot read: {error}")),
    }
}

/// The file's text, or `None` when it is larger than [`MAX_FILE_BYTES`]
/// (never read past that).
fn read_limited(path: &Path) -> io::Result<Option<String>> {
    let mut bytes = Vec::new();
    fs::File::open(path)?
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Ok(None);
    }
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8"))
}

/// Whether a directory entry name is one of the manifest files we read.
fn is_manifest_name(name: &str) -> bool {
    let hidden_or_temporary =
        name.starts_with('.') || name.ends_with('~') || name.ends_with(".swp");
    let manifest = [".yaml", ".yml", ".json"]
        .iter()
        .any(|extension| name.ends_with(extension));
    manifest && !hidden_or_temporary
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn messages(problems: &[impl ToString]) -> Vec<String> {
        problems.iter().map(ToString::to_string).collect()
    }
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{SystemTime, UNIX_EPOCH};
    use zerohop_k8s::ObjectRef;
    use zerohop_planner::model::ServiceId;

    use crate::{problem::Problem, source::Snapshot};

    /// A fresh directory under the system temp dir, removed on drop.
    pub(crate) struct TempDir(pub(crate) PathBuf);

    impl TempDir {
        pub(crate) fn new() -> TempDir {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |elapsed| elapsed.as_nanos());
            let path = std::env::temp_dir().join(format!(
                "zerohop-source-test-{}-{}-{nanos}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            fs::create_dir(&path).unwrap();
            TempDir(path)
        }

        pub(crate) fn write(&self, name: &str, contents: impl AsRef<[u8]>) {
            fs::write(self.0.join(name), contents).unwrap();
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn service(name: &str, ip: &str) -> String {
        format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec: {{clusterIP: {ip}}}\n")
    }

    fn service_names(loaded: &Loaded) -> Vec<String> {
        loaded
            .view
            .services()
            .keys()
            .map(|id| id.name.clone())
            .collect()
    }

    #[test]
    fn reads_yaml_yml_and_json_files_only() {
        let dir = TempDir::new();
        dir.write("a.yaml", service("a", "10.96.0.1"));
        dir.write("b.yml", service("b", "10.96.0.2"));
        dir.write(
            "c.json",
            r#"{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "c"}, "spec": {"clusterIP": "10.96.0.3"}}"#,
        );
        dir.write("d.txt", service("d", "10.96.0.4"));
        dir.write("README.md", "not a manifest");
        let loaded = load_dir(&dir.0).unwrap();
        assert_eq!(loaded.problems, vec![]);
        assert_eq!(service_names(&loaded), vec!["a", "b", "c"]);
    }

    #[test]
    fn skips_hidden_files_editor_leftovers_and_subdirectories() {
        let dir = TempDir::new();
        dir.write("web.yaml", service("web", "10.96.0.1"));
        dir.write(".hidden.yaml", service("hidden", "10.96.0.2"));
        dir.write("web.yaml~", service("backup", "10.96.0.3"));
        dir.write(".web.yaml.swp", "\0binary");
        dir.write("web.yaml.swp", "\0binary");
        fs::create_dir(dir.0.join("nested.yaml")).unwrap();
        fs::write(
            dir.0.join("nested.yaml").join("inner.yaml"),
            service("inner", "10.96.0.4"),
        )
        .unwrap();
        let loaded = load_dir(&dir.0).unwrap();
        assert_eq!(loaded.problems, vec![]);
        assert_eq!(service_names(&loaded), vec!["web"]);
    }

    #[test]
    fn files_are_read_in_name_order_so_the_first_duplicate_wins() {
        let dir = TempDir::new();
        dir.write("b.yaml", service("web", "10.96.0.2"));
        dir.write("a.yaml", service("web", "10.96.0.1"));
        let loaded = load_dir(&dir.0).unwrap();
        let web = &loaded.view.services()[&ServiceId::new("default", "web")];
        assert_eq!(
            web.cluster_ips,
            vec!["10.96.0.1".parse::<std::net::IpAddr>().unwrap()]
        );
        assert_eq!(loaded.problems.len(), 1);
        assert_eq!(loaded.problems[0].file, "b.yaml");
        assert!(
            loaded.problems[0].message.contains("a.yaml"),
            "{}",
            loaded.problems[0]
        );
    }

    #[test]
    fn an_unreadable_file_is_a_problem_and_the_rest_loads() {
        let dir = TempDir::new();
        dir.write("bad.yaml", b"kind: \xff\xfe\n");
        #[cfg(unix)]
        std::os::unix::fs::symlink(dir.0.join("missing-target"), dir.0.join("dangling.yaml"))
            .unwrap();
        dir.write("good.yaml", service("good", "10.96.0.1"));
        let loaded = load_dir(&dir.0).unwrap();
        assert_eq!(service_names(&loaded), vec!["good"]);
        let files: Vec<&str> = loaded
            .problems
            .iter()
            .map(|problem| problem.file.as_str())
            .collect();
        let mut expected = vec!["bad.yaml"];
        if cfg!(unix) {
            expected.push("dangling.yaml");
        }
        assert_eq!(files, expected);
        assert!(loaded
            .problems
            .iter()
            .all(|problem| problem.message.starts_with("cannot read: ")));
    }

    #[test]
    fn a_file_over_the_size_limit_is_a_problem_and_not_read() {
        let dir = TempDir::new();
        let mut huge = service("huge", "10.96.0.2");
        huge.push_str(&"#".repeat(MAX_FILE_BYTES as usize));
        dir.write("huge.yaml", huge);
        dir.write("good.yaml", service("good", "10.96.0.1"));
        let loaded = load_dir(&dir.0).unwrap();
        assert_eq!(service_names(&loaded), vec!["good"]);
        assert_eq!(
            loaded.problems,
            vec![ManifestProblem {
                file: "huge.yaml".into(),
                object: None,
                message: "larger than 16 MiB; not read".into(),
            }]
        );
    }

    #[test]
    fn problems_in_a_file_are_reported_with_its_name() {
        let dir = TempDir::new();
        dir.write(
            "services.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec: {}\n",
        );
        let loaded = load_dir(&dir.0).unwrap();
        assert_eq!(
            messages(&loaded.problems),
            vec!["services.yaml: Service shop/web: no ClusterIP"]
        );
        // The agent logs it with the object and file as fields.
        let snapshot = Snapshot::from(loaded);
        assert_eq!(
            snapshot.problems,
            vec![Problem {
                message: "services.yaml: Service shop/web: no ClusterIP".into(),
                object: Some(ObjectRef::new("Service", "shop", Some("web"))),
                file: Some("services.yaml".into()),
            }]
        );
    }

    #[test]
    fn an_empty_directory_gives_an_empty_view() {
        let dir = TempDir::new();
        assert_eq!(load_dir(&dir.0).unwrap(), Loaded::default());
    }

    #[test]
    fn a_missing_directory_is_an_error() {
        let dir = TempDir::new();
        let error = load_dir(&dir.0.join("absent")).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn a_reader_reads_again_only_when_a_file_changed() {
        let dir = TempDir::new();
        dir.write("a.yaml", service("a", "10.96.0.1"));
        dir.write("b.yaml", service("b", "10.96.0.2"));
        let mut reader = DirReader::new(dir.0.clone());
        let first = reader.read().unwrap().expect("the first read gives a view");
        assert_eq!(service_names(&first), vec!["a", "b"]);
        assert_eq!(reader.read().unwrap(), None, "nothing changed");

        dir.write("b.yaml", service("c", "10.96.0.3"));
        let changed = reader.read().unwrap().expect("b.yaml changed");
        assert_eq!(service_names(&changed), vec!["a", "c"]);
        assert_eq!(reader.read().unwrap(), None);

        fs::remove_file(dir.0.join("a.yaml")).unwrap();
        let removed = reader.read().unwrap().expect("a.yaml went");
        assert_eq!(service_names(&removed), vec!["c"]);

        dir.write("d.yaml", service("d", "10.96.0.4"));
        let added = reader.read().unwrap().expect("d.yaml came");
        assert_eq!(service_names(&added), vec!["c", "d"]);
    }

    #[test]
    fn a_file_that_stops_loading_keeps_its_last_good_content() {
        let dir = TempDir::new();
        dir.write("web.yaml", service("web", "10.96.0.1"));
        let mut reader = DirReader::new(dir.0.clone());
        reader.read().unwrap();
        let mut huge = service("other", "10.96.0.2");
        huge.push_str(&"#".repeat(MAX_FILE_BYTES as usize));
        dir.write("web.yaml", huge);
        let loaded = reader.read().unwrap().expect("web.yaml changed");
        assert_eq!(service_names(&loaded), vec!["web"]);
        assert_eq!(
            messages(&loaded.problems),
            vec!["web.yaml: larger than 16 MiB; not read; its last good content is kept"]
        );
        assert_eq!(reader.read().unwrap(), None, "reported, not read again");
        dir.write("web.yaml", service("fixed", "10.96.0.3"));
        let fixed = reader.read().unwrap().expect("web.yaml changed");
        assert_eq!(service_names(&fixed), vec!["fixed"]);
        assert_eq!(fixed.problems, vec![]);
    }

    #[test]
    fn a_dangling_link_is_reported_once_not_read_at_every_poll() {
        let dir = TempDir::new();
        std::os::unix::fs::symlink(dir.0.join("missing-target"), dir.0.join("dangling.yaml"))
            .unwrap();
        let mut reader = DirReader::new(dir.0.clone());
        let loaded = reader.read().unwrap().unwrap();
        assert_eq!(loaded.problems.len(), 1);
        assert!(loaded.problems[0].message.starts_with("cannot read: "));
        assert_eq!(reader.read().unwrap(), None);
        dir.write("missing-target", service("late", "10.96.0.5"));
        let loaded = reader.read().unwrap().expect("the link resolves now");
        assert_eq!(service_names(&loaded), vec!["late"]);
    }
}
