//! `hull bench boot`: how long hull takes to boot a microVM to a ready
//! agent, how much memory the VMM itself uses, and how QEMU's microvm does
//! with the same guest, measured on this machine and printed next to the
//! machine and the date, so figures in the README can be re-run.
//!
//! Three measurements, in this order:
//! 1. `--runs` sequential boots exactly as `hull boot` does them (`quiet`
//!    console), VMM start to agent ready; while each VM is up, the VMM's
//!    resident memory without guest RAM ([`smaps`]).
//! 2. The comparison, `--qemu-runs` boots of each VMM with the same kernel,
//!    initramfs, kernel command line and console setting, timed from VMM
//!    start to the agent's console line [`marker`]. QEMU cannot reach the
//!    agent (no hybrid vsock), so both are timed to that line. The agent logs
//!    it at info level, which `quiet` hides: both run with kernel messages on
//!    the console (`--verbose-boot` for hull, the same command line without
//!    `quiet` for QEMU). The command line is asked of hull-vmm
//!    ([`kernel_cmdline`]), so it is exactly what this build adds.
//! 3. On nested PVM QEMU stops at the first instruction KVM cannot emulate:
//!    the report then carries QEMU's error instead of a ratio.

mod console;
pub mod io;
mod kernel_cmdline;
mod machine;
pub mod net;
mod plot;
pub mod pod;
mod qemu;
mod smaps;
pub mod start;
mod table;

use std::path::PathBuf;
use std::time::Duration;

use hull_sandbox::vmm_process::{VmmProcess, VmmSpec};
use serde::Serialize;

use crate::boot::{boot_once_with, BootError, BootReport};
use crate::paths::{self, PathError};
use console::MarkerWatch;
pub use kernel_cmdline::CmdlineError;
pub use machine::Machine;
use qemu::{QemuRun, QemuSpec};
pub use smaps::{SmapsError, VmmRss};
pub use table::render;

/// How long hull's console may lag behind the agent answering.
const MARKER_GRACE: Duration = Duration::from_secs(5);

/// The console line both VMMs are timed to (agent/src/server.rs logs it
/// once the agent API is served).
pub fn marker() -> String {
    format!(
        "hull-agent: serving the agent API on {}",
        hull_protocol::AGENT_VSOCK_ADDRESS
    )
}

