//! Containers in the real guest (real kernel, hull-agent as /init) through
//! the raw agent API, with a busybox rootfs disk attached by the VMM. Two
//! VM boots for the whole suite (each costs ~20 s here), many containers in
//! each:
//! - `container_lifecycle_kvm`: exit codes, stdio, a terminal, exec,
//!   signals, pause/resume, stats, process lists, removal;
//! - `container_confinement_kvm`: what the spec asks for, checked from
//!   inside (capabilities, seccomp, no_new_privs, masked and read-only
//!   paths, rlimits, user, hostname, cwd, env, pids and memory limits with
//!   an OOM event), and bad specs refused by field, leaving nothing behind.

use std::time::Duration;

use hull_protocol::agent_api::agent::{
    CloseStdinRequest, ExecProcessRequest, GetOOMEventRequest, ListProcessesRequest,
    PauseContainerRequest, ProcessStateRequest, ProcessStatus, ReadGuestLogRequest,
    ReadStreamRequest, ResizeTtyRequest, ResumeContainerRequest, SignalProcessRequest,
    StartContainerRequest, StatsContainerRequest, WriteStreamRequest,
};
use hull_protocol::agent_api::agent_ttrpc::AgentClient;
use hull_protocol::protobuf::MessageField;
use hull_protocol::ttrpc::Code;
use hull_tests::containers::{
    self, create_and_start, ctx, long_ctx, oci_spec, read_all, remove, run, status, stdio,
    try_create, wait,
};
use hull_tests::{prereq, rootfs, sandbox, test_dir, within, EXIT_TIMEOUT};
use serde_json::{json, Value};

/// One boot (≤ 120 s) and a few dozen container operations.
const TEST_LIMIT: Duration = Duration::from_secs(900);
/// How long a paused container is watched for output it must not make.
const PAUSED_QUIET: Duration = Duration::from_secs(3);

fn sh(script: &str) -> Value {
    oci_spec(&["/bin/sh", "-c", script])
}

async fn state(agent: &AgentClient, id: &str, exec_id: &str) -> ProcessStatus {
    let req = ProcessStateRequest {
        container_id: id.into(),
        exec_id: exec_id.into(),
        ..Default::default()
    };
    let state = agent
        .process_state(ctx(), &req)
        .await
        .unwrap_or_else(|e| panic!("ProcessState {id}/{exec_id:?}: {:?}", status(&e)));
    state.status.enum_value_or_default()
}

async fn signal(agent: &AgentClient, id: &str, exec_id: &str, signal: u32, all: bool) {
    let req = SignalProcessRequest {
        container_id: id.into(),
        exec_id: exec_id.into(),
        signal,
        all,
        ..Default::default()
    };
    agent
        .signal_process(ctx(), &req)
        .await
        .unwrap_or_else(|e| panic!("SignalProcess {id}/{exec_id:?}: {:?}", status(&e)));
}

async fn write_stdin(agent: &AgentClient, id: &str, exec_id: &str, data: &[u8]) {
    let req = WriteStreamRequest {
        container_id: id.into(),
        exec_id: exec_id.into(),
        data: data.to_vec(),
        ..Default::default()
    };
    let written = agent
        .write_stdin(long_ctx(), &req)
        .await
        .unwrap_or_else(|e| panic!("WriteStdin {id}/{exec_id:?}: {:?}", status(&e)));
    assert_eq!(written.written as usize, data.len());
}

async fn close_stdin(agent: &AgentClient, id: &str, exec_id: &str) {
    let req = CloseStdinRequest {
        container_id: id.into(),
        exec_id: exec_id.into(),
        ..Default::default()
    };
    agent
        .close_stdin(ctx(), &req)
        .await
        .unwrap_or_else(|e| panic!("CloseStdin {id}/{exec_id:?}: {:?}", status(&e)));
}

async fn exec(agent: &AgentClient, id: &str, exec_id: &str, process: Value, stdin: bool) -> u32 {
    let terminal = process["terminal"].as_bool().unwrap_or(false);
    let req = ExecProcessRequest {
        container_id: id.into(),
        exec_id: exec_id.into(),
        process: serde_json::to_vec(&process).unwrap(),
        stdio: MessageField::some(stdio(stdin, terminal)),
        ..Default::default()
    };
    agent
        .exec_process(long_ctx(), &req)
        .await
        .unwrap_or_else(|e| panic!("ExecProcess {id}/{exec_id}: {:?}", status(&e)))
        .pid
}

