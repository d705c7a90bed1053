//! `hull bench io`: file I/O in a container, on its rootfs and on a
//! volume, hull against runc in one run on the same containerd and image.
//! hull's rootfs is a virtio-blk disk (ext4 in the guest), its volume a
//! host directory shared through virtio-fs (virtiofsd); runc's are the
//! snapshotter's overlay and a bind mount of the same kind of directory.
//!
//! One container per runtime runs every workload in a row (busybox
//! builtins and one process per step, so the guest's process start is not
//! what is measured) and prints a marker after each; this process times the
//! markers as they arrive. Workloads, per location: a sequential write
//! ending in fsync; a cold sequential read of a file the host wrote before
//! the start (volume only: nothing in the image is large); create, stat
//! (`ls -l`) and unlink of many small files.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use serde::Serialize;

use super::machine::{utc_now, Machine};
use super::start::{CtrError, CtrTarget};

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

/// The workloads, in the order the container runs them.
pub const STEPS: [&str; 5] = [
    "seq write + fsync",
    "seq read (cold)",
    "create files",
    "stat files",
    "unlink files",
];

/// One runtime's figures, ms per step; `None` where a step does not
/// apply (the rootfs has no cold file).
#[derive(Debug, Clone, Serialize)]
pub struct IoRuntime {
    pub runtime: String,
    pub rootfs_ms: Vec<Option<f64>>,
    pub volume_ms: Vec<Option<f64>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct IoBenchReport {
    pub machine: Machine,
    pub date: String,
    pub mib: u32,
    pub files: u32,
    pub steps: Vec<String>,
    pub runs: Vec<IoRuntime>,
}

const RUNTIMES: [(&str, &str); 2] = [
    ("hull", "io.containerd.hull.v2"),
    ("runc", "io.containerd.runc.v2"),
];

/// The container's script: `$1` MiB, `$2` files. Each location's steps
/// print a marker when done; `go` before the first.
const SCRIPT: &str = r#"
steps() {
  d=$1; mkdir -p $d; echo go
  dd if=/dev/zero of=$d/seq bs=65536 count=$((MIB * 16)) conv=fsync 2>/dev/null; echo step
  if [ -f $d/cold ]; then cat $d/cold > /dev/null; fi; echo step
  i=0; while [ $i -lt $FILES ]; do : > $d/m$i; i=$((i + 1)); done; echo step
  ls -l $d > /dev/null; echo step
  rm -f $d/m*; echo step
  rm -f $d/seq
}
steps /bench-rootfs
steps /vol/bench
echo end
"#;

pub fn io_bench(
    args: &IoBenchArgs,
    progress: &mut dyn FnMut(&str),
) -> Result<IoBenchReport, IoBenchError> {
    args.target.import_image()?;
    let mut runs = Vec::new();
    for (label, runtime) in RUNTIMES {
        progress(&format!("{label}: rootfs and volume"));
        let volume = tempfile::Builder::new()
            .prefix("hull-bench-io")
            .tempdir_in(&args.scratch)
            .map_err(|source| IoBenchError::Io {
                what: format!("making a volume directory in {}", args.scratch.display()),
                source,
            })?;
        let bench = volume.path().join("bench");
        std::fs::create_dir(&bench)
            .and_then(|()| write_cold_file(&bench.join("cold"), args.mib))
            .map_err(|source| IoBenchError::Io {
                what: "writing the volume's cold file".into(),
                source,
            })?;
        let times = run_steps(args, label, runtime, volume.path())?;
        let (rootfs, vol) = times.split_at(STEPS.len());
        let mut rootfs_ms: Vec<Option<f64>> = rootfs.iter().copied().map(Some).collect();
        rootfs_ms[1] = None;
        runs.push(IoRuntime {
            runtime: label.to_owned(),
            rootfs_ms,
            volume_ms: vol.iter().copied().map(Some).collect(),
        });
    }
    Ok(IoBenchReport {
        machine: Machine::this(),
        date: utc_now(),
        mib: args.mib,
        files: args.files,
        steps: STEPS.iter().map(|s| (*s).to_owned()).collect(),
        runs,
    })
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
    label: &str,
    runtime: &str,
    volume: &Path,
) -> Result<Vec<f64>, IoBenchError> {
    let id = format!("hull-bench-io-{label}");
    let mount = format!(
        "type=bind,src={},dst=/vol,options=rbind:rw",
        volume.display()
    );
    let script = format!("MIB={}; FILES={}; {SCRIPT}", args.mib, args.files);
    let mut cmd = args.target.command();
    cmd.args(["run", "--rm", "--runtime", runtime, "--mount", &mount]);
    if let (Some(config), true) = (&args.target.config, runtime.contains("hull")) {
        cmd.arg("--runtime-config-path").arg(config);
    }
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
    if !out.status.success() || times.len() != 2 * STEPS.len() {
        return Err(IoBenchError::Failed {
            what: format!("ctr run {id}"),
            reason: format!(
                "{} steps timed of {}; {}",
                times.len(),
                2 * STEPS.len(),
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
         {} MiB sequential, {} small files; hull: rootfs virtio-blk (ext4), volume virtio-fs \
         (virtiofsd); runc: overlay, bind mount\n\n",
        m.cpu_model,
        m.cores,
        m.host_kernel,
        m.kvm(),
        report.date,
        report.mib,
        report.files
    );
    let [hull, runc] = report.runs.as_slice() else {
        return out;
    };
    out.push_str(&format!(
        "{:<18} {:>12} {:>12} {:>12} {:>12} {:>10} {:>10} {:>12}\n",
        "ms", "hull blk", "hull fs", "runc rootfs", "runc vol", "blk/runc", "fs/runc", "fs/blk"
    ));
    let cell = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1}"));
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("x{:.1}", a / b),
        _ => "-".to_owned(),
    };
    for (i, step) in report.steps.iter().enumerate() {
        let (hb, hf) = (hull.rootfs_ms[i], hull.volume_ms[i]);
        let (rb, rf) = (runc.rootfs_ms[i], runc.volume_ms[i]);
        out.push_str(&format!(
            "{:<18} {:>12} {:>12} {:>12} {:>12} {:>10} {:>10} {:>12}\n",
            step,
            cell(hb),
            cell(hf),
            cell(rb),
            cell(rf),
            ratio(hb, rb),
            ratio(hf, rf),
            ratio(hf, hb)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_a_row_per_step_and_ratios() {
        let runtime = |name: &str, ms: f64| IoRuntime {
            runtime: name.into(),
            rootfs_ms: vec![Some(ms), None, Some(ms), Some(ms), Some(ms)],
            volume_ms: vec![Some(2.0 * ms); 5],
        };
        let report = IoBenchReport {
            machine: Machine::this(),
            date: "now".into(),
            mib: 1,
            files: 2,
            steps: STEPS.iter().map(|s| (*s).to_owned()).collect(),
            runs: vec![runtime("hull", 100.0), runtime("runc", 1.0)],
        };
        let text = render(&report);
        let row = text
            .lines()
            .find(|l| l.starts_with("create files"))
            .unwrap();
        assert!(row.contains("x100.0") && row.contains("x2.0"), "{row}");
        let cold = text.lines().find(|l| l.starts_with("seq read")).unwrap();
        assert!(cold.contains(" - "), "{cold}");
    }
}
