//! containerd 1.7's CRI plugin, driven as a kubelet drives it: a private
//! containerd set up as a Kubernetes node ([`Containerd::start_cri`]), the
//! busybox image and a pod sandbox ("pause") image built here and imported
//! into the CRI's `k8s.io` namespace, and the CRI v1 runtime service over
//! gRPC on containerd's socket (the `k8s-cri` crate's generated client).
//! Every call is bounded by [`CRI_TIMEOUT`].

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, ContainerStatusRequest, CreateContainerRequest,
    ExecSyncRequest, ImageSpec, LinuxContainerConfig, LinuxContainerResources,
    LinuxContainerSecurityContext, LinuxPodSandboxConfig, LinuxSandboxSecurityContext, Mount,
    NamespaceMode, NamespaceOption, PodSandboxConfig, PodSandboxMetadata, RemoveContainerRequest,
    RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest, StopContainerRequest,
    StopPodSandboxRequest,
};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::containerd::{Containerd, IMAGE};

/// The namespace the CRI keeps its containers and images in.
pub const CRI_NAMESPACE: &str = "k8s.io";
/// The pod sandbox image the tests build (busybox sleeping).
pub const PAUSE_IMAGE: &str = "docker.io/library/pause:hull";
/// The runtime handler hull is registered as.
pub const HANDLER: &str = "hull";
/// How long one CRI call may take (a pod's VM boots in RunPodSandbox).
pub const CRI_TIMEOUT: Duration = Duration::from_secs(240);

/// A container's state and exit code, from ContainerStatus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// `CONTAINER_CREATED`, `CONTAINER_RUNNING`, `CONTAINER_EXITED`, ...
    pub state: String,
    pub exit_code: i32,
    pub reason: String,
}

/// What ExecSync returned.
#[derive(Debug, Clone)]
pub struct Exec {
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// What a container gets beyond the defaults: a memory limit, host
/// directories mounted read-write (host path, container path).
#[derive(Default)]
pub struct Extra<'a> {
    pub memory_bytes: Option<i64>,
    pub mounts: &'a [(&'a Path, &'a str)],
}

pub struct Cri {
    pub containerd: Containerd,
    runtime: tokio::runtime::Runtime,
    client: RuntimeServiceClient<Channel>,
    dir: std::path::PathBuf,
}

impl Cri {
    /// containerd with its CRI plugin, the images imported, a client
    /// connected.
    pub fn start(dir: &Path) -> Self {
        let containerd = Containerd::start_cri(dir, PAUSE_IMAGE);
        let busybox = dir.join("busybox-cri.tar");
        let pause = dir.join("pause.tar");
        build_image(&busybox, IMAGE, None);
        build_image(&pause, PAUSE_IMAGE, Some(r#"["sleep", "2147483647"]"#));
        for tar in [&busybox, &pause] {
            let out = containerd.ctr_in(
                CRI_NAMESPACE,
                &["image", "import", tar.to_str().expect("utf-8")],
            );
            assert!(out.status.success(), "ctr -n k8s.io image import: {out:?}");
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let socket = containerd.socket().to_path_buf();
        let channel = runtime
            .block_on(
                Endpoint::try_from("http://[::]:50051")
                    .expect("an endpoint")
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let socket = socket.clone();
                        async move {
                            Ok::<_, std::io::Error>(TokioIo::new(
                                tokio::net::UnixStream::connect(socket).await?,
                            ))
                        }
                    })),
            )
            .expect("connecting to containerd's CRI");
        Cri {
            containerd,
            runtime,
            client: RuntimeServiceClient::new(channel),
            dir: dir.to_path_buf(),
        }
    }

