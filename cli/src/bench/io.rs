//! `hull bench io`: file I/O in a container, on its rootfs and on a
//! volume, hull against runc in one run on the same containerd and image.
//! hull runs twice: its rootfs shared (virtio-fs, the default) and copied
//! into a disk (`rootfs = "block"`, ext4 on virtio-blk in the guest); its
//! volume is a host directory shared through virtio-fs either way. runc's
//! are the snapshotter's overlay and a bind mount of the same kind of
//! directory.
//!
//! One container per variant runs every workload in a row (busybox
//! builtins and one process per step, so the guest's process start is not
//! what is measured) and prints a marker after each; this process times the
//! markers as they arrive. Workloads, per location: a sequential write
//! ending in fsync; random 4 KiB writes (each fsync'd) and reads in that
//! file, or in the volume's cold file, one `dd` per operation (busybox has
//! no random I/O in one process): reported per operation with the start of
//! as many `dd` processes doing nothing subtracted; a cold sequential read
//! of a file the host wrote before the start, and of four files a quarter
//! its size read at once (volume only: nothing in the image is large;
//! the parallel read is what a virtiofsd thread pool could speed up);
//! create, stat (`ls -l`) and unlink of many small files. With `--large-image-tar`,
//! also the start of a large image and the disk each container of it
//! takes ([`large`]).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use serde::Serialize;

use super::machine::{utc_now, Machine};
use super::start::{CtrError, CtrTarget};

mod large;
pub use large::{LargeImage, LargeRun};

