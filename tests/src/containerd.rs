//! A private containerd for one test: its own root, state and sockets under
//! the test's directory, `containerd-shim-hull-v2` on its PATH, the busybox
//! test image imported, and `ctr` to drive it. Dropping it kills the
//! daemon; [`Containerd::assert_nothing_left`] is the leak check every e2e
//! test ends with.
//!
//! Which containerd: `$HULL_CONTAINERD_16` (bookworm's 1.6) or
//! `$HULL_CONTAINERD_17` (trixie's 1.7, extracted by scripts/engines.sh);
//! `ctr` from the same place. The shim is `$HULL_SHIM`, its config points
//! at `$HULL_VMM`, `$HULL_KERNEL` and `$HULL_INITRAMFS`.

use std::collections::BTreeSet;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use sha2::{Digest, Sha256};

use hull_sandbox::share::SHARE_BASE;
use hull_sandbox::state::SANDBOX_STATE_BASE;

use crate::leaks;
use crate::poll::try_poll_until;
use crate::prereq;
use crate::terminal;

/// The runtime name users pass to `ctr run --runtime`.
pub const RUNTIME: &str = "io.containerd.hull.v2";
/// The image `scripts/busybox-image.py` builds.
pub const IMAGE: &str = "docker.io/library/busybox:hull";
/// The containerd namespace the tests use.
pub const NAMESPACE: &str = "hull-test";
/// How long one `ctr` command may take: a VM boot is 15–30 s here.
pub const CTR_TIMEOUT: Duration = Duration::from_secs(180);
/// Where containerd 0.11-style shims put their sockets, whatever the config.
pub const SHIM_SOCKET_DIR: &str = "/run/containerd/s";
/// How long containerd may take to stop on SIGTERM before it is killed.
const DAEMON_STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Which containerd to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// Debian bookworm's containerd 1.6.
    Containerd16,
    /// Debian trixie's containerd 1.7 (extracted, not installed).
    Containerd17,
}

impl Engine {
    fn daemon(self) -> PathBuf {
        match self {
            Engine::Containerd16 => prereq::file_from_env(
                "HULL_CONTAINERD_16",
                "containerd 1.6 (bookworm)",
                "apt-get install containerd; HULL_CONTAINERD_16=/usr/bin/containerd",
            ),
            Engine::Containerd17 => prereq::file_from_env(
                "HULL_CONTAINERD_17",
                "containerd 1.7 (trixie, extracted)",
                "source scripts/common.sh scripts/engines.sh; install_trixie_engines",
            ),
        }
    }

    fn ctr(self) -> PathBuf {
        // ctr lives next to its containerd.
        let ctr = self.daemon().with_file_name("ctr");
        assert!(ctr.is_file(), "no ctr next to {}", self.daemon().display());
        ctr
    }
}

/// A running private containerd.
pub struct Containerd {
    engine: Engine,
    daemon: Option<Child>,
    dir: PathBuf,
    socket: PathBuf,
    config: PathBuf,
    containerd_config: PathBuf,
    shim_sockets_before: Vec<String>,
    /// Shared directories (`/run/hull/shares/*`) that existed at the start.
    shares_before: Vec<String>,
    /// The containers started through [`Self::run`] and friends: their
    /// sandbox state directories and host cgroups must be gone at the end.
    ids: Mutex<Vec<(String, String)>>,
}

impl Containerd {
    /// Start containerd `engine` with everything under `dir` (keep it short:
    /// socket paths), and import the busybox image.
    pub fn start(engine: Engine, dir: &Path) -> Self {
        Self::start_with(engine, dir, "")
    }

