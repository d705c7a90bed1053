//! Container checks (C*): the shim's spec policy applied to a container's
//! OCI spec, read from a bundle, a containerd task or a Docker container.

use std::path::{Path, PathBuf};

use hull_sandbox::policy::{self, PolicyConfig, Severity};
use hull_sandbox::spec::{self, Spec, SpecError};

use super::{CheckResult, Verdict};

/// Where a container's spec comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// An OCI bundle directory (with config.json).
    Bundle(PathBuf),
    /// A containerd task: `<state>/io.containerd.runtime.v2.task/<ns>/<id>`.
    Task {
        namespace: String,
        id: String,
        state_dir: PathBuf,
    },
    /// A Docker container (namespace `moby`), by id or unique id prefix.
    Docker { id: String, state_dir: PathBuf },
}

#[derive(Debug, thiserror::Error)]
pub enum ContainerCheckError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("no Docker container {id:?} running under containerd (looked in {dir})")]
    NoDockerContainer { id: String, dir: PathBuf },
    #[error("Docker container id {id:?} is ambiguous: {matches:?}")]
    Ambiguous { id: String, matches: Vec<String> },
}

fn task_dir(state_dir: &Path, namespace: &str) -> PathBuf {
    state_dir
        .join("io.containerd.runtime.v2.task")
        .join(namespace)
}

/// The bundle directory of `source`.
pub fn bundle_of(source: &Source) -> Result<PathBuf, ContainerCheckError> {
    match source {
        Source::Bundle(dir) => Ok(dir.clone()),
        Source::Task {
            namespace,
            id,
            state_dir,
        } => Ok(task_dir(state_dir, namespace).join(id)),
        Source::Docker { id, state_dir } => {
            let dir = task_dir(state_dir, "moby");
            let matches: Vec<String> = std::fs::read_dir(&dir)
                .map(|entries| {
                    entries
                        .filter_map(Result::ok)
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .filter(|name| name.starts_with(id.as_str()))
                        .collect()
                })
                .unwrap_or_default();
            match matches.as_slice() {
                [one] => Ok(dir.join(one)),
                [] => Err(ContainerCheckError::NoDockerContainer {
                    id: id.clone(),
                    dir,
                }),
                _ => Err(ContainerCheckError::Ambiguous {
                    id: id.clone(),
                    matches,
                }),
            }
        }
    }
}

/// The spec of a bundle, task or Docker container, parsed as the shim
/// parses it.
pub fn load_spec(source: &Source) -> Result<Spec, ContainerCheckError> {
    Ok(spec::load(&bundle_of(source)?.join("config.json"))?)
}

/// One result per finding, and a PASS for every rule nothing matched.
pub fn run(spec: &Spec, config: &PolicyConfig) -> Vec<CheckResult> {
    let findings = policy::review(spec, config);
    let mut results = Vec::new();
    for (id, title) in policy::RULES {
        let matched: Vec<_> = findings.iter().filter(|f| f.id == *id).collect();
        if matched.is_empty() {
            results.push(CheckResult::new(id, title, Verdict::Pass, "ok", ""));
        }
        for f in matched {
            let verdict = match f.severity {
                Severity::Refuse => Verdict::Fail,
                Severity::Warn => Verdict::Warn,
                Severity::Info => Verdict::Info,
            };
            results.push(CheckResult::new(
                id,
                title,
                verdict,
                format!("{}: {}", f.field, f.message),
                f.remedy,
            ));
        }
    }
    results
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn docker_ids_resolve_by_unique_prefix() {
        let state = tempfile::tempdir().unwrap();
        let moby = task_dir(state.path(), "moby");
        for id in ["abc123", "abd456"] {
            std::fs::create_dir_all(moby.join(id)).unwrap();
        }
        let docker = |id: &str| Source::Docker {
            id: id.into(),
            state_dir: state.path().into(),
        };
        assert_eq!(bundle_of(&docker("abc")).unwrap(), moby.join("abc123"));
        assert!(matches!(
            bundle_of(&docker("ab")),
            Err(ContainerCheckError::Ambiguous { .. })
        ));
        let err = bundle_of(&docker("zzz")).unwrap_err().to_string();
        assert!(err.contains("zzz"), "{err}");
    }

    #[test]
    fn host_network_fails_and_every_rule_is_listed() {
        let spec = json!({"linux": {"namespaces": [{"type": "pid"}, {"type": "ipc"}]}});
        let spec = spec::parse(spec.to_string().as_bytes()).unwrap();
        let results = run(&spec, &PolicyConfig::default());
        let net = results.iter().find(|r| r.id == "C1.3").unwrap();
        assert_eq!(net.verdict, Verdict::Fail);
        assert!(!net.remedy.is_empty());
        for (id, _) in policy::RULES {
            assert!(results.iter().any(|r| r.id == *id), "{id} not reported");
        }
    }
}
