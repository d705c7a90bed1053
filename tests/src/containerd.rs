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

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::leaks;
use crate::prereq;

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
    shim_sockets_before: Vec<String>,
}

impl Containerd {
    /// Start containerd `engine` with everything under `dir` (keep it short:
    /// socket paths), and import the busybox image.
    pub fn start(engine: Engine, dir: &Path) -> Self {
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
                 [plugins.\"io.containerd.grpc.v1.cri\"]\n  disable_tcp_service = true\n",
                root = dir.join("root").display(),
                state = dir.join("state").display(),
                sock = socket.display()
            ),
        )
        .expect("write containerd config");
        let log = std::fs::File::create(dir.join("containerd.log")).expect("containerd log");
        let path = format!(
            "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            bin.display()
        );
        let shim_sockets_before = crate::dir_entries(Path::new(SHIM_SOCKET_DIR));
        let daemon = Command::new(engine.daemon())
            .arg("--config")
            .arg(&containerd_config)
            .env("PATH", path)
            // For runtimes named without options (`docker run --runtime
            // io.containerd.hull.v2`): the shim falls back to $HULL_CONFIG.
            .env("HULL_CONFIG", &config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let mut containerd = Containerd {
            engine,
            daemon: Some(daemon),
            dir: dir.to_path_buf(),
            socket,
            config,
            shim_sockets_before,
        };
        containerd.wait_ready();
        containerd.import_busybox();
        containerd
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(daemon) = self.daemon.as_mut() {
                if let Ok(Some(status)) = daemon.try_wait() {
                    panic!("containerd exited at start ({status}):\n{}", self.log());
                }
            }
            if self.socket.exists() && self.ctr(&["version"]).status.success() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("containerd did not answer within 30 s:\n{}", self.log());
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

    /// containerd's own log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    /// Runs `ctr -a SOCK -n hull-test ARGS...`, bounded by [`CTR_TIMEOUT`].
    pub fn ctr(&self, args: &[&str]) -> Output {
        self.ctr_with_stdin(args, None)
    }

    /// [`Self::ctr`] with `input` written to its stdin (then closed).
    pub fn ctr_with_stdin(&self, args: &[&str], input: Option<&[u8]>) -> Output {
        let mut command = Command::new(self.engine.ctr());
        command
            .arg("-a")
            .arg(&self.socket)
            .arg("-n")
            .arg(NAMESPACE)
            .args(args)
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
        wait_output(child, CTR_TIMEOUT, &format!("ctr {}", args.join(" ")))
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
        self.ctr(&self.run_args("-d", id, extra, cmd))
    }

    /// `run MODE --runtime hull --runtime-config-path CONFIG EXTRA IMAGE ID CMD`.
    fn run_args<'a>(
        &'a self,
        mode: &'a str,
        id: &'a str,
        extra: &[&'a str],
        cmd: &[&'a str],
    ) -> Vec<&'a str> {
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
        let deadline = Instant::now() + CTR_TIMEOUT;
        loop {
            let ls = self.ctr(&["task", "ls"]);
            let text = String::from_utf8_lossy(&ls.stdout).into_owned();
            let line = text
                .lines()
                .find(|l| l.split_whitespace().next() == Some(id))
                .map(str::to_owned);
            match line {
                Some(line) if line.contains("STOPPED") => break,
                None => panic!("task {id} is gone from `ctr task ls`: {text}"),
                _ => {}
            }
            assert!(
                Instant::now() < deadline,
                "task {id} did not stop within {CTR_TIMEOUT:?}: {text}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
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

    /// Everything a task may leave behind is gone: no task or container in
    /// containerd, no process naming the test directory (shim, hull-vmm),
    /// no new shim socket, no mount under the test directory.
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
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let processes: Vec<_> = leaks::processes_mentioning(&self.dir)
                .into_iter()
                .filter(|(pid, _)| Some(*pid) != self.daemon.as_ref().map(Child::id))
                .filter(|(pid, _)| !daemons.contains(pid))
                .collect();
            let sockets: Vec<_> = crate::dir_entries(Path::new(SHIM_SOCKET_DIR))
                .into_iter()
                .filter(|s| !self.shim_sockets_before.contains(s))
                .collect();
            let mounts = mounts_under(&self.dir.join("state"));
            if processes.is_empty() && sockets.is_empty() && mounts.is_empty() {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "left behind: processes {processes:?}, shim sockets {sockets:?}, mounts {mounts:?}"
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
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
        // into the next test.
        for (pid, _) in leaks::processes_mentioning(&self.dir) {
            // SAFETY: kill(2) with a pid read from /proc and a valid signal
            // number; at worst the process is already gone (ESRCH).
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
        for mount_point in mounts_under(&self.dir).iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(mount_point).status();
        }
        for socket in crate::dir_entries(Path::new(SHIM_SOCKET_DIR)) {
            if !self.shim_sockets_before.contains(&socket) {
                let _ = std::fs::remove_file(Path::new(SHIM_SOCKET_DIR).join(socket));
            }
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
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            break status;
        }
        if Instant::now() >= deadline {
            kill_and_reap(child);
            panic!("{what}: did not finish within {limit:?}; killed");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    }
}

/// SIGKILL `child` and reap it.
pub fn kill_and_reap(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// The hull config for the shim under test, from the environment.
pub fn hull_config() -> String {
    format!(
        "vmm = \"{}\"\njailer = \"{}\"\nkernel = \"{}\"\ninitramfs = \"{}\"\nvcpus = 1\nmemory_mib = 256\ndebug_console = true\n",
        prereq::vmm().display(),
        prereq::jailer().display(),
        prereq::kernel().display(),
        prereq::agent_initramfs().display()
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