#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// Boot time and VMM memory of hull, and QEMU microvm with the same guest.
    Boot(BootBenchArgs),
    /// `ctr run` latency to first output and memory per running container,
    /// hull against runc on the same containerd.
    Start(start::StartBenchArgs),
    /// A container's network through `ctr run --cni`: throughput and
    /// latency from the host, and what the network adds to a start, hull
    /// against runc.
    Net(net::NetBenchArgs),
    /// File I/O on a container's rootfs and on a volume (virtio-blk and
    /// virtio-fs), hull against runc.
    Io(io::IoBenchArgs),
    /// Kubernetes pods through containerd's CRI: start of the first and
    /// further containers, memory per pod of 1, 2, 4 containers, hull
    /// against runc.
    Pod(pod::PodBenchArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct BootBenchArgs {
    /// Guest kernel (default: $HULL_KERNEL or /usr/local/share/hull/vmlinux).
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// Initramfs with the agent (default: $HULL_INITRAMFS or /usr/local/share/hull/initramfs.cpio).
    #[arg(long)]
    pub initramfs: Option<PathBuf>,
    /// hull-vmm binary (default: $HULL_VMM, next to hull, or on PATH).
    #[arg(long)]
    pub vmm: Option<PathBuf>,
    /// QEMU binary for the comparison.
    #[arg(long, default_value = "qemu-system-x86_64")]
    pub qemu: PathBuf,
    /// Sequential hull boots to agent ready.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub runs: u32,
    #[arg(long, default_value_t = 1)]
    pub vcpus: u8,
    #[arg(long, default_value_t = 128)]
    pub memory_mib: u32,
    /// Boots of QEMU, and of hull, to the console marker (0: no comparison).
    #[arg(long, default_value_t = 1)]
    pub qemu_runs: u32,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Seconds each boot may take.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Path(#[from] PathError),
    #[error(transparent)]
    Start(#[from] start::StartBenchError),
    #[error(transparent)]
    Net(#[from] net::NetBenchError),
    #[error(transparent)]
    Io(#[from] io::IoBenchError),
    #[error(transparent)]
    Pod(#[from] pod::PodBenchError),
    #[error("starting the async runtime")]
    Runtime(#[source] std::io::Error),
    #[error("hull boot {run} of {runs}")]
    Boot {
        run: u32,
        runs: u32,
        #[source]
        source: BootError,
    },
    #[error("measuring the VMM's memory in boot {run}")]
    Rss {
        run: u32,
        #[source]
        source: SmapsError,
    },
    #[error("the VMM of boot {run} was gone before its memory could be measured")]
    VmmGone { run: u32 },
    #[error("finding the guest's kernel command line")]
    Cmdline(#[from] CmdlineError),
    #[error("hull's console did not show {marker:?} when the agent answered (comparison boot {run}); console: {}", .console.join(" | "))]
    Marker {
        run: u32,
        marker: String,
        console: Vec<String>,
    },
    #[error("creating the scratch directory {path}")]
    Scratch {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What `hull bench boot --json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct BootBenchReport {
    pub machine: Machine,
    /// When the bench ran, UTC.
    pub date: String,
    pub guest: Guest,
    pub hull: HullFigures,
    /// Absent with `--qemu-runs 0`.
    pub comparison: Option<Comparison>,
    pub qemu: QemuFigures,
    /// hull / QEMU, medians to the console marker; null unless QEMU booted.
    pub ratio: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Guest {
    pub vcpus: u8,
    pub memory_mib: u32,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    /// As the agent reported it.
    pub guest_kernel: String,
    pub agent_version: String,
}

/// hull booted as `hull boot` does, VMM start to agent ready.
#[derive(Debug, Clone, Serialize)]
pub struct HullFigures {
    pub runs: u32,
    pub boot_ms: Vec<u64>,
    pub median_ms: u64,
    pub min_ms: u64,
    pub max_ms: u64,
    /// max - min.
    pub spread_ms: u64,
    /// The VMM's resident memory without guest RAM, while up.
    pub rss_kib: Vec<u64>,
    pub rss_kib_median: u64,
    /// The guest RAM the VMM had resident at the same moment.
    pub guest_rss_kib_median: u64,
}

/// Both VMMs with the same guest, kernel messages on, timed to [`marker`].
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub marker: String,
    pub kernel_cmdline: String,
    pub qemu_command: String,
    pub hull_marker_ms: Vec<u64>,
    pub hull_marker_median_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum QemuStatus {
    Ok,
    Failed,
    Skipped,
}

#[derive(Debug, Clone, Serialize)]
pub struct QemuFigures {
    pub status: QemuStatus,
    /// Why QEMU did not reach the marker (its own words where it had any).
    pub error: Option<String>,
    /// QEMU start to its failure.
    pub failed_after_ms: Option<u64>,
    /// The guest's last console lines under QEMU, when it failed.
    pub console_tail: Vec<String>,
    pub runs_ms: Vec<u64>,
    pub median_ms: Option<u64>,
}

/// Run one bench subcommand; its output (table or JSON) is returned, and
/// each step is reported to `progress` as it ends.
pub fn run(command: &BenchCommand, progress: &mut dyn FnMut(&str)) -> Result<String, BenchError> {
    match command {
        BenchCommand::Boot(args) => {
            let report = boot_bench(args, progress)?;
            Ok(if args.json {
                let mut json = serde_json::to_string(&report).expect("the report serializes");
                json.push('\n');
                json
            } else {
                render(&report)
            })
        }
        BenchCommand::Start(args) => {
            let report = start::start_bench(args, progress)?;
            Ok(if args.json {
                serde_json::to_string(&report).expect("the report serializes") + "\n"
            } else {
                start::render(&report)
            })
        }
        BenchCommand::Net(args) => {
            let report = net::net_bench(args, progress)?;
            Ok(if args.json {
                serde_json::to_string(&report).expect("the report serializes") + "\n"
            } else {
                net::render(&report)
            })
        }
        BenchCommand::Io(args) => {
            let report = io::io_bench(args, progress)?;
            Ok(if args.json {
                serde_json::to_string(&report).expect("the report serializes") + "\n"
            } else {
                io::render(&report)
            })
        }
        BenchCommand::Pod(args) => {
            let report = pod::pod_bench(args, progress)?;
            Ok(if args.json {
                serde_json::to_string(&report).expect("the report serializes") + "\n"
            } else {
                pod::render(&report)
            })
        }
    }
}

/// `hull bench boot`.
pub fn boot_bench(
    args: &BootBenchArgs,
    progress: &mut dyn FnMut(&str),
) -> Result<BootBenchReport, BenchError> {
    let spec = VmmSpec {
        vmm_binary: paths::vmm(args.vmm.as_deref())?,
        kernel: paths::kernel(args.kernel.as_deref(), args.vcpus)?,
        initramfs: paths::initramfs(args.initramfs.as_deref())?,
        vcpus: args.vcpus,
        memory_mib: args.memory_mib,
        kernel_args: Vec::new(),
        drives: Vec::new(),
        console_log: false,
        verbose_boot: false,
        jail: None,
        seccomp: None,
        snapshot_file: None,
        restore_from: None,
        network: None,
        fs: Vec::new(),
    };
    let timeout = Duration::from_secs(args.timeout);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(BenchError::Runtime)?;
    let machine = Machine::this();
    let date = machine::utc_now();

    let guest_bytes = u64::from(args.memory_mib) << 20;
    let (mut boot_ms, mut rss, mut guest_rss, mut last) =
        (Vec::new(), Vec::new(), Vec::new(), None);
    for run in 1..=args.runs {
        let mut measured = None;
        let report = runtime
            .block_on(boot_once_with(
                &spec,
                paths::new_state_dir("bench"),
                timeout,
                |vmm| measured = Some(vmm.pid().map(|pid| smaps::read(pid, guest_bytes))),
            ))
            .map_err(|source| BenchError::Boot {
                run,
                runs: args.runs,
                source,
            })?;
        let vmm_rss = match measured.flatten() {
            Some(result) => result.map_err(|source| BenchError::Rss { run, source })?,
            None => return Err(BenchError::VmmGone { run }),
        };
        progress(&format!(
            "hull boot {run}/{}: {} ms to agent ready; VMM RSS {} KiB without guest RAM ({} KiB resident)",
            args.runs, report.boot_ms, vmm_rss.vmm_kib, vmm_rss.guest_kib
        ));
        boot_ms.push(report.boot_ms);
        rss.push(vmm_rss.vmm_kib);
        guest_rss.push(vmm_rss.guest_kib);
        last = Some(report);
    }
    let last: BootReport = last.expect("at least one run");
    let boots = Summary::of(&boot_ms);
    let hull = HullFigures {
        runs: args.runs,
        median_ms: boots.median,
        min_ms: boots.min,
        max_ms: boots.max,
        spread_ms: boots.max - boots.min,
        boot_ms,
        rss_kib_median: Summary::of(&rss).median,
        rss_kib: rss,
        guest_rss_kib_median: Summary::of(&guest_rss).median,
    };

    let (comparison, qemu) = if args.qemu_runs == 0 {
        (None, QemuFigures::skipped())
    } else {
        let (comparison, qemu) = compare(args, &spec, &runtime, machine.nested_pvm, progress)?;
        (Some(comparison), qemu)
    };
    let ratio = match (&comparison, qemu.median_ms) {
        (Some(c), Some(q)) if q > 0 => Some(c.hull_marker_median_ms as f64 / q as f64),
        _ => None,
    };
    Ok(BootBenchReport {
        machine,
        date,
        guest: Guest {
            vcpus: spec.vcpus,
            memory_mib: spec.memory_mib,
            kernel: spec.kernel,
            initramfs: spec.initramfs,
            guest_kernel: last.guest_kernel,
            agent_version: last.agent_version,
        },
        hull,
        comparison,
        qemu,
        ratio,
    })
}

/// Both VMMs with kernel messages on, timed to the agent's console line.
fn compare(
    args: &BootBenchArgs,
    spec: &VmmSpec,
    runtime: &tokio::runtime::Runtime,
    nested_pvm: bool,
    progress: &mut dyn FnMut(&str),
) -> Result<(Comparison, QemuFigures), BenchError> {
    let timeout = Duration::from_secs(args.timeout);
    let marker = marker();
    let spec = VmmSpec {
        console_log: true,
        verbose_boot: true,
        jail: None,
        seccomp: None,
        snapshot_file: None,
        restore_from: None,
        network: None,
        fs: Vec::new(),
        ..spec.clone()
    };
    let cmdline = kernel_cmdline::probe(
        &spec.vmm_binary,
        &spec.kernel,
        &spec.initramfs,
        spec.vcpus,
        spec.memory_mib,
        spec.verbose_boot,
    )?;
    progress(&format!("guest kernel command line: {cmdline}"));

    let mut hull_ms = Vec::new();
    for run in 1..=args.qemu_runs {
        let state_dir = paths::new_state_dir("bench");
        let watch = MarkerWatch::start(state_dir.join("console.log"), marker.clone());
        let mut seen: Option<Result<u64, Vec<String>>> = None;
        let hook = |vmm: &VmmProcess| {
            seen = Some(match watch.wait(MARKER_GRACE) {
                Some(at) => Ok(at.duration_since(vmm.started()).as_millis() as u64),
                None => Err(vmm.console_tail(5)),
            });
        };
        runtime
            .block_on(boot_once_with(&spec, state_dir, timeout, hook))
            .map_err(|source| BenchError::Boot {
                run,
                runs: args.qemu_runs,
                source,
            })?;
        let ms = seen
            .expect("the hook ran")
            .map_err(|console| BenchError::Marker {
                run,
                marker: marker.clone(),
                console,
            })?;
        progress(&format!(
            "hull to marker {run}/{}: {ms} ms (kernel messages on)",
            args.qemu_runs
        ));
        hull_ms.push(ms);
    }

    let qemu_spec = QemuSpec {
        binary: args.qemu.clone(),
        kernel: spec.kernel.clone(),
        initramfs: spec.initramfs.clone(),
        vcpus: spec.vcpus,
        memory_mib: spec.memory_mib,
        cmdline: cmdline.clone(),
        nested_pvm,
    };
    let scratch = paths::new_state_dir("bench-qemu");
    std::fs::create_dir_all(&scratch).map_err(|source| BenchError::Scratch {
        path: scratch.clone(),
        source,
    })?;
    let qemu_command = shell_words(
        std::iter::once(qemu_spec.binary.clone().into_os_string())
            .chain(qemu::args(&qemu_spec, &scratch.join("qemu-serial.log"))),
    );
    let mut qemu = QemuFigures {
        status: QemuStatus::Ok,
        error: None,
        failed_after_ms: None,
        console_tail: Vec::new(),
        runs_ms: Vec::new(),
        median_ms: None,
    };
    for run in 1..=args.qemu_runs {
        match qemu::run_to_marker(&qemu_spec, &scratch, &marker, timeout) {
            QemuRun::Marker { ms } => {
                progress(&format!("QEMU to marker {run}/{}: {ms} ms", args.qemu_runs));
                qemu.runs_ms.push(ms);
            }
            QemuRun::Failed {
                error,
                after_ms,
                console_tail,
            } => {
                progress(&format!(
                    "QEMU run {run}/{} failed after {after_ms} ms: {error}",
                    args.qemu_runs
                ));
                // Later runs would fail the same way; the failure is the result.
                qemu.status = QemuStatus::Failed;
                qemu.error = Some(error);
                qemu.failed_after_ms = Some(after_ms);
                qemu.console_tail = console_tail;
                qemu.runs_ms.clear();
                break;
            }
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    if qemu.status == QemuStatus::Ok {
        qemu.median_ms = Some(Summary::of(&qemu.runs_ms).median);
    }
    let comparison = Comparison {
        marker,
        kernel_cmdline: cmdline,
        qemu_command,
        hull_marker_median_ms: Summary::of(&hull_ms).median,
        hull_marker_ms: hull_ms,
    };
    Ok((comparison, qemu))
}

impl QemuFigures {
    fn skipped() -> Self {
        Self {
            status: QemuStatus::Skipped,
            error: None,
            failed_after_ms: None,
            console_tail: Vec::new(),
            runs_ms: Vec::new(),
            median_ms: None,
        }
    }
}

/// Median (the mean of the middle two for an even count), min and max.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Summary {
    median: u64,
    min: u64,
    max: u64,
}

impl Summary {
    /// `values` must not be empty.
    fn of(values: &[u64]) -> Self {
        let mut sorted = values.to_vec();
        sorted.sort_unstable();
        let n = sorted.len();
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2
        };
        Self {
            median,
            min: sorted[0],
            max: sorted[n - 1],
        }
    }
}

/// A command line to show (and paste into a shell), quoting where needed.
fn shell_words(words: impl Iterator<Item = std::ffi::OsString>) -> String {
    let quote = |word: std::ffi::OsString| {
        let word = word.to_string_lossy().into_owned();
        if !word.is_empty()
            && word
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c))
        {
            word
        } else {
            format!("'{}'", word.replace('\'', r"'\''"))
        }
    };
    words.map(quote).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_min_max() {
        assert_eq!(
            Summary::of(&[30, 10, 20]),
            Summary {
                median: 20,
                min: 10,
                max: 30
            }
        );
        assert_eq!(Summary::of(&[40, 10]).median, 25);
    }

    #[test]
    fn the_marker_is_the_agents_serving_line() {
        assert_eq!(
            marker(),
            "hull-agent: serving the agent API on vsock://-1:1024"
        );
    }

    #[test]
    fn shell_words_quote_what_needs_it() {
        let words = ["qemu", "-append", "console=ttyS0 quiet", "it's"].map(Into::into);
        assert_eq!(
            shell_words(words.into_iter()),
            r"qemu -append 'console=ttyS0 quiet' 'it'\''s'"
        );
    }
}