#[derive(Debug, Clone, clap::Args)]
pub struct IoBenchArgs {
    #[command(flatten)]
    pub target: CtrTarget,
    /// MiB written (and read) sequentially.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub mib: u32,
    /// Small files created, stat'ed and removed.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub files: u32,
    /// Where the volume's host directory is made (removed after).
    #[arg(long, default_value = "/var/tmp")]
    pub scratch: PathBuf,
    /// A large image's tar (`scripts/busybox-image.py OUT --name NAME
    /// --filler-mib 512`): its start and disk use per container, hull's
    /// shared rootfs against the copied disk and runc.
    #[arg(long)]
    pub large_image_tar: Option<PathBuf>,
    /// The large image's name.
    #[arg(long, default_value = "docker.io/library/busybox:large")]
    pub large_image: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum IoBenchError {
    #[error(transparent)]
    Ctr(#[from] CtrError),
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} failed: {reason}")]
    Failed { what: String, reason: String },
}

/// The workloads, in the order the container runs them. The random steps
/// are reported in ms per operation, net of [`SPAWN`].
pub const STEPS: [&str; 9] = [
    "seq write + fsync",
    "dd start, per op",
    "rand 4K write+fsync/op",
    "rand 4K read, per op",
    "seq read (cold)",
    "4 reads at once (cold)",
    "create files",
    "stat files",
    "unlink files",
];
const SPAWN: usize = 1;
const RAND_WRITE: usize = 2;
const RAND_READ: usize = 3;
const COLD: usize = 4;
const PARALLEL: usize = 5;
/// Files read at once in [`PARALLEL`], each a quarter of the cold file.
const READERS: u32 = 4;
/// Random operations per location.
const RAND_OPS: u32 = 64;

/// One variant's figures, ms per step; `None` where a step does not
/// apply (the rootfs has no cold file); no volume figures for hull's
/// copied-disk variant (its volume is the shared variant's).
#[derive(Debug, Clone, Serialize)]
pub struct IoRuntime {
    pub runtime: String,
    pub rootfs_ms: Vec<Option<f64>>,
    pub volume_ms: Option<Vec<Option<f64>>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct IoBenchReport {
    pub machine: Machine,
    pub date: String,
    pub mib: u32,
    pub files: u32,
    pub steps: Vec<String>,
    /// hull with its rootfs shared, hull with it copied, runc.
    pub runs: Vec<IoRuntime>,
    pub large: Option<LargeImage>,
}

/// One way of running the bench's container.
pub(super) struct Variant {
    pub label: &'static str,
    pub runtime: &'static str,
    /// hull's config; none for runc.
    pub config: Option<PathBuf>,
}

impl Variant {
    /// `--runtime R [--runtime-config-path C]`.
    pub fn runtime_args(&self) -> Vec<String> {
        let mut args = vec!["--runtime".to_owned(), self.runtime.to_owned()];
        if let Some(config) = &self.config {
            args.push("--runtime-config-path".into());
            args.push(config.display().to_string());
        }
        args
    }
}

/// hull with its rootfs shared, hull with it copied into a disk, runc.
fn variants(target: &CtrTarget, dir: &Path) -> Result<Vec<Variant>, CtrError> {
    let hull = "io.containerd.hull.v2";
    let config = |name, mode: &str| target.hull_config(dir, name, &[("rootfs", mode.into())]);
    Ok(vec![
        Variant {
            label: "hull fs",
            runtime: hull,
            config: Some(config("hull-fs.toml", "virtio-fs")?),
        },
        Variant {
            label: "hull blk",
            runtime: hull,
            config: Some(config("hull-blk.toml", "block")?),
        },
        Variant {
            label: "runc",
            runtime: "io.containerd.runc.v2",
            config: None,
        },
    ])
}

/// The container's script: `MIB` MiB, `FILES` files, the volume's steps
/// when `VOL` is 1. Each location's steps print a marker when done; `go`
/// before the first.
const SCRIPT: &str = r#"
ops() {
  i=0; while [ $i -lt $RAND ]; do
    o=$(( (i * 7919) % (MIB * 256) ))
    case $2 in
      w) dd if=/dev/zero of=$1 bs=4096 count=1 seek=$o conv=notrunc,fsync 2>/dev/null ;;
      r) dd if=$1 of=/dev/null bs=4096 count=1 skip=$o 2>/dev/null ;;
      n) dd if=/dev/zero of=/dev/null bs=4096 count=0 2>/dev/null ;;
    esac
    i=$((i + 1))
  done
}
steps() {
  d=$1; mkdir -p $d; echo go
  dd if=/dev/zero of=$d/seq bs=65536 count=$((MIB * 16)) conv=fsync 2>/dev/null; echo step
  ops $d/seq n; echo step
  ops $d/seq w; echo step
  if [ -f $d/cold ]; then ops $d/cold r; else ops $d/seq r; fi; echo step
  if [ -f $d/cold ]; then cat $d/cold > /dev/null; fi; echo step
  if [ -f $d/cold0 ]; then
    for j in 0 1 2 3; do cat $d/cold$j > /dev/null & done; wait
  fi; echo step
  i=0; while [ $i -lt $FILES ]; do : > $d/m$i; i=$((i + 1)); done; echo step
  ls -l $d > /dev/null; echo step
  rm -f $d/m*; echo step
  rm -f $d/seq
}
steps /bench-rootfs
if [ "$VOL" = 1 ]; then steps /vol/bench; fi
echo end
"#;

pub fn io_bench(
    args: &IoBenchArgs,
    progress: &mut dyn FnMut(&str),
) -> Result<IoBenchReport, IoBenchError> {
    args.target.import_image()?;
    let configs = tempfile::tempdir().map_err(|source| IoBenchError::Io {
        what: "making a directory for hull's configs".into(),
        source,
    })?;
    let variants = variants(&args.target, configs.path())?;
    let mut runs = Vec::new();
    for variant in &variants {
        // The copied-disk variant's volume is the same share as the shared
        // variant's: measured once.
        let volume_too = variant.label != "hull blk";
        progress(&format!(
            "{}: rootfs{}",
            variant.label,
            if volume_too { " and volume" } else { "" }
        ));
        let volume = tempfile::Builder::new()
            .prefix("hull-bench-io")
            .tempdir_in(&args.scratch)
            .map_err(|source| IoBenchError::Io {
                what: format!("making a volume directory in {}", args.scratch.display()),
                source,
            })?;
        let bench = volume.path().join("bench");
        let quarter = (args.mib / READERS).max(1);
        std::fs::create_dir(&bench)
            .and_then(|()| write_cold_file(&bench.join("cold"), args.mib))
            .and_then(|()| {
                (0..READERS)
                    .try_for_each(|j| write_cold_file(&bench.join(format!("cold{j}")), quarter))
            })
            .map_err(|source| IoBenchError::Io {
                what: "writing the volume's cold file".into(),
                source,
            })?;
        let times = run_steps(args, variant, volume.path(), volume_too)?;
        let (rootfs, vol) = times.split_at(STEPS.len());
        let mut rootfs_ms = per_op(rootfs);
        rootfs_ms[COLD] = None;
        rootfs_ms[PARALLEL] = None;
        runs.push(IoRuntime {
            runtime: variant.label.to_owned(),
            rootfs_ms,
            volume_ms: volume_too.then(|| per_op(vol)),
        });
    }
    let large = match &args.large_image_tar {
        Some(tar) => Some(large::measure(args, tar, &variants, progress)?),
        None => None,
    };
    Ok(IoBenchReport {
        machine: Machine::this(),
        date: utc_now(),
        mib: args.mib,
        files: args.files,
        steps: STEPS.iter().map(|s| (*s).to_owned()).collect(),
        runs,
        large,
    })
}

