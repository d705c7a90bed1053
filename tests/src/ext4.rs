//! ext4 disk images made and read on the host with e2fsprogs, so a test can
//! check what the guest wrote without mounting anything (no root needed).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::child;
use crate::prereq::host_tool;

/// e2fsprogs on a small image is quick; this only guards against a hang.
const TOOL_TIMEOUT: Duration = Duration::from_secs(60);
/// Quiet, no questions; inode tables and the journal written now, on the
/// host: with lazy init the guest kernel would zero them in the background,
/// in emulated kernel mode.
const MKFS_FLAGS: [&str; 4] = ["-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"];

/// Make a sparse ext4 image `<dir>/<name>.img` of `size_mib` MiB holding
/// `files` (name, content) in its root directory.
pub fn make_image(dir: &Path, name: &str, size_mib: u64, files: &[(&str, &[u8])]) -> PathBuf {
    let content = dir.join(format!("{name}.content"));
    std::fs::create_dir(&content).expect("creating the image content directory");
    for (file, data) in files {
        std::fs::write(content.join(file), data).expect("writing an image file");
    }
    let image = dir.join(format!("{name}.img"));
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(size_mib << 20))
        .expect("creating the sparse image file");
    let mut mkfs = Command::new(host_tool("mkfs.ext4", "e2fsprogs"));
    mkfs.args(MKFS_FLAGS).arg("-d").arg(&content).arg(&image);
    let done = child::capture(mkfs, dir, &format!("mkfs-{name}"), TOOL_TIMEOUT);
    assert!(
        done.status.success(),
        "mkfs.ext4 {} failed: {}",
        image.display(),
        done.stderr
    );
    image
}

/// The content of `path` in `image` (`debugfs -R "cat PATH"`), or `None`
/// if it is not there.
pub fn read_file(image: &Path, path: &str) -> Option<Vec<u8>> {
    let scratch = image.parent().expect("an image path has a directory");
    let mut debugfs = Command::new(host_tool("debugfs", "e2fsprogs"));
    debugfs.arg("-R").arg(format!("cat {path}")).arg(image);
    let done = child::capture(debugfs, scratch, "debugfs", TOOL_TIMEOUT);
    assert!(
        done.status.success(),
        "debugfs on {} failed: {}",
        image.display(),
        done.stderr
    );
    // debugfs exits 0 for a missing file and says so on stderr.
    if done.stderr.contains("not found") {
        None
    } else {
        Some(done.stdout.into_bytes())
    }
}

/// `e2fsck -fn`: the filesystem in `image` is consistent (read-only check).
pub fn assert_consistent(image: &Path) {
    let scratch = image.parent().expect("an image path has a directory");
    let mut fsck = Command::new(host_tool("e2fsck", "e2fsprogs"));
    fsck.arg("-fn").arg(image);
    let done = child::capture(fsck, scratch, "e2fsck", TOOL_TIMEOUT);
    assert!(
        done.status.success(),
        "e2fsck -fn {} found problems ({:?}):\n{}{}",
        image.display(),
        done.status,
        done.stdout,
        done.stderr
    );
}
