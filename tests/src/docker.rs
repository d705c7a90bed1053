//! A private Docker 26 for one test, on a private containerd 1.7: data,
//! exec root and sockets under the test's directory, no bridge and no
//! iptables (the host firewall is never touched), the hull runtime
//! registered as `hull` (with the test's hull config) next to the runtime
//! name users type, `io.containerd.hull.v2`.
//!
//! Binaries: `$HULL_DOCKERD` and `$HULL_DOCKER` (trixie's, extracted by
//! scripts/engines.sh), containerd as in [`crate::containerd`].

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::Duration;

use crate::containerd::{kill_and_reap, wait_output, Containerd, Engine, CTR_TIMEOUT, IMAGE};
use crate::poll::try_poll_until;
use crate::{prereq, terminal};

/// The image as Docker names it.
pub const DOCKER_IMAGE: &str = "busybox:hull";

/// A running private dockerd and the containerd under it.
pub struct Docker {
    // Dropped after the daemon: dockerd first, then containerd.
    daemon: Option<Child>,
    dir: PathBuf,
    socket: PathBuf,
    containerd: Containerd,
}

impl Docker {
    /// Start containerd 1.7 and dockerd under `dir` and load the busybox image.
    pub fn start(dir: &Path) -> Self {
        Self::start_with(dir, false)
    }

    /// [`Self::start`] with Docker's networking on: the default bridge,
    /// iptables (NAT for published ports), no userland proxy. Call it in a
    /// private network namespace ([`crate::netns::enter_private`]): the
    /// bridge and the rules go with it.
    pub fn start_networked(dir: &Path) -> Self {
        prereq::host_tool("iptables", "iptables");
        Self::start_with(dir, true)
    }

    fn start_with(dir: &Path, networked: bool) -> Self {
        let dockerd = prereq::file_from_env(
            "HULL_DOCKERD",
            "dockerd 26 (trixie, extracted)",
            "source scripts/common.sh scripts/engines.sh; install_trixie_engines",
        );
        let containerd = Containerd::start(Engine::Containerd17, dir);
        let socket = dir.join("d.sock");
        let mut config = serde_json::json!({
            "userland-proxy": false,
            "iptables": networked,
            "ip6tables": false,
            "containerd": containerd.socket(),
            "data-root": dir.join("docker"),
            "exec-root": dir.join("docker-exec"),
            "pidfile": dir.join("docker.pid"),
            "hosts": [format!("unix://{}", socket.display())],
            "runtimes": {
                "hull": {
                    "runtimeType": crate::containerd::RUNTIME,
                    "options": { "ConfigPath": containerd.hull_config_path() }
                }
            }
        });
        if !networked {
            config["bridge"] = "none".into();
        }
        let config_path = dir.join("daemon.json");
        std::fs::write(&config_path, config.to_string()).expect("write daemon.json");
        let log = std::fs::File::create(dir.join("dockerd.log")).expect("dockerd log");
        let daemon = Command::new(dockerd)
            .arg("--config-file")
            .arg(&config_path)
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("start dockerd");
        let mut docker = Docker {
            daemon: Some(daemon),
            dir: dir.to_path_buf(),
            socket,
            containerd,
        };
        docker.wait_ready();
        let image = dir.join("busybox.tar");
        let out = docker.docker(&["load", "-i", image.to_str().expect("utf-8 path")]);
        assert!(out.status.success(), "docker load: {out:?}");
        let out = docker.docker(&["image", "inspect", DOCKER_IMAGE]);
        assert!(
            out.status.success(),
            "{DOCKER_IMAGE} not loaded ({IMAGE}): {out:?}"
        );
        docker
    }

    fn wait_ready(&mut self) {
        let answered = try_poll_until(Duration::from_secs(60), Duration::from_millis(200), || {
            if let Some(daemon) = self.daemon.as_mut() {
                if let Ok(Some(status)) = daemon.try_wait() {
                    panic!("dockerd exited at start ({status}):\n{}", self.log());
                }
            }
            if self.socket.exists() && self.docker(&["version"]).status.success() {
                Ok(())
            } else {
                Err(())
            }
        });
        if answered.is_err() {
            panic!("dockerd did not answer within 60 s:\n{}", self.log());
        }
    }

    /// dockerd's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
    }

    /// The containerd under this Docker.
    pub fn containerd(&self) -> &Containerd {
        &self.containerd
    }

    /// `docker -H unix://SOCK ARGS...`, bounded.
    pub fn docker(&self, args: &[&str]) -> Output {
        self.docker_with_stdin(args, None)
    }

    /// `docker -H unix://SOCK ARGS...`, its stdio not yet set.
    fn command(&self, args: &[&str]) -> Command {
        let cli = prereq::file_from_env(
            "HULL_DOCKER",
            "the docker CLI (trixie, extracted)",
            "source scripts/common.sh scripts/engines.sh; install_trixie_engines",
        );
        let mut command = Command::new(cli);
        command
            .arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .args(args)
            .env("DOCKER_CONFIG", self.dir.join("docker-cli"));
        command
    }

    /// `docker ARGS...` with its stdio on a new pseudo-terminal of
    /// `rows` x `columns`, as typed in a user's terminal (for `run -it`).
    /// Returns its exit status and everything that reached the terminal.
    pub fn docker_in_terminal(&self, args: &[&str], size: (u16, u16)) -> (ExitStatus, String) {
        let what = format!("docker {}", args.join(" "));
        terminal::run(self.command(args), size, CTR_TIMEOUT, &what)
    }

    /// [`Self::docker`] with `input` on stdin (then closed).
    pub fn docker_with_stdin(&self, args: &[&str], input: Option<&[u8]>) -> Output {
        let mut child = self
            .command(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run docker");
        if let Some(input) = input {
            use std::io::Write;
            let mut stdin = child.stdin.take().expect("docker stdin");
            stdin.write_all(input).expect("write docker stdin");
        }
        wait_output(child, CTR_TIMEOUT, &format!("docker {}", args.join(" ")))
    }

    /// No container left in Docker, and nothing left by the shim.
    pub fn assert_nothing_left(&self) {
        let ps = self.docker(&["ps", "-aq"]);
        assert_eq!(
            String::from_utf8_lossy(&ps.stdout).trim(),
            "",
            "containers left in Docker"
        );
        let dockerd: Vec<u32> = self.daemon.iter().map(Child::id).collect();
        self.containerd.assert_no_shim_leftovers_but(&dockerd);
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        if let Some(daemon) = self.daemon.take() {
            kill_and_reap(daemon);
        }
        // containerd's Drop (next) kills shims and VMMs naming the dir.
    }
}
