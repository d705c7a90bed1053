//! `hull bench pod`: Kubernetes pods through containerd's CRI, as the
//! kubelet drives them, hull against runc in one run on the same node:
//! the time from RunPodSandbox to the first container's output, the time
//! of each further container of the pod (CreateContainer to its output),
//! and the host memory (PSS) of a running pod with 1, 2 and 4 containers.
//!
//! The node's containerd must have the CRI runtime handlers `hull`
//! (`runtime_type = "io.containerd.hull.v2"`) and `runc`, and its
//! `sandbox_image` imported in `k8s.io` (the README's snippet; `--image-tar`
//! and `--pause-tar` import the busybox and pause images). A pod's memory
//! is the PSS of its shim and every process under it (hull: the jailer,
//! the VMM, virtiofsd; runc: the pause and container processes).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hull_protocol::error_chain;
use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, CreateContainerRequest, ImageSpec, LinuxContainerConfig,
    LinuxContainerSecurityContext, LinuxPodSandboxConfig, LinuxSandboxSecurityContext,
    NamespaceMode, NamespaceOption, PodSandboxConfig, PodSandboxMetadata, RemovePodSandboxRequest,
    RunPodSandboxRequest, StartContainerRequest, StopPodSandboxRequest,
};
use serde::Serialize;
use tonic::transport::{Channel, Endpoint, Uri};

use super::machine::{utc_now, Machine};
use super::start::{median, CtrError, CtrTarget};

/// The pod sizes measured.
const SIZES: [usize; 3] = [1, 2, 4];
/// How long a container may take to print its first line.
const OUTPUT_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, clap::Args)]
pub struct PodBenchArgs {
    /// containerd (with the CRI plugin), its image and `ctr` (the
    /// namespace is the CRI's, `k8s.io`).
    #[command(flatten)]
    pub target: CtrTarget,
    /// The pod sandbox image's tar to import (it must be the node's
    /// `sandbox_image`): `scripts/busybox-image.py OUT --name NAME --cmd
    /// '["sleep", "2147483647"]'`.
    #[arg(long)]
    pub pause_tar: Option<PathBuf>,
    /// Pods of each size per runtime.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=5))]
    pub runs: u32,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum PodBenchError {
    #[error(transparent)]
    Ctr(#[from] CtrError),
    #[error("connecting to the CRI on {0}")]
    Connect(PathBuf, #[source] tonic::transport::Error),
    #[error("CRI {what} ({runtime})")]
    Cri {
        what: &'static str,
        runtime: String,
        #[source]
        source: tonic::Status,
    },
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("container {0} printed nothing within {OUTPUT_TIMEOUT:?}")]
    NoOutput(String),
}

/// One pod of `containers` containers under one runtime.
#[derive(Debug, Clone, Serialize)]
pub struct PodRun {
    pub runtime: String,
    pub containers: usize,
    /// RunPodSandbox to the first container's first output.
    pub first_ms: u64,
    /// Each further container: CreateContainer to its first output.
    pub further_ms: Vec<u64>,
    /// PSS of the running pod's host processes.
    pub pss_kib: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PodBenchReport {
    pub machine: Machine,
    pub date: String,
    pub runs: Vec<PodRun>,
    /// Runtimes that could not run a pod here, with the error.
    pub failures: Vec<(String, String)>,
}

const CRI_NAMESPACE: &str = "k8s.io";

struct Node<'a> {
    args: &'a PodBenchArgs,
    runtime: tokio::runtime::Runtime,
    client: RuntimeServiceClient<Channel>,
    logs: tempfile::TempDir,
}

pub fn pod_bench(
    args: &PodBenchArgs,
    progress: &mut dyn FnMut(&str),
) -> Result<PodBenchReport, PodBenchError> {
    let ctr = CtrTarget {
        namespace: CRI_NAMESPACE.into(),
        ..args.target.clone()
    };
    ctr.import_image()?;
    if let Some(tar) = &args.pause_tar {
        ctr.run(&["image", "import", &tar.display().to_string()])?;
    }
    let node = Node::connect(args)?;
    let mut runs = Vec::new();
    let mut failures = Vec::new();
    // A runtime that cannot run pods on this node is reported, and the
    // other is still measured.
    'handlers: for handler in ["hull", "runc"] {
        for containers in SIZES {
            for run in 0..args.runs {
                let measured = match node.pod(handler, containers, run) {
                    Ok(measured) => measured,
                    Err(err) => {
                        let text = error_chain(&err) + &oom_score_hint(handler);
                        progress(&format!("{handler}: {text}"));
                        failures.push((handler.to_owned(), text));
                        continue 'handlers;
                    }
                };
                progress(&format!(
                    "{handler}, {containers} container(s): first output {} ms, further {:?} ms, \
                     {} KiB PSS",
                    measured.first_ms, measured.further_ms, measured.pss_kib
                ));
                runs.push(measured);
            }
        }
    }
    Ok(PodBenchReport {
        machine: Machine::this(),
        date: utc_now(),
        runs,
        failures,
    })
}

/// The CRI gives a pod's pause container `oom_score_adj` -998; lowering a
/// score needs CAP_SYS_RESOURCE, which some hosts (this development VM)
/// do not give even to root, and runc then fails with "can't get final
/// child's PID from pipe: EOF". hull sets the score in its guest.
fn oom_score_hint(handler: &str) -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if handler == "hull" || has_sys_resource(&status) != Some(false) {
        return String::new();
    }
    " (this host gives no CAP_SYS_RESOURCE, so runc cannot lower the pause container's \
     oom_score_adj: set `restrict_oom_score_adj = true` in containerd's CRI section)"
        .into()
}

