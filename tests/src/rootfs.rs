//! A container root filesystem for the guest: Debian's busybox-static
//! (`/bin/busybox` and a symlink per applet), an `/etc/passwd` and
//! `/etc/group` with a non-root user, in a sparse ext4 image made with
//! `mkfs.ext4 -d` (no root, no loop device).

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::child;
use crate::prereq::host_tool;

/// The non-root user in the image.
pub const USER: (&str, u32, u32) = ("user", 1000, 1000);
/// A supplementary group of [`USER`].
pub const EXTRA_GID: u32 = 2000;
const BUSYBOX: &str = "/bin/busybox";
const TOOL_TIMEOUT: Duration = Duration::from_secs(60);
const IMAGE_MIB: u64 = 32;

/// Builds `<dir>/busybox-rootfs.img` and returns its path.
pub fn busybox_image(dir: &Path) -> PathBuf {
    let busybox = Path::new(BUSYBOX);
    assert!(
        busybox.is_file(),
        "{BUSYBOX} not found: install busybox-static (./setup.sh does)"
    );
    let tree = dir.join("busybox-rootfs");
    for sub in [
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "etc",
        "proc",
        "sys",
        "dev",
        "tmp",
        "run",
        "root",
        "home/user",
    ] {
        std::fs::create_dir_all(tree.join(sub)).expect("creating a rootfs directory");
    }
    std::fs::copy(busybox, tree.join("bin/busybox")).expect("copying busybox");

    let list = child::capture(
        {
            let mut cmd = Command::new(busybox);
            cmd.arg("--list-full");
            cmd
        },
        dir,
        "busybox-list",
        TOOL_TIMEOUT,
    );
    assert!(
        list.status.success(),
        "busybox --list-full: {}",
        list.stderr
    );
    let mut applets = 0;
    for applet in list.stdout.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let link = tree.join(applet);
        if applet == "bin/busybox" || link.exists() {
            continue;
        }
        if let Some(parent) = link.parent() {
            std::fs::create_dir_all(parent).expect("creating an applet directory");
        }
        symlink("/bin/busybox", &link).expect("linking an applet");
        applets += 1;
    }
    assert!(applets > 100, "only {applets} busybox applets");

    let (name, uid, gid) = USER;
    std::fs::write(
        tree.join("etc/passwd"),
        format!(
            "root:x:0:0:root:/root:/bin/sh\n{name}:x:{uid}:{gid}:{name}:/home/{name}:/bin/sh\n"
        ),
    )
    .expect("writing /etc/passwd");
    std::fs::write(
        tree.join("etc/group"),
        format!("root:x:0:\n{name}:x:{gid}:\nextra:x:{EXTRA_GID}:{name}\n"),
    )
    .expect("writing /etc/group");

    let image = dir.join("busybox-rootfs.img");
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(IMAGE_MIB << 20))
        .expect("creating the sparse image");
    let mut mkfs = Command::new(host_tool("mkfs.ext4", "e2fsprogs"));
    // Inode tables and journal written now, on the host, not lazily by the
    // emulated guest kernel.
    mkfs.args([
        "-q",
        "-F",
        "-E",
        "lazy_itable_init=0,lazy_journal_init=0",
        "-d",
    ])
    .arg(&tree)
    .arg(&image);
    let done = child::capture(mkfs, dir, "mkfs-busybox", TOOL_TIMEOUT);
    assert!(done.status.success(), "mkfs.ext4 -d: {}", done.stderr);
    std::fs::remove_dir_all(&tree).expect("removing the rootfs tree");
    image
}