    fn call<T, F>(&self, what: &str, fut: F) -> Result<T, tonic::Status>
    where
        F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        match self
            .runtime
            .block_on(async { tokio::time::timeout(CRI_TIMEOUT, fut).await })
        {
            Ok(result) => result.map(tonic::Response::into_inner),
            Err(_) => panic!("CRI {what}: no answer within {CRI_TIMEOUT:?}"),
        }
    }

    /// A pod's config: `name` in namespace `default`, its logs in the
    /// test's directory, and the pod's resources (the sum of its limits, as
    /// the kubelet gives them) when `memory_bytes` is set.
    pub fn pod_config(&self, name: &str, memory_bytes: Option<i64>) -> PodSandboxConfig {
        let logs = self.dir.join("pod-logs").join(name);
        std::fs::create_dir_all(&logs).expect("pod log directory");
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{name}"),
                namespace: "default".into(),
                attempt: 0,
            }),
            hostname: name.into(),
            log_directory: logs.display().to_string(),
            linux: Some(LinuxPodSandboxConfig {
                resources: memory_bytes.map(|bytes| LinuxContainerResources {
                    memory_limit_in_bytes: bytes,
                    ..Default::default()
                }),
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(namespaces()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// RunPodSandbox with the `hull` handler: the pod's id.
    pub fn run_pod(&self, config: &PodSandboxConfig) -> Result<String, tonic::Status> {
        let request = RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: HANDLER.into(),
        };
        let mut client = self.client.clone();
        let id = self
            .call("RunPodSandbox", client.run_pod_sandbox(request))?
            .pod_sandbox_id;
        self.containerd.own_in(CRI_NAMESPACE, &id);
        Ok(id)
    }

    /// CreateContainer of busybox running `command` in pod `pod`.
    pub fn create_container(
        &self,
        pod: &str,
        pod_config: &PodSandboxConfig,
        name: &str,
        attempt: u32,
        command: &[&str],
    ) -> Result<String, tonic::Status> {
        let extra = Extra::default();
        self.create_with(pod, pod_config, (name, attempt), &extra, command)
    }

    /// Like [`Cri::create_container`], with a memory limit and host
    /// mounts.
    pub fn create_with(
        &self,
        pod: &str,
        pod_config: &PodSandboxConfig,
        (name, attempt): (&str, u32),
        extra: &Extra,
        command: &[&str],
    ) -> Result<String, tonic::Status> {
        let resources = extra
            .memory_bytes
            .map(|memory_limit_in_bytes| LinuxContainerResources {
                memory_limit_in_bytes,
                ..Default::default()
            });
        let mounts = extra
            .mounts
            .iter()
            .map(|(host, container)| Mount {
                host_path: host.display().to_string(),
                container_path: (*container).to_owned(),
                ..Default::default()
            })
            .collect();
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: name.into(),
                attempt,
            }),
            image: Some(ImageSpec {
                image: IMAGE.into(),
                ..Default::default()
            }),
            command: command.iter().map(|s| (*s).to_owned()).collect(),
            mounts,
            log_path: format!("{name}-{attempt}.log"),
            linux: Some(LinuxContainerConfig {
                security_context: Some(LinuxContainerSecurityContext {
                    namespace_options: Some(namespaces()),
                    ..Default::default()
                }),
                resources,
            }),
            ..Default::default()
        };
        let request = CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(config),
            sandbox_config: Some(pod_config.clone()),
        };
        let mut client = self.client.clone();
        let id = self
            .call("CreateContainer", client.create_container(request))?
            .container_id;
        self.containerd.own_in(CRI_NAMESPACE, &id);
        Ok(id)
    }

    pub fn start_container(&self, id: &str) -> Result<(), tonic::Status> {
        let mut client = self.client.clone();
        let request = StartContainerRequest {
            container_id: id.into(),
        };
        self.call("StartContainer", client.start_container(request))
            .map(drop)
    }

    /// ExecSync of `cmd` in container `id`.
    pub fn exec(&self, id: &str, cmd: &[&str]) -> Result<Exec, tonic::Status> {
        let mut client = self.client.clone();
        let request = ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| (*s).to_owned()).collect(),
            timeout: 60,
        };
        let out = self.call("ExecSync", client.exec_sync(request))?;
        Ok(Exec {
            exit_code: out.exit_code,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    pub fn status(&self, id: &str) -> Result<Status, tonic::Status> {
        let mut client = self.client.clone();
        let request = ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        };
        let status = self
            .call("ContainerStatus", client.container_status(request))?
            .status
            .unwrap_or_default();
        let state = k8s_cri::v1::ContainerState::try_from(status.state)
            .map(|s| s.as_str_name().to_owned())
            .unwrap_or_else(|_| format!("state {}", status.state));
        Ok(Status {
            state,
            exit_code: status.exit_code,
            reason: status.reason,
        })
    }

    pub fn stop_container(&self, id: &str) -> Result<(), tonic::Status> {
        let mut client = self.client.clone();
        let request = StopContainerRequest {
            container_id: id.into(),
            timeout: 5,
        };
        self.call("StopContainer", client.stop_container(request))
            .map(drop)
    }

    pub fn remove_container(&self, id: &str) -> Result<(), tonic::Status> {
        let mut client = self.client.clone();
        let request = RemoveContainerRequest {
            container_id: id.into(),
        };
        self.call("RemoveContainer", client.remove_container(request))
            .map(drop)
    }

    /// StopPodSandbox then RemovePodSandbox.
    pub fn remove_pod(&self, id: &str) -> Result<(), tonic::Status> {
        let mut client = self.client.clone();
        let stop = StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        };
        self.call("StopPodSandbox", client.stop_pod_sandbox(stop))?;
        let remove = RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
        };
        self.call("RemovePodSandbox", client.remove_pod_sandbox(remove))
            .map(drop)
    }

    /// No pod or container left in the CRI, and nothing of hull's.
    pub fn assert_nothing_left(&self) {
        for what in ["containers", "tasks"] {
            let out = self.containerd.ctr_in(CRI_NAMESPACE, &[what, "ls", "-q"]);
            assert_eq!(
                String::from_utf8_lossy(&out.stdout).trim(),
                "",
                "{what} left in containerd's k8s.io namespace"
            );
        }
        self.containerd.assert_no_shim_leftovers();
    }
}

/// The kubelet's namespaces for a pod without `shareProcessNamespace`: the
/// pod's network and IPC, a PID namespace per container (the CRI's zero
/// value would share the pod's).
fn namespaces() -> NamespaceOption {
    NamespaceOption {
        network: NamespaceMode::Pod as i32,
        pid: NamespaceMode::Container as i32,
        ipc: NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// An image tar of busybox named `name` (with command `cmd`, JSON).
fn build_image(out: &Path, name: &str, cmd: Option<&str>) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/busybox-image.py");
    let mut command = Command::new("python3");
    command.arg(&script).arg(out).arg("--name").arg(name);
    if let Some(cmd) = cmd {
        command.arg("--cmd").arg(cmd);
    }
    let built = command.output().expect("run scripts/busybox-image.py");
    assert!(built.status.success(), "building {name}: {built:?}");
}