/// One location's step times with the random steps made ms per operation,
/// net of a `dd` process's start.
fn per_op(times: &[f64]) -> Vec<Option<f64>> {
    let ops = f64::from(RAND_OPS);
    let spawn = times[SPAWN] / ops;
    times
        .iter()
        .enumerate()
        .map(|(i, &ms)| match i {
            SPAWN => Some(spawn),
            RAND_WRITE | RAND_READ => Some((ms / ops - spawn).max(0.0)),
            _ => Some(ms),
        })
        .collect()
}

fn write_cold_file(path: &Path, mib: u32) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::File::create(path)?;
    let chunk = vec![0x5au8; 1 << 20];
    for _ in 0..mib {
        file.write_all(&chunk)?;
    }
    file.sync_all()
}

/// Runs the script in one container; the time of each step, ms (the
/// rootfs's steps, then the volume's).
fn run_steps(
    args: &IoBenchArgs,
    variant: &Variant,
    volume: &Path,
    volume_too: bool,
) -> Result<Vec<f64>, IoBenchError> {
    let id = format!("hull-bench-io-{}", variant.label.replace(' ', "-"));
    let mount = format!(
        "type=bind,src={},dst=/vol,options=rbind:rw",
        volume.display()
    );
    let script = format!(
        "MIB={}; FILES={}; RAND={RAND_OPS}; VOL={}; {SCRIPT}",
        args.mib,
        args.files,
        u8::from(volume_too)
    );
    let mut cmd = args.target.command();
    cmd.args(["run", "--rm", "--mount", &mount])
        .args(variant.runtime_args());
    let mut child = cmd
        .arg(&args.target.image)
        .arg(&id)
        .args(["sh", "-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| IoBenchError::Io {
            what: format!("running ctr run {id}"),
            source,
        })?;
    let stdout = child.stdout.take().expect("piped");
    let mut times = Vec::new();
    let mut last = None;
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        let now = Instant::now();
        match line.trim() {
            "go" => last = Some(now),
            "step" => {
                if let Some(begun) = last {
                    times.push((now - begun).as_secs_f64() * 1000.0);
                }
                last = Some(now);
            }
            _ => {}
        }
    }
    let out = child
        .wait_with_output()
        .map_err(|source| IoBenchError::Io {
            what: format!("waiting for ctr run {id}"),
            source,
        })?;
    let expected = if volume_too { 2 } else { 1 } * STEPS.len();
    if !out.status.success() || times.len() != expected {
        return Err(IoBenchError::Failed {
            what: format!("ctr run {id}"),
            reason: format!(
                "{} steps timed of {expected}; {}",
                times.len(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(times)
}

pub fn render(report: &IoBenchReport) -> String {
    let m = &report.machine;
    let mut out = format!(
        "hull bench io — machine: {} ({} cores), host Linux {}, {} — {}\n\
         {} MiB sequential, {} small files; hull fs: rootfs and volume virtio-fs (virtiofsd); \
         hull blk: rootfs copied to virtio-blk (ext4); runc: overlay, bind mount\n\n",
        m.cpu_model,
        m.cores,
        m.host_kernel,
        m.kvm(),
        report.date,
        report.mib,
        report.files
    );
    let [fs, blk, runc] = report.runs.as_slice() else {
        return out;
    };
    let cell = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1}"));
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("x{:.1}", a / b),
        _ => "-".to_owned(),
    };
    out.push_str(&format!(
        "{:<24} {:>11} {:>11} {:>11} {:>9} {:>9} {:>9}\n",
        "rootfs, ms", "hull fs", "hull blk", "runc", "fs/runc", "blk/runc", "fs/blk"
    ));
    for (i, step) in report.steps.iter().enumerate() {
        let (f, b, r) = (fs.rootfs_ms[i], blk.rootfs_ms[i], runc.rootfs_ms[i]);
        if f.is_none() && b.is_none() && r.is_none() {
            continue;
        }
        out.push_str(&format!(
            "{:<24} {:>11} {:>11} {:>11} {:>9} {:>9} {:>9}\n",
            step,
            cell(f),
            cell(b),
            cell(r),
            ratio(f, r),
            ratio(b, r),
            ratio(f, b)
        ));
    }
    if let (Some(f), Some(r)) = (&fs.volume_ms, &runc.volume_ms) {
        out.push_str(&format!(
            "\n{:<24} {:>11} {:>11} {:>9} {:>11}\n",
            "volume, ms", "hull fs", "runc", "fs/runc", "vol/blk"
        ));
        for (i, step) in report.steps.iter().enumerate() {
            out.push_str(&format!(
                "{:<24} {:>11} {:>11} {:>9} {:>11}\n",
                step,
                cell(f[i]),
                cell(r[i]),
                ratio(f[i], r[i]),
                ratio(f[i], blk.rootfs_ms[i])
            ));
        }
    }
    if let Some(large) = &report.large {
        out.push('\n');
        out.push_str(&large::render(large));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_a_row_per_step_and_ratios() {
        let runtime = |name: &str, ms: f64, volume: bool| IoRuntime {
            runtime: name.into(),
            rootfs_ms: (0..STEPS.len())
                .map(|i| (i != COLD && i != PARALLEL).then_some(ms))
                .collect(),
            volume_ms: volume.then(|| vec![Some(2.0 * ms); STEPS.len()]),
        };
        let report = IoBenchReport {
            machine: Machine::this(),
            date: "now".into(),
            mib: 1,
            files: 2,
            steps: STEPS.iter().map(|s| (*s).to_owned()).collect(),
            runs: vec![
                runtime("hull fs", 100.0, true),
                runtime("hull blk", 50.0, false),
                runtime("runc", 1.0, true),
            ],
            large: None,
        };
        let text = render(&report);
        let row = text
            .lines()
            .find(|l| l.starts_with("create files"))
            .unwrap();
        // fs/runc, blk/runc, fs/blk
        assert!(
            row.contains("x100.0") && row.contains("x50.0") && row.contains("x2.0"),
            "{row}"
        );
        assert!(
            !text
                .lines()
                .take_while(|l| !l.starts_with("volume"))
                .any(|l| l.starts_with("seq read") || l.starts_with("4 reads")),
            "no cold read on the rootfs: {text}"
        );
        let volume: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.starts_with("volume"))
            .collect();
        let cold = volume.iter().find(|l| l.starts_with("seq read")).unwrap();
        assert!(cold.contains("200.0") && cold.contains("x100.0"), "{cold}");
    }

    #[test]
    fn random_steps_are_per_operation_net_of_a_dd_start() {
        let ops = f64::from(RAND_OPS);
        let mut times = vec![1.0; STEPS.len()];
        times[SPAWN] = 10.0 * ops;
        times[RAND_WRITE] = 30.0 * ops;
        times[RAND_READ] = 5.0 * ops;
        let per_op = per_op(&times);
        assert_eq!(per_op[SPAWN], Some(10.0));
        assert_eq!(per_op[RAND_WRITE], Some(20.0));
        assert_eq!(per_op[RAND_READ], Some(0.0), "never below zero");
        assert_eq!(per_op[0], Some(1.0));
    }
}