async fn pids(agent: &AgentClient, id: &str) -> Vec<u32> {
    let req = ListProcessesRequest {
        container_id: id.into(),
        ..Default::default()
    };
    agent
        .list_processes(ctx(), &req)
        .await
        .unwrap_or_else(|e| panic!("ListProcesses {id}: {:?}", status(&e)))
        .pids
}

#[tokio::test(flavor = "current_thread")]
async fn container_lifecycle_kvm() {
    prereq::require_kvm();
    let dir = test_dir();
    let image = rootfs::busybox_image(dir.path());
    let spec = containers::spec_with_rootfs(&image);
    within(TEST_LIMIT, "container_lifecycle_kvm", async {
        let mut vmm = sandbox::spawn(&spec, &dir.path().join("sandbox"));
        let agent = containers::boot(&mut vmm).await;
        eprintln!("agent ready {:?} after VMM start", vmm.started().elapsed());

        // Exit codes and both output streams.
        let ran = run(&agent, "exit0", &sh("echo out; echo err >&2")).await;
        assert_eq!(
            (ran.status, ran.stdout.as_str(), ran.stderr.as_str()),
            (0, "out\n", "err\n"),
            "{ran:?}"
        );
        let ran = run(&agent, "exit1", &sh("exit 1")).await;
        assert_eq!(ran.status, 1, "{ran:?}");
        eprintln!(
            "exit codes checked {:?} after VMM start",
            vmm.started().elapsed()
        );

        // Stdin piped through `cat`; the process states on the way.
        let id = "cat";
        containers::try_create(&agent, id, &oci_spec(&["/bin/cat"]), stdio(true, false))
            .await
            .unwrap_or_else(|e| panic!("CreateContainer cat: {:?}", status(&e)));
        assert_eq!(
            state(&agent, id, "").await,
            ProcessStatus::PROCESS_STATUS_CREATED
        );
        let again = try_create(&agent, id, &oci_spec(&["/bin/true"]), stdio(false, false)).await;
        assert_eq!(status(&again.unwrap_err()).0, Code::ALREADY_EXISTS);
        let start = StartContainerRequest {
            container_id: id.into(),
            ..Default::default()
        };
        agent
            .start_container(ctx(), &start)
            .await
            .expect("StartContainer cat");
        let twice = agent.start_container(ctx(), &start).await.unwrap_err();
        assert_eq!(
            status(&twice).0,
            Code::FAILED_PRECONDITION,
            "{:?}",
            status(&twice)
        );
        assert_eq!(
            state(&agent, id, "").await,
            ProcessStatus::PROCESS_STATUS_RUNNING
        );
        write_stdin(&agent, id, "", b"hello through stdin\n").await;
        close_stdin(&agent, id, "").await;
        let (out, exit) = tokio::join!(read_all(&agent, id, "", false), wait(&agent, id, ""));
        assert_eq!((out.as_str(), exit), ("hello through stdin\n", 0));
        assert_eq!(
            state(&agent, id, "").await,
            ProcessStatus::PROCESS_STATUS_STOPPED
        );
        remove(&agent, id, false)
            .await
            .expect("RemoveContainer cat");
        let gone = remove(&agent, id, false).await.unwrap_err();
        assert_eq!(status(&gone).0, Code::NOT_FOUND);

        // A terminal: the size set with ResizeTty is what `stty size` sees.
        let id = "tty";
        let mut tty_spec = sh("read line; stty size; echo got $line");
        tty_spec["process"]["terminal"] = true.into();
        create_and_start(&agent, id, &tty_spec, stdio(true, true)).await;
        let resize = ResizeTtyRequest {
            container_id: id.into(),
            rows: 33,
            columns: 101,
            ..Default::default()
        };
        agent.resize_tty(ctx(), &resize).await.expect("ResizeTty");
        write_stdin(&agent, id, "", b"typed\n").await;
        let (out, exit) = tokio::join!(read_all(&agent, id, "", false), wait(&agent, id, ""));
        assert_eq!(exit, 0, "{out:?}");
        assert!(out.contains("33 101"), "stty size in the terminal: {out:?}");
        assert!(out.contains("got typed"), "{out:?}");
        remove(&agent, id, false)
            .await
            .expect("RemoveContainer tty");
        eprintln!(
            "stdio and terminal checked {:?} after VMM start",
            vmm.started().elapsed()
        );

        // A long-running container: exec, list, pause/resume, stats, signals.
        let id = "ticker";
        let init_pid = create_and_start(
            &agent,
            id,
            &sh("while true; do echo tick; sleep 1; done"),
            stdio(false, false),
        )
        .await;
        let first = agent
            .read_stdout(
                long_ctx(),
                &ReadStreamRequest {
                    container_id: id.into(),
                    max_bytes: 5,
                    ..Default::default()
                },
            )
            .await
            .expect("ReadStdout ticker");
        assert_eq!(first.data, b"tick\n");

        let mut process = oci_spec(&["/bin/sh", "-c", "echo exec $((40+2)) $(hostname); exit 3"])
            ["process"]
            .clone();
        process["cwd"] = "/tmp".into();
        let exec_pid = exec(&agent, id, "e1", process.clone(), false).await;
        assert!(exec_pid > 0);
        let (out, exit) = tokio::join!(read_all(&agent, id, "e1", false), wait(&agent, id, "e1"));
        assert_eq!((out.as_str(), exit), ("exec 42 hull-test\n", 3));
        let req = ExecProcessRequest {
            container_id: id.into(),
            exec_id: "e1".into(),
            process: serde_json::to_vec(&process).unwrap(),
            ..Default::default()
        };
        let dup = agent.exec_process(long_ctx(), &req).await.unwrap_err();
        assert_eq!(status(&dup).0, Code::ALREADY_EXISTS);

        // An exec'd sleeper is listed next to the init; SIGTERM gives 143.
        let sleeper = exec(
            &agent,
            id,
            "sleeper",
            oci_spec(&["/bin/sleep", "1000"])["process"].clone(),
            false,
        )
        .await;
        let listed = pids(&agent, id).await;
        assert!(
            listed.contains(&init_pid) && listed.contains(&sleeper),
            "{listed:?} lacks {init_pid} or {sleeper}"
        );
        signal(&agent, id, "sleeper", 15, false).await;
        assert_eq!(wait(&agent, id, "sleeper").await, 128 + 15);
        let dead = agent
            .signal_process(
                ctx(),
                &SignalProcessRequest {
                    container_id: id.into(),
                    exec_id: "sleeper".into(),
                    signal: 9,
                    ..Default::default()
                },
            )
            .await
            .unwrap_err();
        assert_eq!(status(&dead).0, Code::NOT_FOUND, "{:?}", status(&dead));

        // Pause: no output while frozen; resume: the ticks come again.
        let pause = PauseContainerRequest {
            container_id: id.into(),
            ..Default::default()
        };
        agent
            .pause_container(ctx(), &pause)
            .await
            .expect("PauseContainer");
        assert_eq!(
            state(&agent, id, "").await,
            ProcessStatus::PROCESS_STATUS_PAUSED
        );
        // Drain what was written before the freeze, then expect silence.
        let drain = ReadStreamRequest {
            container_id: id.into(),
            max_bytes: 1 << 16,
            ..Default::default()
        };
        let _ = tokio::time::timeout(
            Duration::from_millis(500),
            agent.read_stdout(long_ctx(), &drain),
        )
        .await;
        let quiet = tokio::time::timeout(PAUSED_QUIET, agent.read_stdout(long_ctx(), &drain)).await;
        assert!(quiet.is_err(), "a paused container wrote {quiet:?}");
        let again = agent.pause_container(ctx(), &pause).await.unwrap_err();
        assert_eq!(status(&again).0, Code::FAILED_PRECONDITION);
        let resume = ResumeContainerRequest {
            container_id: id.into(),
            ..Default::default()
        };
        agent
            .resume_container(ctx(), &resume)
            .await
            .expect("ResumeContainer");
        assert_eq!(
            state(&agent, id, "").await,
            ProcessStatus::PROCESS_STATUS_RUNNING
        );
        let tick = agent
            .read_stdout(long_ctx(), &drain)
            .await
            .expect("ReadStdout after resume");
        assert!(
            String::from_utf8_lossy(&tick.data).contains("tick"),
            "{tick:?}"
        );

        let stats = agent
            .stats_container(
                ctx(),
                &StatsContainerRequest {
                    container_id: id.into(),
                    ..Default::default()
                },
            )
            .await
            .expect("StatsContainer");
        assert!(stats.cpu_usage_total_nanos > 0, "{stats:?}");
        assert!(stats.memory_usage_bytes > 0, "{stats:?}");
        assert!(stats.pids_current >= 1, "{stats:?}");

        // A running container is removed only with force. Its init, PID 1
        // of its namespace, ignores SIGTERM; SIGKILL to all ends it: 137.
        let refused = remove(&agent, id, false).await.unwrap_err();
        assert_eq!(status(&refused).0, Code::FAILED_PRECONDITION);
        signal(&agent, id, "", 9, true).await;
        assert_eq!(wait(&agent, id, "").await, 137);
        remove(&agent, id, true)
            .await
            .expect("RemoveContainer ticker");
        let state_req = ProcessStateRequest {
            container_id: id.into(),
            ..Default::default()
        };
        let gone = agent.process_state(ctx(), &state_req).await.unwrap_err();
        assert_eq!(status(&gone).0, Code::NOT_FOUND);

        // Force-removing a running container kills it.
        let id = "forced";
        create_and_start(
            &agent,
            id,
            &oci_spec(&["/bin/sleep", "1000"]),
            stdio(false, false),
        )
        .await;
        remove(&agent, id, true)
            .await
            .expect("RemoveContainer --force");
        eprintln!(
            "exec, pause, stats, signals checked {:?} after VMM start",
            vmm.started().elapsed()
        );

        // The guest log has the agent's lines.
        let log = agent
            .read_guest_log(
                long_ctx(),
                &ReadGuestLogRequest {
                    max_bytes: 1 << 16,
                    ..Default::default()
                },
            )
            .await
            .expect("ReadGuestLog");
        let log = String::from_utf8_lossy(&log.data);
        assert!(log.ends_with('\n'), "{log}");
        assert!(log.contains("container ticker"), "{log}");

        shutdown(agent, vmm, dir.path()).await;
    })
    .await;
}

