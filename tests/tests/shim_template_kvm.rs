//! Sandboxes started from a VM template through `ctr run`: the first
//! container of its kind boots and leaves a template; the next ones are
//! restored from it, two at the same time, each a clone of its own (its own
//! boot id and random numbers, the host's time); a damaged template is
//! refused, the sandbox boots instead and the template is built again;
//! each clone has only its own hostname and rootfs; a
//! changed initramfs makes a new template instead of using the old one. Needs KVM, containerd 1.7 (its `ctr run --hostname`)
//! and the shim; leaves nothing behind but the templates, which live in
//! the test's directory.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use hull_tests::containerd::{hull_config, stdout_ok, Containerd, Engine};
use hull_tests::{prereq, test_dir};

/// What a clone reports about itself: its boot id, random bytes, time,
/// hostname, and the markers in its rootfs after leaving its own (a clone
/// that saw another's rootfs would list two).
const REPORT: &str = "cat /proc/sys/kernel/random/boot_id; \
    head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; date +%s; \
    hostname; touch /marker-$(hostname); echo /marker-*";

#[derive(Debug)]
struct Clone {
    boot_id: String,
    random: String,
    time: u64,
    hostname: String,
    markers: String,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("time")
        .as_secs()
}

/// `ctr run` a clone named `id`, its hostname `id` too.
fn report(containerd: &Containerd, id: &str) -> (Clone, u64, u64) {
    let before = now();
    let out = containerd.run(id, &["--hostname", id], &["sh", "-c", REPORT]);
    let after = now();
    let text = stdout_ok(&out, &format!("ctr run {id}"));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "{id}: {text:?}");
    let clone = Clone {
        boot_id: lines[0].to_owned(),
        random: lines[1].to_owned(),
        time: lines[2]
            .parse()
            .unwrap_or_else(|_| panic!("{id}: date: {text:?}")),
        hostname: lines[3].to_owned(),
        markers: lines[4].to_owned(),
    };
    (clone, before, after)
}

fn templates(dir: &Path) -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.path().join("snapshot.bin").is_file())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

#[test]
fn ctr_sandboxes_restore_from_a_template_as_distinct_clones_kvm() {
    prereq::require_kvm();
    let dir = test_dir();
    let containerd = Containerd::start(Engine::Containerd17, dir.path());
    let template_dir = dir.path().join("templates");
    let config = format!(
        "{}template_dir = \"{}\"\n",
        hull_config(),
        template_dir.display()
    );
    containerd.set_hull_config(&config);

    // The first container boots the template, then restores from it.
    let (first, ..) = report(&containerd, "first");
    let built = templates(&template_dir);
    assert_eq!(
        built.len(),
        1,
        "one template after the first run: {built:?}"
    );

    // Two more at once, both restored from that template.
    let clones: Vec<(Clone, u64, u64)> = std::thread::scope(|scope| {
        let runs: Vec<_> = ["clone-a", "clone-b"]
            .iter()
            .map(|id| {
                let containerd = &containerd;
                scope.spawn(move || report(containerd, id))
            })
            .collect();
        runs.into_iter()
            .map(|r| r.join().expect("a ctr run thread panicked"))
            .collect()
    });
    assert_eq!(
        templates(&template_dir),
        built,
        "no new template for the same kind"
    );
    let log = containerd.log();
    let restored = log.matches("sandbox restored from a template").count();
    assert!(
        restored >= 3,
        "3 restores expected, the shim logged {restored}:\n{log}"
    );

    let all: Vec<&Clone> = std::iter::once(&first)
        .chain(clones.iter().map(|c| &c.0))
        .collect();
    for (i, a) in all.iter().enumerate() {
        for b in &all[i + 1..] {
            assert_ne!(a.boot_id, b.boot_id, "two clones share a boot id: {all:?}");
            assert_ne!(
                a.random, b.random,
                "two clones share random numbers: {all:?}"
            );
        }
    }
    for (id, clone) in ["first", "clone-a", "clone-b"].iter().zip(&all) {
        assert_eq!(&clone.hostname, id, "a clone's hostname: {all:?}");
        assert_eq!(
            clone.markers,
            format!("/marker-{id}"),
            "a clone sees another's rootfs: {all:?}"
        );
    }
    for (clone, before, after) in &clones {
        assert!(
            *before <= clone.time && clone.time <= after + 1,
            "a clone's clock says {}, the host's was {before}..{after}",
            clone.time
        );
    }

    // A damaged template: the VMM refuses it, the sandbox boots instead,
    // and the template goes, to be built again by the next sandbox.
    let snapshot = template_dir.join(&built[0]).join("snapshot.bin");
    let mut bytes = std::fs::read(&snapshot).expect("reading the template");
    let at = bytes.len() - 4096 * 100;
    bytes[at] ^= 0x5a;
    std::fs::write(&snapshot, bytes).expect("damaging the template");
    let (damaged, ..) = report(&containerd, "damaged");
    assert_ne!(damaged.boot_id, first.boot_id);
    let log = containerd.log();
    assert!(
        log.contains("guest memory does not match its digest")
            && log.contains("restoring from the template failed, booting instead"),
        "the damaged template's refusal and the cold boot are not in the log:\n{log}"
    );
    assert!(
        templates(&template_dir).is_empty(),
        "the damaged template is still there"
    );
    let (rebuilt, ..) = report(&containerd, "rebuilt");
    assert_eq!(
        templates(&template_dir),
        built,
        "the template is built again"
    );
    assert_ne!(rebuilt.boot_id, damaged.boot_id);

    // Another initramfs: a new template, never the old one.
    let other = dir.path().join("other.cpio");
    let mut cpio = std::fs::read(prereq::agent_initramfs()).expect("the initramfs");
    cpio.extend_from_slice(&[0u8; 512]);
    std::fs::write(&other, cpio).expect("writing the other initramfs");
    let product = prereq::agent_initramfs().display().to_string();
    containerd.set_hull_config(&config.replace(&product, &other.display().to_string()));
    let (changed, ..) = report(&containerd, "changed");
    let now_built = templates(&template_dir);
    assert_eq!(
        now_built.len(),
        2,
        "a second template for the new initramfs: {now_built:?}"
    );
    assert_ne!(changed.boot_id, first.boot_id);

    for id in [
        "first", "clone-a", "clone-b", "damaged", "rebuilt", "changed",
    ] {
        let _ = containerd.ctr(&["container", "rm", id]);
    }
    containerd.assert_nothing_left();
}
