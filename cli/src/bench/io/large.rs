//! The large-image part of `hull bench io`: how long `ctr run --rm IMAGE
//! true` takes (against the same with the bench's small image) and how
//! much disk one running container of the image takes,
//! for hull's shared rootfs (nothing copied: the snapshot's upper
//! directory), hull's copied disk (`rootfs.img` in the bundle, plus the
//! upper directory) and runc (the upper directory). The image is built
//! without a registry: `scripts/busybox-image.py OUT --name NAME
//! --filler-mib 512`.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use super::{IoBenchArgs, IoBenchError, Variant};
use crate::bench::start::median;

/// Timed runs per variant.
const RUNS: usize = 2;

#[derive(Debug, Clone, Serialize)]
pub struct LargeRun {
    pub runtime: String,
    /// `ctr run --rm IMAGE ID true`, start to exit, each run.
    pub run_ms: Vec<u64>,
    /// The same with the small image (`--image`).
    pub small_run_ms: Vec<u64>,
    /// Bytes allocated on the host for one running container beyond the
    /// image's shared layers.
    pub disk_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LargeImage {
    pub image: String,
    /// The image tar's size.
    pub tar_bytes: u64,
    pub runs: Vec<LargeRun>,
}

pub(super) fn measure(
    args: &IoBenchArgs,
    tar: &Path,
    variants: &[Variant],
    progress: &mut dyn FnMut(&str),
) -> Result<LargeImage, IoBenchError> {
    let target = &args.target;
    let tar_bytes = std::fs::metadata(tar)
        .map_err(|source| IoBenchError::Io {
            what: format!("reading {}", tar.display()),
            source,
        })?
        .len();
    progress(&format!("importing {}", tar.display()));
    target.run(&["image", "import", &tar.display().to_string()])?;
    let mut runs = Vec::new();
    for variant in variants {
        let tag = variant.label.replace(' ', "-");
        let timed = |image: &str, size: &str| -> Result<Vec<u64>, IoBenchError> {
            let mut ms = Vec::new();
            for run in 0..RUNS {
                let id = format!("hull-bench-{size}-{tag}-{run}");
                let started = Instant::now();
                let mut call = vec!["run".to_owned(), "--rm".to_owned()];
                call.extend(variant.runtime_args());
                call.extend([image.to_owned(), id, "true".into()]);
                target.run(&call.iter().map(String::as_str).collect::<Vec<_>>())?;
                ms.push(started.elapsed().as_millis() as u64);
            }
            Ok(ms)
        };
        let small_run_ms = timed(&target.image, "small")?;
        let run_ms = timed(&args.large_image, "large")?;
        let disk_bytes = running_disk_use(args, variant, &format!("hull-bench-large-{tag}-d"))?;
        progress(&format!(
            "{}: large image runs {run_ms:?} ms (small {small_run_ms:?}), {} MiB of disk per \
             container",
            variant.label,
            disk_bytes >> 20
        ));
        runs.push(LargeRun {
            runtime: variant.label.to_owned(),
            run_ms,
            small_run_ms,
            disk_bytes,
        });
    }
    Ok(LargeImage {
        image: args.large_image.clone(),
        tar_bytes,
        runs,
    })
}

/// Starts a container of the large image that sleeps, measures what it
/// allocated on the host (its snapshot's upper directory, and the disk
/// image hull built in its bundle), and removes it.
fn running_disk_use(args: &IoBenchArgs, variant: &Variant, id: &str) -> Result<u64, IoBenchError> {
    let target = &args.target;
    let mut call = vec!["run".to_owned(), "-d".to_owned()];
    call.extend(variant.runtime_args());
    call.extend([args.large_image.clone(), id.to_owned()]);
    call.extend(["sleep".into(), "600".into()]);
    let started = target.run(&call.iter().map(String::as_str).collect::<Vec<_>>());
    let measured = started.map_err(IoBenchError::from).and_then(|_| {
        let mounts = target.run(&["snapshots", "mounts", "/mnt", id])?;
        let upper = mounts
            .split([',', ' ', '\n'])
            .find_map(|o| o.strip_prefix("upperdir="))
            .map(PathBuf::from)
            .ok_or_else(|| IoBenchError::Failed {
                what: format!("ctr snapshots mounts {id}"),
                reason: format!("no overlay upper directory in {mounts:?}"),
            })?;
        // containerd's state directory holds its socket by default.
        let bundle = target
            .address
            .parent()
            .unwrap_or(Path::new("/run/containerd"))
            .join("io.containerd.runtime.v2.task")
            .join(&target.namespace)
            .join(id);
        Ok(allocated(&upper) + allocated(&bundle.join("rootfs.img")))
    });
    target.force_remove(id);
    measured
}

/// Bytes allocated to `path` and, for a directory, everything under it
/// (symlinks not followed).
fn allocated(path: &Path) -> u64 {
    let Ok(meta) = path.symlink_metadata() else {
        return 0;
    };
    let mut total = meta.blocks() * 512;
    if meta.is_dir() {
        if let Ok(entries) = std::fs::read_dir(path) {
            total += entries
                .filter_map(Result::ok)
                .map(|e| allocated(&e.path()))
                .sum::<u64>();
        }
    }
    total
}

pub(super) fn render(large: &LargeImage) -> String {
    let mut out = format!(
        "large image {} ({} MiB tar): ctr run --rm true (median of {RUNS}), against the small \
         image, and disk per running container:\n",
        large.image,
        large.tar_bytes >> 20
    );
    let runc = large.runs.iter().find(|r| r.runtime == "runc");
    for run in &large.runs {
        let ms = median(&run.run_ms);
        let vs_runc = runc
            .filter(|r| r.runtime != run.runtime)
            .map(|r| {
                format!(
                    " (x{:.1} runc)",
                    ms as f64 / median(&r.run_ms).max(1) as f64
                )
            })
            .unwrap_or_default();
        let small = median(&run.small_run_ms);
        out.push_str(&format!(
            "{:<10} {:>8} ms{:<16} small {:>6} ms (large x{:.2}) {:>9.1} MiB\n",
            run.runtime,
            ms,
            vs_runc,
            small,
            ms as f64 / small.max(1) as f64,
            run.disk_bytes as f64 / f64::from(1 << 20)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_counts_a_tree_and_a_missing_path_is_zero() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        std::fs::write(dir.path().join("d/f"), vec![1u8; 64 << 10]).unwrap();
        assert!(allocated(dir.path()) >= 64 << 10);
        assert_eq!(allocated(&dir.path().join("gone")), 0);
    }

    #[test]
    fn the_large_table_has_a_line_per_runtime_with_ratios() {
        let run = |name: &str, ms: u64, mib: u64| LargeRun {
            runtime: name.into(),
            run_ms: vec![ms, ms],
            small_run_ms: vec![ms / 2, ms / 2],
            disk_bytes: mib << 20,
        };
        let text = render(&LargeImage {
            image: "big".into(),
            tar_bytes: 512 << 20,
            runs: vec![
                run("hull fs", 1000, 0),
                run("hull blk", 4000, 700),
                run("runc", 100, 0),
            ],
        });
        assert!(text.contains("(512 MiB tar)"), "{text}");
        let blk = text.lines().find(|l| l.starts_with("hull blk")).unwrap();
        assert!(
            blk.contains("x40.0 runc") && blk.contains("large x2.00") && blk.contains("700.0 MiB"),
            "{blk}"
        );
    }
}