/// Whether `status` (a /proc/PID/status) has CAP_SYS_RESOURCE effective.
fn has_sys_resource(status: &str) -> Option<bool> {
    const CAP_SYS_RESOURCE: u32 = 24;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    let caps = u64::from_str_radix(hex.trim(), 16).ok()?;
    Some(caps >> CAP_SYS_RESOURCE & 1 == 1)
}

impl<'a> Node<'a> {
    fn connect(args: &'a PodBenchArgs) -> Result<Self, PodBenchError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| PodBenchError::Io {
                what: "starting an async runtime".into(),
                source,
            })?;
        let socket = args.target.address.clone();
        let connecting = socket.clone();
        let channel = runtime
            .block_on(
                Endpoint::from_static("http://[::]:50051").connect_with_connector(
                    tower::service_fn(move |_: Uri| {
                        let socket = connecting.clone();
                        async move {
                            Ok::<_, std::io::Error>(TokioIo::new(
                                tokio::net::UnixStream::connect(socket).await?,
                            ))
                        }
                    }),
                ),
            )
            .map_err(|e| PodBenchError::Connect(socket, e))?;
        let logs = tempfile::Builder::new()
            .prefix("hull-bench-pod")
            .tempdir()
            .map_err(|source| PodBenchError::Io {
                what: "a directory for the pods' logs".into(),
                source,
            })?;
        Ok(Node {
            args,
            runtime,
            client: RuntimeServiceClient::new(channel),
            logs,
        })
    }

    fn call<T>(
        &self,
        what: &'static str,
        handler: &str,
        fut: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, PodBenchError> {
        self.runtime
            .block_on(fut)
            .map(tonic::Response::into_inner)
            .map_err(|source| PodBenchError::Cri {
                what,
                runtime: handler.into(),
                source,
            })
    }

    /// One pod: started, measured, removed.
    fn pod(&self, handler: &str, containers: usize, run: u32) -> Result<PodRun, PodBenchError> {
        let name = format!("bench-{handler}-{containers}-{run}");
        let logs = self.logs.path().join(&name);
        std::fs::create_dir_all(&logs).map_err(|source| PodBenchError::Io {
            what: format!("creating {}", logs.display()),
            source,
        })?;
        let namespaces = NamespaceOption {
            network: NamespaceMode::Pod as i32,
            pid: NamespaceMode::Container as i32,
            ipc: NamespaceMode::Pod as i32,
            ..Default::default()
        };
        let config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.clone(),
                uid: format!("uid-{name}"),
                namespace: "default".into(),
                attempt: 0,
            }),
            hostname: name.clone(),
            log_directory: logs.display().to_string(),
            linux: Some(LinuxPodSandboxConfig {
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(namespaces.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut client = self.client.clone();
        let started = Instant::now();
        let pod = self
            .call(
                "RunPodSandbox",
                handler,
                client.run_pod_sandbox(RunPodSandboxRequest {
                    config: Some(config.clone()),
                    runtime_handler: handler.into(),
                }),
            )?
            .pod_sandbox_id;
        let measured = (|| {
            let mut times = Vec::new();
            for index in 0..containers {
                let begun = Instant::now();
                let container = ContainerConfig {
                    metadata: Some(ContainerMetadata {
                        name: format!("c{index}"),
                        attempt: 0,
                    }),
                    image: Some(ImageSpec {
                        image: self.args.target.image.clone(),
                        ..Default::default()
                    }),
                    command: ["sh", "-c", "echo ready; exec sleep 600"]
                        .map(String::from)
                        .to_vec(),
                    log_path: format!("c{index}.log"),
                    linux: Some(LinuxContainerConfig {
                        security_context: Some(LinuxContainerSecurityContext {
                            namespace_options: Some(namespaces.clone()),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                let id = self
                    .call(
                        "CreateContainer",
                        handler,
                        client.create_container(CreateContainerRequest {
                            pod_sandbox_id: pod.clone(),
                            config: Some(container),
                            sandbox_config: Some(config.clone()),
                        }),
                    )?
                    .container_id;
                self.call(
                    "StartContainer",
                    handler,
                    client.start_container(StartContainerRequest {
                        container_id: id.clone(),
                    }),
                )?;
                wait_for_output(&logs.join(format!("c{index}.log")), &id)?;
                let from = if index == 0 { started } else { begun };
                times.push(from.elapsed().as_millis() as u64);
            }
            std::thread::sleep(Duration::from_secs(2));
            Ok::<_, PodBenchError>((times, pod_pss_kib(&pod)))
        })();
        let mut client = self.client.clone();
        let _ = self.call(
            "StopPodSandbox",
            handler,
            client.stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: pod.clone(),
            }),
        );
        self.call(
            "RemovePodSandbox",
            handler,
            client.remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: pod.clone(),
            }),
        )?;
        let (times, pss_kib) = measured?;
        Ok(PodRun {
            runtime: handler.into(),
            containers,
            first_ms: times[0],
            further_ms: times[1..].to_vec(),
            pss_kib,
        })
    }
}

/// Waits until the CRI log file at `path` has a line.
fn wait_for_output(path: &Path, id: &str) -> Result<(), PodBenchError> {
    let deadline = Instant::now() + OUTPUT_TIMEOUT;
    while Instant::now() < deadline {
        if std::fs::read_to_string(path).is_ok_and(|text| text.contains("ready")) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(PodBenchError::NoOutput(id.into()))
}

/// The PSS of the pod's shim (started as `-id <pod id>`) and every process
/// under it.
fn pod_pss_kib(pod: &str) -> u64 {
    let shims = super::start::processes_with(&format!("-id {pod}"));
    let mut todo: Vec<u32> = shims.into_iter().map(|(pid, _)| pid).collect();
    let mut seen = std::collections::BTreeSet::new();
    while let Some(pid) = todo.pop() {
        if !seen.insert(pid) {
            continue;
        }
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten();
        for task in tasks.filter_map(Result::ok) {
            let children =
                std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            todo.extend(
                children
                    .split_whitespace()
                    .filter_map(|c| c.parse::<u32>().ok()),
            );
        }
    }
    seen.into_iter().map(super::start::pss_kib).sum()
}

pub fn render(report: &PodBenchReport) -> String {
    let m = &report.machine;
    let mut out = format!(
        "hull bench pod — machine: {} ({} cores), host Linux {}, {} — {}\n\
         RunPodSandbox to the first container's output; CreateContainer to each further \
         container's output; PSS of a running pod\n\n{:<6} {:>10} {:>16} {:>22} {:>12}\n",
        m.cpu_model,
        m.cores,
        m.host_kernel,
        m.kvm(),
        report.date,
        "",
        "containers",
        "first output ms",
        "further (median) ms",
        "PSS MiB"
    );
    for runtime in ["hull", "runc"] {
        for size in SIZES {
            let runs: Vec<&PodRun> = report
                .runs
                .iter()
                .filter(|r| r.runtime == runtime && r.containers == size)
                .collect();
            if runs.is_empty() {
                continue;
            }
            let first = median(&runs.iter().map(|r| r.first_ms).collect::<Vec<_>>());
            let further: Vec<u64> = runs.iter().flat_map(|r| r.further_ms.clone()).collect();
            let pss = median(&runs.iter().map(|r| r.pss_kib).collect::<Vec<_>>());
            out.push_str(&format!(
                "{runtime:<6} {size:>10} {first:>16} {:>22} {:>12.1}\n",
                if further.is_empty() {
                    "-".to_owned()
                } else {
                    median(&further).to_string()
                },
                pss as f64 / 1024.0
            ));
        }
    }
    for (runtime, error) in &report.failures {
        out.push_str(&format!("{runtime:<6} failed: {error}\n"));
    }
    let pick = |runtime: &str, size: usize| {
        report
            .runs
            .iter()
            .find(|r| r.runtime == runtime && r.containers == size)
    };
    if let (Some(hull), Some(runc)) = (pick("hull", 1), pick("runc", 1)) {
        out.push_str(&format!(
            "\nhull / runc, one container: first output x{:.0}, PSS x{:.1}\n",
            hull.first_ms as f64 / runc.first_ms.max(1) as f64,
            hull.pss_kib as f64 / runc.pss_kib.max(1) as f64
        ));
    }
    if let (Some(one), Some(four)) = (pick("hull", 1), pick("hull", 4)) {
        out.push_str(&format!(
            "hull: each container beyond the first adds {:.1} MiB PSS (the pod's fixed overhead \
             is the one-container pod's)\n",
            (four.pss_kib as f64 - one.pss_kib as f64) / 3.0 / 1024.0
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_a_line_per_runtime_and_size_with_ratios() {
        let run = |runtime: &str, containers, first_ms, pss_kib| PodRun {
            runtime: runtime.into(),
            containers,
            first_ms,
            further_ms: vec![first_ms / 2; containers - 1],
            pss_kib,
        };
        let report = PodBenchReport {
            machine: Machine::this(),
            date: "now".into(),
            runs: vec![
                run("hull", 1, 10_000, 20 * 1024),
                run("hull", 4, 10_000, 32 * 1024),
                run("runc", 1, 100, 4 * 1024),
            ],
            failures: vec![("crun".into(), "no such handler".into())],
        };
        let text = render(&report);
        assert!(text.contains("first output x100, PSS x5.0"), "{text}");
        assert!(text.contains("adds 4.0 MiB"), "{text}");
        assert!(text.contains("crun   failed: no such handler"), "{text}");
        let four = text
            .lines()
            .find(|l| l.starts_with("hull") && l.contains(" 4 "))
            .unwrap();
        assert!(four.contains("5000"), "{four}");
    }

    #[test]
    fn cap_sys_resource_is_read_from_the_effective_set() {
        let status = |eff: &str| format!("CapInh:\t0\nCapEff:\t{eff}\nCapBnd:\t0\n");
        assert_eq!(has_sys_resource(&status("000001ffffffffff")), Some(true));
        // This development VM: every capability but CAP_SYS_RESOURCE.
        assert_eq!(has_sys_resource(&status("000001fffeffffff")), Some(false));
        assert_eq!(has_sys_resource("Name:\tx\n"), None);
    }
}