async fn shutdown(
    agent: AgentClient,
    mut vmm: hull_sandbox::vmm_process::VmmProcess,
    dir: &std::path::Path,
) {
    let _ = agent.shutdown(ctx(), &Default::default()).await;
    drop(agent);
    let exit = sandbox::wait_exit(&mut vmm, EXIT_TIMEOUT).await;
    hull_tests::assert_exit_code(
        exit,
        hull_protocol::vmm_api::exit_code::OK,
        &vmm.log_tail(20),
    );
    sandbox::assert_ended_clean(vmm, dir);
}

/// Runs one stage of a test, failing with the guest's log if it takes
/// longer than a process may.
async fn stage<T>(
    agent: &AgentClient,
    vmm: &hull_sandbox::vmm_process::VmmProcess,
    what: &str,
    work: impl std::future::Future<Output = T>,
) -> T {
    match tokio::time::timeout(containers::PROCESS_TIMEOUT - Duration::from_secs(5), work).await {
        Ok(value) => value,
        Err(_) => {
            let log = agent
                .read_guest_log(
                    ctx(),
                    &ReadGuestLogRequest {
                        max_bytes: 1 << 20,
                        ..Default::default()
                    },
                )
                .await
                .map(|l| String::from_utf8_lossy(&l.data).into_owned());
            let log: String = log
                .unwrap_or_default()
                .lines()
                .filter(|l| {
                    l.contains("hull-agent") || l.contains("oom") || l.contains("Memory cgroup")
                })
                .collect::<Vec<_>>()
                .join("\n  ");
            panic!(
                "{what}: no result in time; guest log:\n  {log}\n{}",
                sandbox::diagnostics(vmm)
            );
        }
    }
}

