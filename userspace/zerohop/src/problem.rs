//! What in the cluster zerohop cannot use, and how the agent logs it.
//!
//! A problem comes from a source (a manifest that does not parse, an object
//! that does not convert), from the plan, or from the routes. Each is
//! logged once while it lasts, with the object and file it is about as
//! fields, so that log queries can find every problem of one object.

use std::collections::BTreeSet;

use tracing::warn;
use zerohop_k8s::{ManifestProblem, ObjectRef, Origins};

/// Something in the cluster zerohop cannot use, as logged: the message for
/// humans (naming the file and object), and, where known, the object and
/// its file as fields for log queries.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    /// The whole message, e.g. `shop.yaml: Service shop/web: no ClusterIP`.
    pub message: String,
    /// The object it is about, when it is about one.
    pub object: Option<ObjectRef>,
    /// The file the object comes from, when the source is a directory.
    pub file: Option<String>,
}

impl Problem {
    /// A problem of `object`, which `message` names.
    pub fn of(object: ObjectRef, message: String) -> Problem {
        Problem {
            message,
            object: Some(object),
            file: None,
        }
    }

    /// A problem of `object`, which `message` names; the message is
    /// preceded by the file the object comes from when the source is a
    /// directory.
    pub fn about(object: ObjectRef, origins: &Origins, message: String) -> Problem {
        let file = origins.get(&object).map(ToString::to_string);
        Problem {
            message: match &file {
                Some(file) => format!("{file}: {message}"),
                None => message,
            },
            object: Some(object),
            file,
        }
    }
}

/// The problem as printed (`file: object: message`), with its file and object.
impl From<ManifestProblem> for Problem {
    fn from(problem: ManifestProblem) -> Problem {
        Problem {
            message: problem.to_string(),
            object: problem.object,
            file: Some(problem.file),
        }
    }
}

/// Logs the problems not in `known`, then makes `known` the current set, so
/// a problem is logged once while it lasts and again if it comes back.
pub fn report(known: &mut BTreeSet<Problem>, current: impl Iterator<Item = Problem>) {
    let current: BTreeSet<Problem> = current.collect();
    for problem in current.difference(known) {
        let object = problem.object.as_ref();
        warn!(
            kind = object.map(|object| object.kind),
            namespace = object.and_then(|object| object.namespace.as_deref()),
            name = object.and_then(|object| object.name.as_deref()),
            file = problem.file,
            "{}",
            problem.message
        );
    }
    *known = current;
}

#[cfg(test)]
mod tests {
    use std::{
        io,
        sync::{Arc, Mutex},
    };

    use super::*;

    /// What [`report`] logs of `problems`, as the agent's log prints it.
    fn logged(problems: Vec<Problem>) -> String {
        #[derive(Clone, Default)]
        struct Log(Arc<Mutex<Vec<u8>>>);
        impl io::Write for Log {
            fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().write(bytes)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let log = Log::default();
        let writer = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .without_time()
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            report(&mut BTreeSet::new(), problems.into_iter());
        });
        let text = log.0.lock().unwrap().clone();
        String::from_utf8(text).unwrap()
    }

    fn web() -> ObjectRef {
        ObjectRef::new("Service", "shop", Some("web"))
    }

    #[test]
    fn a_problem_names_its_object_and_file_in_fields_and_message() {
        let origins = Origins::from_iter([(web(), Arc::from("shop.yaml"))]);
        let problem = Problem::about(web(), &origins, "no port".to_owned());
        assert_eq!(problem.message, "shop.yaml: no port");
        assert_eq!(problem.object, Some(web()));
        assert_eq!(problem.file.as_deref(), Some("shop.yaml"));

        let api = ObjectRef::new("Service", "shop", Some("api"));
        let from_the_api = Problem::about(api.clone(), &origins, "no port".into());
        assert_eq!(from_the_api.message, "no port");
        assert_eq!(from_the_api.object, Some(api));
        assert_eq!(from_the_api.file, None);
    }

    #[test]
    fn a_manifest_problem_keeps_its_message_object_and_file() {
        let problem = Problem::from(ManifestProblem {
            file: "shop.yaml".into(),
            object: Some(web()),
            message: "no ClusterIP".into(),
        });
        assert_eq!(problem.message, "shop.yaml: Service shop/web: no ClusterIP");
        assert_eq!(problem.object, Some(web()));
        assert_eq!(problem.file.as_deref(), Some("shop.yaml"));
    }

    #[test]
    fn a_problem_is_logged_with_its_object_and_file_as_fields() {
        let log = logged(vec![Problem {
            message: "shop.yaml: Service shop/web: no ClusterIP".into(),
            object: Some(web()),
            file: Some("shop.yaml".into()),
        }]);
        assert!(
            log.contains(
                "shop.yaml: Service shop/web: no ClusterIP kind=\"Service\" \
                 namespace=\"shop\" name=\"web\" file=\"shop.yaml\""
            ),
            "{log}"
        );
    }

    #[test]
    fn a_problem_is_reported_once_while_it_lasts() {
        let mut known = BTreeSet::new();
        let one = || [Problem::of(web(), "one".into())].into_iter();
        report(&mut known, one());
        report(&mut known, one());
        assert_eq!(known.len(), 1);
        report(&mut known, std::iter::empty());
        assert!(known.is_empty(), "a problem that went is forgotten");
    }
}