    /// containerd 1.7 as [`Self::start`], with its `blockfile` snapshotter
    /// on: every snapshot an ext4 image file (copied from a 64 MiB scratch
    /// image made here), mounted with `loop`.
    pub fn start_with_blockfile(dir: &Path) -> Self {
        let scratch = dir.join("blockfile-scratch.img");
        std::fs::File::create(&scratch)
            .and_then(|f| f.set_len(64 << 20))
            .expect("create the blockfile scratch image");
        let mkfs = Command::new(prereq::host_tool("mkfs.ext4", "e2fsprogs"))
            .args(["-q", "-F", "-O", "^has_journal"])
            .arg(&scratch)
            .output()
            .expect("run mkfs.ext4");
        assert!(mkfs.status.success(), "mkfs.ext4 scratch: {mkfs:?}");
        let plugin = format!(
            "[plugins.\"io.containerd.snapshotter.v1.blockfile\"]\n  \
             scratch_file = \"{}\"\n  fs_type = \"ext4\"\n  mount_options = []\n  \
             recreate_scratch = false\n",
            scratch.display()
        );
        Self::start_with(Engine::Containerd17, dir, &plugin)
    }

    /// containerd 1.7 as [`Self::start`], with its CRI plugin set up as a
    /// Kubernetes node's: runtime handlers `runc` and `hull` (`runtime_type
    /// = "io.containerd.hull.v2"`), the pod sandbox image `sandbox_image`,
    /// CNI from /etc/cni/net.d (`install_cni`). The CRI answers on
    /// containerd's own socket ([`Self::socket`]).
    pub fn start_cri(dir: &Path, sandbox_image: &str) -> Self {
        let cri = format!(
            "  sandbox_image = \"{sandbox_image}\"\n\
             [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  default_runtime_name = \"runc\"\n\
             [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n  \
             runtime_type = \"io.containerd.runc.v2\"\n\
             [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.hull]\n  \
             runtime_type = \"{RUNTIME}\"\n\
             [plugins.\"io.containerd.grpc.v1.cri\".cni]\n  bin_dir = \"/opt/cni/bin\"\n  \
             conf_dir = \"/etc/cni/net.d\"\n"
        );
        Self::start_with(Engine::Containerd17, dir, &cri)
    }

    /// [`Self::start`] with `extra` appended to containerd's config.
    fn start_with(engine: Engine, dir: &Path, extra: &str) -> Self {
        let shim = prereq::file_from_env(
            "HULL_SHIM",
            "containerd-shim-hull-v2",
            "cargo build -p hull-shim; HULL_SHIM=target/debug/containerd-shim-hull-v2",
        );
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).expect("create bin dir");
        symlink(&shim, bin.join("containerd-shim-hull-v2")).expect("link the shim");

        let config = dir.join("hull.toml");
        std::fs::write(&config, hull_config()).expect("write hull config");

        let socket = dir.join("c.sock");
        let containerd_config = dir.join("containerd.toml");
        std::fs::write(
            &containerd_config,
            format!(
                "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
                 [grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n\
                 [plugins.\"io.containerd.grpc.v1.cri\"]\n  disable_tcp_service = true\n{extra}",
                root = dir.join("root").display(),
                state = dir.join("state").display(),
                sock = socket.display()
            ),
        )
        .expect("write containerd config");
        let shim_sockets_before = crate::dir_entries(Path::new(SHIM_SOCKET_DIR));
        let shares_before = crate::dir_entries(Path::new(SHARE_BASE));
        let mut containerd = Containerd {
            engine,
            daemon: None,
            dir: dir.to_path_buf(),
            socket,
            config,
            containerd_config,
            shim_sockets_before,
            shares_before,
            ids: Mutex::new(Vec::new()),
        };
        containerd.daemon = Some(containerd.spawn_daemon());
        containerd.wait_ready();
        containerd.import_busybox();
        containerd
    }

    /// Starts the daemon on this instance's config; its output is appended
    /// to `containerd.log` (a restart keeps the log of the run before).
    fn spawn_daemon(&self) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("containerd.log"))
            .expect("containerd log");
        let path = format!(
            "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            self.dir.join("bin").display()
        );
        Command::new(self.engine.daemon())
            .arg("--config")
            .arg(&self.containerd_config)
            .env("PATH", path)
            // For runtimes named without options (`docker run --runtime
            // io.containerd.hull.v2`): the shim falls back to $HULL_CONFIG.
            .env("HULL_CONFIG", &self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("start containerd")
    }