/// A script printing `key=value` lines, parsed.
fn report(ran: &containers::Ran) -> std::collections::HashMap<String, String> {
    ran.stdout
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

#[tokio::test(flavor = "current_thread")]
async fn container_confinement_kvm() {
    prereq::require_kvm();
    let dir = test_dir();
    let image = rootfs::busybox_image(dir.path());
    let spec = containers::spec_with_rootfs(&image);
    within(TEST_LIMIT, "container_confinement_kvm", async {
        let mut vmm = sandbox::spawn(&spec, &dir.path().join("sandbox"));
        let agent = containers::boot(&mut vmm).await;

        // Everything the spec asks for, seen from inside one container.
        let (user, uid, gid) = rootfs::USER;
        let mut confined = sh(concat!(
            "echo caps=$(grep CapEff /proc/self/status | cut -f2); ",
            "echo seccomp=$(grep '^Seccomp:' /proc/self/status | cut -f2); ",
            "echo nnp=$(grep NoNewPrivs /proc/self/status | cut -f2); ",
            "echo masked=$(wc -c < /proc/meminfo); ",
            "echo mkdir=$(mkdir /tmp/blocked 2>&1); ",
            "echo nofile=$(ulimit -n); echo umask=$(umask); ",
            "echo uid=$(id -u) gid=$(id -g); echo groups=$(id -G); ",
            "echo host=$(hostname); echo cwd=$(pwd); echo foo=$FOO; ",
            "touch /tmp/ok && echo tmpwrite=0",
        ));
        // A non-root user keeps capabilities across exec only as ambient
        // ones, so all five sets are given.
        let caps = json!(["CAP_CHOWN", "CAP_KILL"]);
        confined["process"]["capabilities"] = json!({
            "bounding": caps, "effective": caps, "permitted": caps, "inheritable": caps, "ambient": caps
        });
        confined["process"]["user"] = json!({
            "uid": 0, "gid": 0, "username": user, "additionalGids": [rootfs::EXTRA_GID], "umask": 0o027
        });
        confined["process"]["cwd"] = "/tmp".into();
        confined["process"]["env"] = json!(["PATH=/bin:/usr/bin", "FOO=bar baz"]);
        confined["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "hard": 123, "soft": 123}]);
        confined["hostname"] = "confined".into();
        confined["linux"]["maskedPaths"] = json!(["/proc/meminfo"]);
        confined["linux"]["seccomp"] = json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64"],
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
        });
        let mut tmp_mount = json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777"]});
        tmp_mount["options"].as_array_mut().unwrap().push("size=1m".into());
        confined["mounts"].as_array_mut().unwrap().push(tmp_mount);
        let ran = run(&agent, "confined", &confined).await;
        let seen = report(&ran);
        let expect = |key: &str, value: &str| {
            assert_eq!(seen.get(key).map(String::as_str), Some(value), "{key} in {ran:?}");
        };
        expect("caps", "0000000000000021");
        expect("seccomp", "2");
        expect("nnp", "1");
        expect("masked", "0");
        assert!(seen["mkdir"].contains("Operation not permitted"), "{ran:?}");
        expect("nofile", "123");
        expect("umask", "0027");
        expect("uid", &format!("{uid} gid={gid}"));
        assert!(seen["groups"].split(' ').any(|g| g == rootfs::EXTRA_GID.to_string()), "{ran:?}");
        expect("host", "confined");
        expect("cwd", "/tmp");
        expect("foo", "bar baz");
        expect("tmpwrite", "0");
        assert_eq!(ran.status, 0, "{ran:?}");

        // As root: a read-only rootfs, a read-only path (/proc/sys is one
        // in the default spec), and a writable tmpfs (/run).
        let mut readonly = sh(concat!(
            "echo root=$(touch /x 2>&1); ",
            "echo sys=$( (echo x > /proc/sys/kernel/domainname) 2>&1); ",
            "echo run=$(touch /run/x 2>&1 && echo ok)"
        ));
        readonly["root"]["readonly"] = true.into();
        let ran = run(&agent, "readonly", &readonly).await;
        let seen = report(&ran);
        assert!(seen["root"].contains("Read-only file system"), "{ran:?}");
        assert!(seen["sys"].contains("Read-only file system"), "{ran:?}");
        assert_eq!(seen["run"], "ok", "{ran:?}");
        eprintln!("confinement checked {:?} after VMM start", vmm.started().elapsed());

        // Bad specs: INVALID_ARGUMENT naming the field, and nothing left.
        let mut bad_namespace = oci_spec(&["/bin/true"]);
        bad_namespace["linux"]["namespaces"][2]["type"] = "foo".into();
        let mut no_args = oci_spec(&["/bin/true"]);
        no_args["process"].as_object_mut().unwrap().remove("args");
        let mut bad_action = oci_spec(&["/bin/true"]);
        bad_action["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_BOGUS"}]});
        let mut no_user = oci_spec(&["/bin/true"]);
        no_user["process"]["user"]["username"] = "nobody-here".into();
        for (spec, field) in [
            (bad_namespace, "linux.namespaces[2].type: "),
            (no_args, "process.args: missing"),
            (bad_action, "linux.seccomp.syscalls[0].action: "),
            (no_user, "process.user.username: no such user \"nobody-here\""),
        ] {
            let err = try_create(&agent, "bad", &spec, stdio(false, false)).await.unwrap_err();
            let (code, message) = status(&err);
            assert_eq!(code, Code::INVALID_ARGUMENT, "{message}");
            assert!(message.contains(field), "{message:?} does not name {field:?}");
        }
        // A program that is not there fails in libcontainer, after the
        // cgroup and the mounts were made: also undone.
        let missing = try_create(&agent, "bad", &oci_spec(&["/bin/does-not-exist"]), stdio(false, false)).await;
        assert!(missing.is_err(), "{missing:?}");
        eprintln!("missing program: {:?}", status(&missing.unwrap_err()));

        // What is left of "bad", seen from a container with the guest's
        // /run/hull and cgroup tree bound in.
        let mut look = sh("ls /guest-run/containers /guest-run/youki /guest-cgroup/hull");
        look["mounts"].as_array_mut().unwrap().extend([
            json!({"destination": "/guest-run", "type": "bind", "source": "/run/hull", "options": ["bind", "ro"]}),
            json!({"destination": "/guest-cgroup", "type": "bind", "source": "/sys/fs/cgroup", "options": ["bind", "ro"]}),
        ]);
        let ran = run(&agent, "look", &look).await;
        assert!(!ran.stdout.contains("bad"), "leftovers of a failed create: {ran:?}");
        assert!(ran.stdout.contains("look"), "the listing is not of this guest: {ran:?}");
        let gone = remove(&agent, "bad", true).await.unwrap_err();
        assert_eq!(status(&gone).0, Code::NOT_FOUND);

        // A pids limit stops a fork bomb.
        let mut bomb = sh("i=0; while [ $i -lt 30 ]; do sleep 100 & i=$((i+1)); done; echo spawned $i");
        bomb["linux"]["resources"] = json!({"pids": {"limit": 6}});
        let ran = stage(&agent, &vmm, "fork bomb", run(&agent, "bomb", &bomb)).await;
        assert!(ran.stderr.contains("fork"), "{ran:?}");

        // A memory limit: the OOM killer ends the hog, and an event says so.
        // dd's one 16 MiB buffer, touched as it fills, is twice the limit.
        let mut hog = sh("dd if=/dev/zero of=/dev/null bs=16M count=1");
        hog["linux"]["resources"] = json!({"memory": {"limit": 8 << 20}});
        let oom_req = GetOOMEventRequest::default();
        let oom = agent.get_oom_event(long_ctx(), &oom_req);
        let ran = async { run(&agent, "hog", &hog).await };
        let (event, ran) = stage(&agent, &vmm, "OOM", async { tokio::join!(oom, ran) }).await;
        assert_eq!(ran.status, 137, "{ran:?}");
        let event = event.unwrap_or_else(|e| panic!("GetOOMEvent: {:?}", status(&e)));
        assert_eq!(event.container_id, "hog");
        eprintln!("limits checked {:?} after VMM start", vmm.started().elapsed());

        shutdown(agent, vmm, dir.path()).await;
    })
    .await;
}
