//! Manifests from a directory: every `*.yaml`, `*.yml` and `*.json` file in
//! it (not in subdirectories), read in name order.
//!
//! Hidden files (names starting with `.`, which also covers the `..data`
//! entries of a mounted ConfigMap) and editor leftovers (`*~`, `*.swp`) are
//! skipped. Symbolic links are followed, so a mounted ConfigMap works. A
//! file that cannot be read is a [`Problem`] like a malformed one: the other
//! files still load. So is a file larger than [`MAX_FILE_BYTES`], which is
//! not read at all.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::path::Path;

use zerohop_planner::{build_view, ClusterView, Problem};

/// The view built from a directory, and what was wrong in it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Loaded {
    /// Every Service and EndpointSlice that loaded.
    pub view: ClusterView,
    /// Unreadable files, malformed documents, invalid or duplicate objects.
    pub problems: Vec<Problem>,
    /// The file each object comes from, by object label (`"Service ns/name"`).
    pub origins: BTreeMap<String, String>,
}

/// The largest manifest file read: 16 MiB, some 50,000 Services or
/// EndpointSlices.
pub const MAX_FILE_BYTES: u64 = 16 << 20;

/// Loads the manifests of directory `path`. Fails only when the directory
/// itself cannot be listed (for instance when it does not exist).
pub fn load_dir(path: &Path) -> io::Result<Loaded> {
    let mut names: Vec<String> = Vec::new();
    for entry in fs::read_dir(path)? {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else {
            continue; // Not UTF-8, so not named *.yaml either.
        };
        if is_manifest_name(&name) && !entry.path().is_dir() {
            names.push(name);
        }
    }
    names.sort();

    let mut problems = Vec::new();
    let mut files = Vec::new();
    for name in names {
        match read_limited(&path.join(&name)) {
            Ok(Some(text)) => files.push((name, text)),
            Ok(None) => problems.push(Problem {
                file: name,
                object: None,
                message: format!("larger than {} MiB; not read", MAX_FILE_BYTES >> 20),
            }),
            Err(error) => problems.push(Problem {
                file: name,
                object: None,
                message: format!("cannot read: {error}"),
            }),
        }
    }
    let built = build_view(files);
    problems.extend(built.problems);
    Ok(Loaded {
        view: built.view,
        problems,
        origins: built.origins,
    })
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
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{SystemTime, UNIX_EPOCH};
    use zerohop_planner::model::ServiceId;

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
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

        fn write(&self, name: &str, contents: impl AsRef<[u8]>) {
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
            vec![Problem {
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
            "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {}\n",
        );
        let loaded = load_dir(&dir.0).unwrap();
        assert_eq!(
            loaded
                .problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            vec!["services.yaml: Service default/web: no ClusterIP"]
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
}
