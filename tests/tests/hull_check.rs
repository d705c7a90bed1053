//! `hull check` on this machine and on specs with each risky setting: the
//! real binary, its JSON output, its exit status.

use std::path::Path;
use std::process::Command;

use hull_tests::{prereq, test_dir};
use serde_json::{json, Value};

fn hull_check(args: &[&str]) -> (Option<i32>, Vec<Value>) {
    let out = Command::new(prereq::hull_cli())
        .arg("check")
        .arg("--json")
        .args(args)
        .output()
        .expect("run hull check");
    let results: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "hull check --json printed no JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), results)
}

fn verdicts(results: &[Value], id: &str) -> Vec<String> {
    results
        .iter()
        .filter(|r| r["id"] == id)
        .map(|r| r["verdict"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn host_checks_match_this_machine() {
    prereq::require_kvm();
    let dir = test_dir();
    let config = dir.path().join("config.toml");
    let virtiofsd = prereq::virtiofsd();
    std::fs::write(
        &config,
        format!("kernel = \"/x\"\nvirtiofsd = \"{}\"\n", virtiofsd.display()),
    )
    .unwrap();
    let (_, results) = hull_check(&["--config", config.to_str().unwrap()]);
    assert_eq!(
        verdicts(&results, "H1.1"),
        ["PASS"],
        "KVM opens here: {results:?}"
    );
    let pvm = Path::new("/sys/module/kvm_pvm").exists();
    assert_eq!(
        verdicts(&results, "H1.3"),
        [if pvm { "INFO" } else { "PASS" }]
    );
    assert_eq!(
        verdicts(&results, "H2.1"),
        ["PASS"],
        "hull-jailer is built next to hull"
    );
    assert_eq!(verdicts(&results, "H2.2"), ["PASS"]);
    assert_eq!(verdicts(&results, "H2.3"), ["PASS"]);
    assert_eq!(verdicts(&results, "H2.4"), ["PASS"]);
    assert_eq!(verdicts(&results, "H3.1"), ["PASS"]);
    // virtiofsd started for real, in its namespace sandbox, under seccomp.
    assert_eq!(verdicts(&results, "H7.1"), ["PASS"], "{results:?}");
    for r in &results {
        assert!(
            r["id"].as_str().unwrap().starts_with('H'),
            "a host-only run reported {r}"
        );
        if r["verdict"] != "PASS" {
            assert!(!r["remedy"].as_str().unwrap().is_empty(), "no remedy: {r}");
        }
    }

    std::fs::write(&config, "jail = false\n").unwrap();
    let (_, results) = hull_check(&["--config", config.to_str().unwrap()]);
    assert_eq!(
        verdicts(&results, "H2.4"),
        ["WARN"],
        "jail = false is flagged"
    );

    std::fs::write(&config, "virtiofsd = \"/nonexistent/virtiofsd\"\n").unwrap();
    let (_, results) = hull_check(&["--config", config.to_str().unwrap()]);
    assert_eq!(
        verdicts(&results, "H7.1"),
        ["FAIL"],
        "a missing virtiofsd is flagged: {results:?}"
    );
}

fn write_bundle(dir: &Path, spec: &Value) -> String {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), spec.to_string()).unwrap();
    dir.to_str().unwrap().to_owned()
}

#[test]
fn each_risky_setting_in_a_spec_is_reported() {
    let dir = test_dir();
    let careful = json!({
        "process": {"user": {"uid": 1000, "gid": 1000}, "cwd": "/", "noNewPrivileges": true,
                    "capabilities": {"bounding": ["CAP_CHOWN"]}},
        "root": {"path": "rootfs", "readonly": true},
        "linux": {"namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"},
                                 {"type": "mount"}, {"type": "network"}],
                  "resources": {"memory": {"limit": 1_000_000}, "pids": {"limit": 10}},
                  "seccomp": {"defaultAction": "SCMP_ACT_ERRNO"}, "maskedPaths": ["/proc/kcore"]}
    });
    let bundle = write_bundle(&dir.path().join("careful"), &careful);
    let (status, results) = hull_check(&["--no-host", "--bundle", &bundle]);
    assert_eq!(status, Some(0));
    assert!(
        results.iter().all(|r| r["verdict"] == "PASS"),
        "{results:#?}"
    );

    let risky = json!({
        "process": {"user": {"uid": 0, "gid": 0}, "cwd": "/",
                    "capabilities": {"bounding": ["CAP_CHOWN", "CAP_NET_ADMIN"]}},
        "root": {"path": "rootfs"},
        "mounts": [{"destination": "/var/run/docker.sock", "type": "bind",
                    "source": "/var/run/docker.sock", "options": ["rbind"]}],
        "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}],
                  "devices": [{"path": "/dev/sda", "type": "b", "major": 8, "minor": 0}]}
    });
    let bundle = write_bundle(&dir.path().join("risky"), &risky);
    let (status, results) = hull_check(&["--no-host", "--bundle", &bundle]);
    assert_eq!(status, Some(1), "a FAIL makes hull check exit 1");
    for (id, verdict) in [
        ("C1.1", "PASS"),
        ("C1.2", "FAIL"),
        ("C1.3", "FAIL"),
        ("C2.1", "FAIL"),
        ("C3.1", "INFO"),
        ("C4.2", "WARN"),
        ("C4.3", "WARN"),
        ("C4.4", "WARN"),
        ("C4.5", "WARN"),
        ("C4.6", "INFO"),
        ("C5.1", "WARN"),
        ("C5.2", "WARN"),
    ] {
        assert_eq!(verdicts(&results, id), [verdict], "{id}: {results:#?}");
    }

    let out = Command::new(prereq::hull_cli())
        .args(["check", "--no-host", "--bundle"])
        .arg(dir.path().join("missing"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.contains("missing/config.json"), "{stderr}");

    // A spec the shim could not parse either: the field is named.
    let typo = json!({"process": {"user": {"uid": "root", "gid": 0}, "cwd": "/"}});
    let bundle = write_bundle(&dir.path().join("typo"), &typo);
    let out = Command::new(prereq::hull_cli())
        .args(["check", "--no-host", "--bundle", &bundle])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("process.user.uid: invalid type"),
        "{stderr}"
    );
}

/// `containerd-shim-hull-v2 -v` answers without containerd's environment
/// (operators and `hull check` H5.1 ask it), naming the runtime and version.
#[test]
fn shim_reports_its_version() {
    let shim = prereq::file_from_env(
        "HULL_SHIM",
        "the containerd shim",
        "cargo build -p hull-shim; HULL_SHIM=target/debug/containerd-shim-hull-v2",
    );
    let out = Command::new(&shim)
        .arg("-v")
        .env_remove("TTRPC_ADDRESS")
        .output()
        .expect("run the shim");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{} -v: {out:?}", shim.display());
    assert!(
        text.contains("io.containerd.hull.v2") && text.contains(env!("CARGO_PKG_VERSION")),
        "{} -v: {text}",
        shim.display()
    );
}