    /// Stops containerd the way a service manager restarts it (SIGTERM,
    /// SIGKILL if it has not exited within 30 s) and starts it again on the
    /// same root, state and sockets. Shims and their VMs keep running in
    /// between; the new daemon reconnects to them.
    pub fn restart(&mut self) {
        if let Some(daemon) = self.daemon.take() {
            terminate_and_reap(daemon, DAEMON_STOP_TIMEOUT);
        }
        self.daemon = Some(self.spawn_daemon());
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let answered = try_poll_until(Duration::from_secs(30), Duration::from_millis(100), || {
            if let Some(daemon) = self.daemon.as_mut() {
                if let Ok(Some(status)) = daemon.try_wait() {
                    panic!("containerd exited at start ({status}):\n{}", self.log());
                }
            }
            if self.socket.exists() && self.ctr(&["version"]).status.success() {
                Ok(())
            } else {
                Err(())
            }
        });
        if answered.is_err() {
            panic!("containerd did not answer within 30 s:\n{}", self.log());
        }
    }

    fn import_busybox(&self) {
        let image = self.dir.join("busybox.tar");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/busybox-image.py");
        let out = Command::new("python3")
            .arg(&script)
            .arg(&image)
            .arg("--name")
            .arg(IMAGE)
            .output()
            .expect("run scripts/busybox-image.py");
        assert!(
            out.status.success(),
            "building the busybox image: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = self.ctr(&["image", "import", image.to_str().expect("utf-8 path")]);
        assert!(
            out.status.success(),
            "ctr image import: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// containerd's gRPC socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The hull config file the shim is given (`--runtime-config-path`).
    pub fn hull_config_path(&self) -> &Path {
        &self.config
    }

    /// Gives the guests `limit` to boot to a ready agent (the shim's
    /// `boot_timeout_secs`) in the containers created from now on.
    pub fn set_boot_timeout(&self, limit: Duration) {
        let config = format!("{}boot_timeout_secs = {}\n", hull_config(), limit.as_secs());
        std::fs::write(&self.config, config).expect("rewrite the hull config");
    }

    /// Boots the guests of the containers created from now on with
    /// `initramfs` instead of the product one.
    pub fn set_initramfs(&self, initramfs: &Path) {
        let product = prereq::agent_initramfs();
        let config = hull_config().replace(
            &format!("initramfs = \"{}\"", product.display()),
            &format!("initramfs = \"{}\"", initramfs.display()),
        );
        assert_ne!(config, hull_config(), "the hull config names an initramfs");
        std::fs::write(&self.config, config).expect("rewrite the hull config");
    }

    /// Replaces the hull config the containers created from now on get
    /// (start from [`hull_config`]).
    pub fn set_hull_config(&self, text: &str) {
        std::fs::write(&self.config, text).expect("rewrite the hull config");
    }

    /// containerd's own log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    /// Counts container `id`, started by a raw [`Self::ctr`] call, as this
    /// test's: the leak checks then look at its shim socket only, not at
    /// those of tests running beside it.
    pub fn own(&self, id: &str) {
        self.own_in(NAMESPACE, id);
    }

    /// [`Self::own`] for a container of containerd namespace `namespace`
    /// (the CRI's `k8s.io`).
    pub fn own_in(&self, namespace: &str, id: &str) {
        let key = (namespace.to_owned(), id.to_owned());
        self.ids.lock().expect("ids lock").push(key);
    }

    /// `ctr -a SOCK -n NAMESPACE ARGS...`, bounded by [`CTR_TIMEOUT`].
    pub fn ctr_in(&self, namespace: &str, args: &[&str]) -> Output {
        let mut command = Command::new(self.engine.ctr());
        command
            .arg("-a")
            .arg(&self.socket)
            .arg("-n")
            .arg(namespace)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = command.spawn().expect("run ctr");
        wait_output(
            child,
            CTR_TIMEOUT,
            &format!("ctr -n {namespace} {}", args.join(" ")),
        )
    }

    /// Runs `ctr -a SOCK -n hull-test ARGS...`, bounded by [`CTR_TIMEOUT`].
    pub fn ctr(&self, args: &[&str]) -> Output {
        self.ctr_with_stdin(args, None)
    }

    /// [`Self::ctr`] with `input` written to its stdin (then closed).
    pub fn ctr_with_stdin(&self, args: &[&str], input: Option<&[u8]>) -> Output {
        self.ctr_within(args, input, CTR_TIMEOUT)
    }

    /// [`Self::ctr_with_stdin`], bounded by `limit`.
    pub fn ctr_within(&self, args: &[&str], input: Option<&[u8]>, limit: Duration) -> Output {
        let mut command = self.ctr_command(args);
        command
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("run ctr");
        if let Some(input) = input {
            use std::io::Write;
            let mut stdin = child.stdin.take().expect("ctr stdin");
            stdin.write_all(input).expect("write ctr stdin");
        }
        wait_output(child, limit, &format!("ctr {}", args.join(" ")))
    }

    /// `ctr events`, running until killed ([`kill_and_reap`]); its stdout
    /// (one line per event: time, namespace, topic, payload) is piped.
    pub fn events(&self) -> Child {
        let mut command = Command::new(self.engine.ctr());
        command
            .arg("-a")
            .arg(&self.socket)
            .arg("events")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        command.spawn().expect("run ctr events")
    }

    /// What `events` (from [`Self::events`]) printed: after a moment for
    /// ctr to print what it already received, it is stopped and reaped.
    pub fn events_seen(mut events: Child) -> String {
        std::thread::sleep(Duration::from_secs(1));
        let mut stdout = events.stdout.take().expect("ctr events stdout");
        kill_and_reap(events);
        let mut seen = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut seen).expect("read ctr events");
        seen
    }

    /// `ctr -a SOCK -n hull-test ARGS...`, not started.
    fn ctr_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(self.engine.ctr());
        command
            .arg("-a")
            .arg(&self.socket)
            .arg("-n")
            .arg(NAMESPACE)
            .args(args);
        command
    }

    /// `ctr run --rm --runtime io.containerd.hull.v2 --runtime-config-path
    /// CONFIG [extra...] busybox ID cmd...`.
    pub fn run(&self, id: &str, extra: &[&str], cmd: &[&str]) -> Output {
        self.run_with_stdin(id, extra, cmd, None)
    }

    /// [`Self::run`] with stdin.
    pub fn run_with_stdin(
        &self,
        id: &str,
        extra: &[&str],
        cmd: &[&str],
        input: Option<&[u8]>,
    ) -> Output {
        self.ctr_with_stdin(&self.run_args("--rm", id, extra, cmd), input)
    }

    /// `ctr run -d` (detached): the task keeps running after ctr returns.
    pub fn run_detached(&self, id: &str, extra: &[&str], cmd: &[&str]) -> Output {
        self.run_detached_within(id, extra, cmd, CTR_TIMEOUT)
    }

    /// [`Self::run_detached`], bounded by `limit` (several VMs booting at
    /// once take longer than one).
    pub fn run_detached_within(
        &self,
        id: &str,
        extra: &[&str],
        cmd: &[&str],
        limit: Duration,
    ) -> Output {
        self.ctr_within(&self.run_args("-d", id, extra, cmd), None, limit)
    }

    /// `ctr run -t --rm ...` with ctr's stdin, stdout and stderr on a
    /// pseudo-terminal of `rows` x `columns`, as from a user's terminal.
    /// Returns ctr's exit status and everything that reached the terminal.
    pub fn run_in_terminal(
        &self,
        id: &str,
        (rows, columns): (u16, u16),
        cmd: &[&str],
    ) -> (ExitStatus, String) {
        let command = self.ctr_command(&self.run_args("--rm", id, &["-t"], cmd));
        let what = format!("ctr run -t {id}");
        terminal::run(command, (rows, columns), CTR_TIMEOUT, &what)
    }

    /// `run MODE --runtime hull --runtime-config-path CONFIG EXTRA IMAGE ID CMD`.
    fn run_args<'a>(
        &'a self,
        mode: &'a str,
        id: &'a str,
        extra: &[&'a str],
        cmd: &[&'a str],
    ) -> Vec<&'a str> {
        self.own(id);
        let config = self.config.to_str().expect("utf-8 path");
        let mut args = vec![
            "run",
            mode,
            "--runtime",
            RUNTIME,
            "--runtime-config-path",
            config,
        ];
        args.extend_from_slice(extra);
        args.push(IMAGE);
        args.push(id);
        args.extend_from_slice(cmd);
        args
    }

    /// Waits until task `id` is STOPPED, deletes it, and returns its exit
    /// status as `ctr task delete` reports it ("exit with non-zero exit
    /// code N"; nothing for 0).
    pub fn wait_task_stopped_and_delete(&self, id: &str) -> u32 {
        try_poll_until(CTR_TIMEOUT, Duration::from_millis(200), || {
            match self.task_status(id) {
                Some(status) if status == "STOPPED" => Ok(()),
                None => panic!("task {id} is gone from `ctr task ls`"),
                Some(status) => Err(status),
            }
        })
        .unwrap_or_else(|status| panic!("task {id} did not stop within {CTR_TIMEOUT:?}: {status}"));
        let out = self.ctr(&["task", "delete", id]);
        assert!(out.status.success(), "ctr task delete {id}: {out:?}");
        let text = String::from_utf8_lossy(&out.stderr).into_owned();
        text.split("non-zero exit code ")
            .nth(1)
            .and_then(|rest| {
                rest.chars()
                    .take_while(char::is_ascii_digit)
                    .collect::<String>()
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    }

    /// Task `id`'s status as `ctr task ls` shows it (RUNNING, STOPPED,
    /// PAUSED, ...), or `None` when containerd lists no such task.
    pub fn task_status(&self, id: &str) -> Option<String> {
        let text = stdout_ok(&self.ctr(&["task", "ls"]), "ctr task ls");
        text.lines()
            .map(|line| line.split_whitespace().collect::<Vec<_>>())
            .find(|fields| fields.first() == Some(&id))
            .and_then(|fields| fields.last().map(|s| (*s).to_owned()))
    }

    /// The `hull-vmm` processes of this containerd's containers: the
    /// command line of each names its rootfs disk in a bundle under the
    /// test directory.
    pub fn vmm_pids(&self) -> Vec<u32> {
        leaks::processes_mentioning(&self.dir)
            .into_iter()
            .map(|(pid, _)| pid)
            .filter(|pid| leaks::process_name(*pid).as_deref() == Some("hull-vmm"))
            .collect()
    }

    /// The `hull-vmm` process of container `id` (its disk is in `id`'s
    /// bundle).
    pub fn vmm_pid(&self, id: &str) -> Option<u32> {
        let bundle = format!("/{NAMESPACE}/{id}/rootfs.img");
        self.vmm_pids().into_iter().find(|pid| {
            self.vmm_drives(*pid)
                .iter()
                .any(|drive| drive.to_string_lossy().ends_with(&bundle))
        })
    }

    /// The disks VMM `pid` opens (from its VM config).
    pub fn vmm_drives(&self, pid: u32) -> Vec<PathBuf> {
        leaks::vmm_config(pid)
            .map(|config| config.drives.into_iter().map(|d| d.path).collect())
            .unwrap_or_default()
    }

    /// The serving `containerd-shim-hull-v2` of container `id` (the one
    /// with a `-socket`, not a `start` or `delete` run).
    pub fn shim_pid(&self, id: &str) -> Option<u32> {
        leaks::processes_mentioning(&self.dir)
            .into_iter()
            .map(|(pid, _)| pid)
            .find(|pid| {
                let args = leaks::process_args(*pid);
                let flag = |name: &str| {
                    args.windows(2)
                        .find(|pair| pair[0] == name)
                        .map(|pair| pair[1].as_str())
                };
                args.first()
                    .is_some_and(|a| a.ends_with("containerd-shim-hull-v2"))
                    && flag("-id") == Some(id)
                    && flag("-namespace") == Some(NAMESPACE)
                    && flag("-socket").is_some()
            })
    }

    /// Everything a task may leave behind is gone: no task or container in
    /// containerd, no process naming the test directory (shim, hull-vmm),
    /// no new shim socket, no mount under the test directory, no rootfs
    /// disk, no sandbox state directory or host cgroup.
    pub fn assert_nothing_left(&self) {
        let tasks = self.ctr(&["task", "ls", "-q"]);
        assert_eq!(
            String::from_utf8_lossy(&tasks.stdout).trim(),
            "",
            "tasks left in containerd"
        );
        let containers = self.ctr(&["container", "ls", "-q"]);
        assert_eq!(
            String::from_utf8_lossy(&containers.stdout).trim(),
            "",
            "containers left in containerd"
        );
        self.assert_no_shim_leftovers();
    }

    /// No shim or VMM process, shim socket or mount left (containerd's own
    /// records are not checked: for tests that kill things on purpose).
    pub fn assert_no_shim_leftovers(&self) {
        self.assert_no_shim_leftovers_but(&[]);
    }

    /// [`Self::assert_no_shim_leftovers`], ignoring the daemons in `daemons`
    /// (dockerd names the test directory too).
    pub fn assert_no_shim_leftovers_but(&self, daemons: &[u32]) {
        let clean = try_poll_until(Duration::from_secs(10), Duration::from_millis(200), || {
            let processes: Vec<_> = leaks::processes_mentioning(&self.dir)
                .into_iter()
                .filter(|(pid, _)| Some(*pid) != self.daemon.as_ref().map(Child::id))
                .filter(|(pid, _)| !daemons.contains(pid))
                .collect();
            let sockets = self.shim_sockets_left();
            let mounts = mounts_under(&self.dir.join("state"));
            let disks = files_named(&self.dir.join("state"), "rootfs.img");
            let sandboxes = self.sandbox_leftovers();
            let shares = self.shares_left();
            if processes.is_empty()
                && sockets.is_empty()
                && mounts.is_empty()
                && disks.is_empty()
                && sandboxes.is_empty()
                && shares.is_empty()
            {
                Ok(())
            } else {
                Err(format!(
                    "processes {processes:?}, shim sockets {sockets:?}, \
                     mounts {mounts:?}, rootfs disks {disks:?}, \
                     sandbox state and cgroups {sandboxes:?}, \
                     shared directories (virtiofsd, bind mounts) {shares:?}"
                ))
            }
        });
        if let Err(left) = clean {
            panic!("left behind: {left}");
        }
    }
}

impl Containerd {
    /// The shim sockets of the containers started through [`Self::run`]
    /// and friends: containerd-shim names them after containerd's address,
    /// the namespace and the container id.
    fn own_shim_sockets(&self) -> BTreeSet<String> {
        let ids = self.ids.lock().expect("ids lock").clone();
        ids.iter()
            .map(|(namespace, id)| {
                let key = self.socket.join(namespace).join(id);
                format!("{:x}", Sha256::digest(key.as_os_str().as_encoded_bytes()))
            })
            .collect()
    }

    /// Shim sockets that appeared since the start and are still there:
    /// those of this test's containers, or, when another client (dockerd)
    /// named the containers, every new one.
    fn shim_sockets_left(&self) -> Vec<String> {
        let own = self.own_shim_sockets();
        crate::dir_entries(Path::new(SHIM_SOCKET_DIR))
            .into_iter()
            .filter(|s| !self.shim_sockets_before.contains(s))
            .filter(|s| own.is_empty() || own.contains(s))
            .collect()
    }

    /// What new shared directories left: their directories, the mounts
    /// under them, virtiofsd processes serving them (one suite runs at a
    /// time: every new one is this test's).
    fn shares_left(&self) -> Vec<String> {
        let new: Vec<String> = crate::dir_entries(Path::new(SHARE_BASE))
            .into_iter()
            .filter(|s| !self.shares_before.contains(s))
            .collect();
        let mut left: Vec<String> = new.iter().map(|s| format!("{SHARE_BASE}/{s}")).collect();
        left.extend(mounts_under(Path::new(SHARE_BASE)).into_iter().filter(|m| {
            !self
                .shares_before
                .iter()
                .any(|s| m.starts_with(&format!("{SHARE_BASE}/{s}/")))
        }));
        left.extend(
            leaks::processes_mentioning(Path::new(SHARE_BASE))
                .into_iter()
                .filter(|(_, cmdline)| {
                    !self
                        .shares_before
                        .iter()
                        .any(|s| cmdline.contains(&format!("{SHARE_BASE}/{s}/")))
                })
                .map(|(pid, cmdline)| format!("pid {pid}: {cmdline}")),
        );
        left
    }

    /// The sandbox state directories (`/run/hull/sandboxes/...`) and host
    /// cgroups (`hull/<sandbox>` per controller) of the containers this
    /// test started that still exist.
    fn sandbox_leftovers(&self) -> Vec<PathBuf> {
        let ids = self.ids.lock().expect("ids lock").clone();
        ids.iter()
            .flat_map(|(namespace, id)| {
                let state = hull_sandbox::state::state_dir_for(namespace, id);
                let name = state.file_name().expect("a sandbox name").to_owned();
                let cgroups = ["memory", "pids", "cpu", ""]
                    .map(|controller| Path::new("/sys/fs/cgroup").join(controller).join("hull"))
                    .map(|parent| parent.join(&name));
                std::iter::once(state).chain(cgroups)
            })
            .filter(|path| path.exists())
            .collect()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if let Some(daemon) = self.daemon.take() {
            kill_and_reap(daemon);
        }
        // After a failed test: shims and VMMs name the test directory on
        // their command lines (containerd's address, the bundle). Kill
        // them, and detach what they mounted, so one failure does not leak
        // into the next test. Only their sockets go: other shims on this
        // machine (another containerd's) keep theirs.
        let mut own_sockets = self.own_shim_sockets();
        for (pid, _) in leaks::processes_mentioning(&self.dir) {
            own_sockets.extend(shim_socket_of(pid));
            // SAFETY: kill(2) with a pid read from /proc and a valid signal
            // number; at worst the process is already gone (ESRCH).
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
        for mount_point in mounts_under(&self.dir).iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(mount_point).status();
        }
        // Shared directories new since the start: their virtiofsd, bind
        // mounts and directories (hull's own cleanup, which removes only
        // empty entries and never the host's files).
        for share in crate::dir_entries(Path::new(SHARE_BASE)) {
            if !self.shares_before.contains(&share) {
                hull_sandbox::share::remove_leftovers(&Path::new(SHARE_BASE).join(share));
            }
        }
        for socket in own_sockets {
            if !self.shim_sockets_before.contains(&socket) {
                let _ = std::fs::remove_file(Path::new(SHIM_SOCKET_DIR).join(socket));
            }
        }
        // A cgroup can only go once the processes killed above are gone;
        // if some are not, removing it fails quietly below.
        let _ = try_poll_until(Duration::from_secs(10), Duration::from_millis(50), || {
            let left = leaks::processes_mentioning(&self.dir);
            if left.is_empty() {
                Ok(())
            } else {
                Err(left)
            }
        });
        for path in self.sandbox_leftovers() {
            if path.starts_with("/sys/fs/cgroup") {
                let _ = std::fs::remove_dir(&path);
            } else {
                let _ = std::fs::remove_dir_all(&path);
            }
        }
        // Sandboxes whose ids this harness never saw (dockerd named them):
        // those whose VM config names this test's directory.
        let needle = self.dir.to_string_lossy().into_owned();
        for sandbox in crate::dir_entries(Path::new(SANDBOX_STATE_BASE)) {
            let state = Path::new(SANDBOX_STATE_BASE).join(&sandbox);
            let config = std::fs::read_to_string(state.join("vmm.json")).unwrap_or_default();
            if config.contains(&needle) {
                let _ = std::fs::remove_dir_all(&state);
                for controller in ["memory", "pids", "cpu", ""] {
                    let cgroup = Path::new("/sys/fs/cgroup")
                        .join(controller)
                        .join("hull")
                        .join(&sandbox);
                    let _ = std::fs::remove_dir(cgroup);
                }
            }
        }
    }
}

/// Waits up to `limit` for `child` to exit; kills it and fails the test
/// when it takes longer.
pub fn wait_within(mut child: Child, limit: Duration, what: &str) -> ExitStatus {
    let exited = try_poll_until(limit, Duration::from_millis(20), || {
        child.try_wait().expect("wait for the child").ok_or(())
    });
    match exited {
        Ok(status) => status,
        Err(()) => {
            kill_and_reap(child);
            panic!("{what}: did not finish within {limit:?}; killed");
        }
    }
}

/// Waits up to `limit` for `child` (stdout/stderr piped) and collects its
/// output; kills it and fails the test when it takes longer.
pub fn wait_output(mut child: Child, limit: Duration, what: &str) -> Output {
    use std::io::Read;
    let mut stdout = child.stdout.take().expect("stdout piped");
    let mut stderr = child.stderr.take().expect("stderr piped");
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    Output {
        status: wait_within(child, limit, what),
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    }
}

/// SIGKILL `child` and reap it.
pub fn kill_and_reap(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// SIGTERM `child`, wait up to `grace` for it to exit, then SIGKILL it.
fn terminate_and_reap(mut child: Child, grace: Duration) {
    // SAFETY: kill(2) on our own child, not yet reaped (we own its handle),
    // so the pid cannot name another process.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let exited = try_poll_until(grace, Duration::from_millis(50), || {
        match child.try_wait() {
            Ok(Some(_)) => Ok(()),
            _ => Err(()),
        }
    });
    if exited.is_err() {
        kill_and_reap(child);
    }
}

/// The name of the socket in [`SHIM_SOCKET_DIR`] a serving shim listens
/// on (its `-socket unix:///run/containerd/s/NAME`), if `pid` is one.
fn shim_socket_of(pid: u32) -> Option<String> {
    let args = leaks::process_args(pid);
    let socket = args.windows(2).find(|pair| pair[0] == "-socket")?[1].clone();
    let path = socket.trim_start_matches("unix://");
    Path::new(path)
        .strip_prefix(SHIM_SOCKET_DIR)
        .ok()
        .map(|name| name.to_string_lossy().into_owned())
}

/// Files called `name` at any depth under `dir`.
fn files_named(dir: &Path, name: &str) -> Vec<PathBuf> {
    leaks::files_under(dir, |entry, _| entry.file_name() == name)
}

/// The hull config for the shim under test, from the environment.
pub fn hull_config() -> String {
    format!(
        "vmm = \"{}\"\njailer = \"{}\"\nkernel = \"{}\"\ninitramfs = \"{}\"\nvirtiofsd = \"{}\"\nvcpus = 1\nmemory_mib = 256\ndebug_console = true\n",
        prereq::vmm().display(),
        prereq::jailer().display(),
        prereq::kernel().display(),
        prereq::agent_initramfs().display(),
        prereq::virtiofsd().display()
    )
}

/// Mount points at or below `dir` (from /proc/self/mountinfo).
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .filter(|mount_point| mount_point.starts_with(&prefix))
        .map(str::to_owned)
        .collect()
}

/// stdout of `out` as text, failing with both streams if it did not succeed.
pub fn stdout_ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
