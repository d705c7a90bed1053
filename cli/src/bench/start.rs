//! `hull bench start`: `ctr run` latency to the container's first output,
//! hull against runc in the same run on the same containerd and image, and
//! the memory one running container costs (PSS of the shim, the jailer,
//! the VMM and its virtiofsd processes, the VMM's including the guest RAM
//! the guest actually touched; for runc the shim and the container's
//! process).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hull_sandbox::share::SHARE_BASE;
use hull_sandbox::state::{jail_id, state_dir_for};
use serde::Serialize;

use super::machine::{utc_now, Machine};

/// Where a bench's containers run: containerd, the namespace, the image
/// and hull's config (`hull bench start` and `hull bench net`).
#[derive(Debug, Clone, clap::Args)]
pub struct CtrTarget {
    /// containerd's socket.
    #[arg(long, default_value = "/run/containerd/containerd.sock")]
    pub address: PathBuf,
    /// The containerd namespace the bench's containers live in.
    #[arg(long, default_value = "hull-bench")]
    pub namespace: String,
    /// The image (it must be imported in the namespace: ./setup.sh imports
    /// docker.io/library/busybox:hull into `default`; the bench imports it
    /// from --image-tar when given).
    #[arg(long, default_value = "docker.io/library/busybox:hull")]
    pub image: String,
    /// An image tar to import first (scripts/busybox-image.py writes one).
    #[arg(long)]
    pub image_tar: Option<PathBuf>,
    /// hull's config, passed as --runtime-config-path.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// `ctr`.
    #[arg(long, default_value = "ctr")]
    pub ctr: PathBuf,
}

/// A `ctr` call that did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum CtrError {
    #[error("running {what}")]
    Spawn {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} failed: {stderr}")]
    Failed { what: String, stderr: String },
    #[error("{path} is not a valid hull config")]
    Config {
        path: PathBuf,
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error("{what}")]
    Write {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl CtrTarget {
    /// `ctr -a ADDRESS -n NAMESPACE`, for the arguments to follow.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.ctr);
        cmd.arg("-a")
            .arg(&self.address)
            .arg("-n")
            .arg(&self.namespace);
        cmd
    }

    /// `ctr ARGS`, which must succeed: its stdout.
    pub fn run(&self, args: &[&str]) -> Result<String, CtrError> {
        let what = format!("ctr {}", args.join(" "));
        let out = self
            .command()
            .args(args)
            .output()
            .map_err(|source| CtrError::Spawn {
                what: what.clone(),
                source,
            })?;
        if !out.status.success() {
            return Err(CtrError::Failed {
                what,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// hull's config (`--config`, else /etc/hull/config.toml when there is
    /// one) with `overrides`, written as `dir/name` for a variant to pass
    /// as `--runtime-config-path`.
    pub fn hull_config(
        &self,
        dir: &Path,
        name: &str,
        overrides: &[(&str, toml::Value)],
    ) -> Result<PathBuf, CtrError> {
        let base = self
            .config
            .clone()
            .unwrap_or_else(|| PathBuf::from("/etc/hull/config.toml"));
        let text = match std::fs::read_to_string(&base) {
            Ok(text) => text,
            Err(_) if self.config.is_none() => String::new(),
            Err(source) => {
                return Err(CtrError::Write {
                    what: format!("reading {}", base.display()),
                    source,
                })
            }
        };
        let mut table: toml::Table = text.parse().map_err(|source| CtrError::Config {
            path: base.clone(),
            source: Box::new(source),
        })?;
        for (key, value) in overrides {
            table.insert((*key).into(), value.clone());
        }
        let config = dir.join(name);
        std::fs::write(&config, table.to_string()).map_err(|source| CtrError::Write {
            what: format!("writing {}", config.display()),
            source,
        })?;
        Ok(config)
    }

    /// Kills container `id`'s task, waits until it can be deleted, deletes
    /// it and the container: what a bench leaves goes, whatever failed.
    pub fn force_remove(&self, id: &str) {
        let _ = self.run(&["task", "kill", "-s", "SIGKILL", id]);
        for _ in 0..300 {
            if self.run(&["task", "rm", id]).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = self.run(&["container", "rm", id]);
    }

    /// Imports `--image-tar`, when given, into the bench's namespace.
    pub fn import_image(&self) -> Result<(), CtrError> {
        if let Some(tar) = &self.image_tar {
            self.run(&["image", "import", &tar.display().to_string()])?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct StartBenchArgs {
    #[command(flatten)]
    pub target: CtrTarget,
    /// Runs per runtime.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub runs: u32,
    /// Sandboxes started side by side for the memory figure: their PSS is
    /// summed (pages they share count once) and divided by their number.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub clones: u32,
    /// Leave out hull's cold boot (templates off), the slowest variant.
    #[arg(long)]
    pub no_cold: bool,
    /// Also draw the phases and the memory as an SVG chart into this file.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StartBenchError {
    #[error(transparent)]
    Ctr(#[from] CtrError),
    #[error("running {what}")]
    Spawn {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} failed: {stderr}")]
    Failed { what: String, stderr: String },
    #[error("{what}: no {process} process found")]
    NoProcess { what: String, process: &'static str },
}

#[derive(Debug, Clone, Serialize)]
pub struct RuntimeStart {
    /// What was measured: `hull, template`, `hull, cold boot` or `runc`.
    pub label: String,
    pub runtime: String,
    /// `ctr run` start to the container's first byte of output, per run.
    pub first_output_ms: Vec<u64>,
    /// `ctr run --rm` start to its exit (the container removed), per run.
    pub total_ms: Vec<u64>,
    /// PSS of the host processes of `sandboxes` running containers, by
    /// process.
    pub pss_kib: Vec<(String, u64)>,
    /// How many containers ran side by side for `pss_kib`.
    pub sandboxes: u32,
    /// Their summed PSS divided by their number.
    pub pss_per_sandbox_kib: u64,
    /// Where hull's start goes, from the shim's own marks (see
    /// [`PHASES`]): per phase, its duration in each run, in milliseconds.
    pub phases: Vec<(String, Vec<u64>)>,
}

/// hull's start, phase by phase: (the shim's mark that ends it, what it
/// is). The first phase starts when `ctr run` is started, the last ends at
/// the container's first byte of output; a phase whose mark is missing (a
/// cold boot has no `clone`) counts 0.
pub const PHASES: &[(&str, &str)] = &[
    ("create", "ctr, containerd, shim start"),
    ("spec", "config, spec, policy, VM size"),
    ("hooks", "network namespace, host hooks (Docker's)"),
    ("disks", "rootfs (shared, or a disk)"),
    ("share", "shared directory (virtiofsd), with binds"),
    ("template", "template found (or built)"),
    ("agent", "VM restored or booted, agent answers"),
    ("clone", "clone prepared (time, entropy)"),
    ("created", "container created in the guest"),
    ("started", "container started"),
    ("", "to the first byte of output"),
];

/// One timed `ctr run --rm`.
struct Timed {
    first_ms: u64,
    total_ms: u64,
    /// Wall clock, nanoseconds since the epoch: `ctr run` started, and its
    /// first byte of output.
    started_ns: u128,
    first_ns: u128,
}

fn unix_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// The durations of [`PHASES`] in one run, from the shim's marks.
fn phase_durations(marks: &[(String, u128)], timed: &Timed) -> Vec<u64> {
    let at = |name: &str| marks.iter().find(|(m, _)| m == name).map(|(_, t)| *t);
    let mut previous = timed.started_ns;
    PHASES
        .iter()
        .map(|(mark, _)| {
            let end = if mark.is_empty() {
                Some(timed.first_ns)
            } else {
                at(mark)
            };
            match end {
                Some(end) => {
                    let ms = end.saturating_sub(previous) / 1_000_000;
                    previous = end;
                    ms as u64
                }
                None => 0,
            }
        })
        .collect()
}

/// The shim's marks for container `id` in the phase log.
fn marks_of(log: &std::path::Path, id: &str) -> Vec<(String, u128)> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|v| v["id"] == id)
        .and_then(|v| {
            v["marks"].as_array().map(|marks| {
                marks
                    .iter()
                    .filter_map(|m| Some((m[0].as_str()?.to_owned(), m[1].as_u64()? as u128)))
                    .collect()
            })
        })
        .unwrap_or_default()
}

#[derive(Debug, Clone, Serialize)]
pub struct StartBenchReport {
    pub machine: Machine,
    pub date: String,
    /// hull from its template, hull booting cold (unless `--no-cold`), runc.
    pub runs: Vec<RuntimeStart>,
    /// Median first-output latency and memory per sandbox, each variant
    /// against runc and cold against template: (what, latency ×, memory ×).
    pub ratios: Vec<(String, f64, f64)>,
}

pub(super) fn median(values: &[u64]) -> u64 {
    let mut v = values.to_vec();
    v.sort_unstable();
    v[v.len() / 2]
}

struct Ctr<'a> {
    args: &'a StartBenchArgs,
}

impl Ctr<'_> {
    fn command(&self) -> Command {
        self.args.target.command()
    }

    fn run(&self, args: &[&str]) -> Result<String, StartBenchError> {
        Ok(self.args.target.run(args)?)
    }

    fn runtime_args(&self, variant: &Variant) -> Vec<String> {
        let mut args = vec!["--runtime".to_owned(), variant.runtime.to_owned()];
        if let Some(config) = &variant.config {
            args.push("--runtime-config-path".into());
            args.push(config.display().to_string());
        }
        args
    }

    /// One `ctr run --rm`, timed to its first output and to its exit.
    fn timed_run(&self, variant: &Variant, id: &str) -> Result<Timed, StartBenchError> {
        let what = format!("ctr run ({})", variant.label);
        let started = Instant::now();
        let started_ns = unix_ns();
        let mut child = self
            .command()
            .arg("run")
            .arg("--rm")
            .args(self.runtime_args(variant))
            .arg(&self.args.target.image)
            .arg(id)
            .args(["echo", "ready"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| StartBenchError::Spawn {
                what: what.clone(),
                source,
            })?;
        let mut stdout = child.stdout.take().expect("piped");
        let mut byte = [0u8; 1];
        let first = match stdout.read(&mut byte) {
            Ok(1) => started.elapsed(),
            _ => Duration::ZERO,
        };
        let first_ns = unix_ns();
        let mut rest = Vec::new();
        let _ = stdout.read_to_end(&mut rest);
        let out = child
            .wait_with_output()
            .map_err(|source| StartBenchError::Spawn {
                what: what.clone(),
                source,
            })?;
        if !out.status.success() || first.is_zero() {
            return Err(StartBenchError::Failed {
                what,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(Timed {
            first_ms: first.as_millis() as u64,
            total_ms: started.elapsed().as_millis() as u64,
            started_ns,
            first_ns,
        })
    }
}

/// Processes whose command line contains `needle`, or whose `--config FILE`
/// does (the shim starts `hull-vmm --config <state dir>/vmm.json`), with
/// their names.
pub(super) fn processes_with(needle: &str) -> Vec<(u32, String)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let config = args
                .windows(2)
                .find(|pair| pair[0] == "--config")
                .and_then(|pair| std::fs::read_to_string(&pair[1]).ok())
                .unwrap_or_default();
            (args.join(" ").contains(needle) || config.contains(needle)).then(|| {
                let name = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .unwrap_or_default()
                    .trim()
                    .to_owned();
                (pid, name)
            })
        })
        .collect()
}

/// The PSS of `pid` in KiB (smaps_rollup).
pub(super) fn pss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// `count` detached containers that sleep, started one after the other;
/// the PSS of all their host processes once they run (after a settle), then
/// they are removed. Pages the sandboxes share (a template's memory) are
/// divided among them by PSS, so the sum counts them once.
fn running_cost(
    ctr: &Ctr,
    variant: &Variant,
    tag: &str,
    count: u32,
) -> Result<Vec<(String, u64)>, StartBenchError> {
    let ids: Vec<String> = (0..count)
        .map(|i| format!("bench-{tag}-mem{i:02}"))
        .collect();
    let mut started = Vec::new();
    let result = (|| {
        for id in &ids {
            let mut args = vec!["run".to_owned(), "-d".to_owned()];
            args.extend(ctr.runtime_args(variant));
            args.extend([
                ctr.args.target.image.clone(),
                id.clone(),
                "sleep".into(),
                "600".into(),
            ]);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            started.push(id.clone());
            ctr.run(&args)?;
        }
        std::thread::sleep(Duration::from_secs(2));
        let mut seen = std::collections::BTreeSet::new();
        let mut cost = Vec::new();
        let mut add = |pid: u32, name: String, cost: &mut Vec<(String, u64)>| {
            if seen.insert(pid) {
                cost.push((format!("{name} ({pid})"), pss_kib(pid)));
            }
        };
        for id in &ids {
            // The shim names the container id; hull's jailer and VMM (in
            // its config) name its rootfs disk in the bundle; runc's
            // container process is a child of its shim.
            let before = cost.len();
            for (pid, name) in processes_with(&format!("-id {id}")) {
                add(pid, name, &mut cost);
                if variant.runtime.contains("runc") {
                    let children =
                        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                            .unwrap_or_default();
                    for child in children
                        .split_whitespace()
                        .filter_map(|c| c.parse::<u32>().ok())
                    {
                        add(child, "container".into(), &mut cost);
                    }
                }
            }
            for (pid, name) in processes_with(&format!("/{id}/rootfs.img")) {
                add(pid, name, &mut cost);
            }
            // Its virtiofsd processes (the rootfs's share and the binds'),
            // named by the sandbox's jail id.
            let jail = jail_id(&state_dir_for(&ctr.args.target.namespace, id));
            for (pid, name) in processes_with(&format!("{SHARE_BASE}/{jail}")) {
                add(pid, name, &mut cost);
            }
            if cost.len() == before {
                return Err(StartBenchError::NoProcess {
                    what: format!("{} container {id}", variant.label),
                    process: "shim",
                });
            }
        }
        Ok(cost)
    })();
    // All killed first: they end side by side.
    for id in &started {
        let _ = ctr.run(&["task", "kill", "-s", "SIGKILL", id]);
    }
    for id in &started {
        ctr.args.target.force_remove(id);
    }
    result
}

/// One way of starting a container that the bench measures.
struct Variant {
    label: &'static str,
    /// Short, for container ids.
    tag: &'static str,
    runtime: &'static str,
    /// hull's config (`--runtime-config-path`); none for runc.
    config: Option<PathBuf>,
}

/// One variant: a warm-up run (it builds hull's template if there is none
/// yet), `--runs` timed runs, then the memory of `--clones` running.
fn measure(
    ctr: &Ctr,
    variant: &Variant,
    phase_log: &std::path::Path,
    progress: &mut dyn FnMut(&str),
) -> Result<RuntimeStart, StartBenchError> {
    let args = ctr.args;
    let mut first = Vec::new();
    let mut total = Vec::new();
    let mut per_run = Vec::new();
    if variant.tag != "cold" {
        let timed = ctr.timed_run(variant, &format!("bench-{}-warm", variant.tag))?;
        progress(&format!(
            "{}: warm-up run, first output {} ms",
            variant.label, timed.first_ms
        ));
    }
    for run in 0..args.runs {
        let id = format!("bench-{}-{run}", variant.tag);
        let timed = ctr.timed_run(variant, &id)?;
        let (f, t) = (timed.first_ms, timed.total_ms);
        progress(&format!(
            "{} run {}: first output {f} ms, done {t} ms",
            variant.label,
            run + 1
        ));
        first.push(f);
        total.push(t);
        if variant.config.is_some() {
            per_run.push(phase_durations(&marks_of(phase_log, &id), &timed));
        }
    }
    let pss = running_cost(ctr, variant, variant.tag, args.clones)?;
    let sum: u64 = pss.iter().map(|(_, k)| k).sum();
    progress(&format!(
        "{}: {} running containers cost {sum} KiB PSS",
        variant.label, args.clones
    ));
    let phases = if per_run.is_empty() {
        Vec::new()
    } else {
        PHASES
            .iter()
            .enumerate()
            .map(|(i, (_, what))| ((*what).to_owned(), per_run.iter().map(|r| r[i]).collect()))
            .collect()
    };
    Ok(RuntimeStart {
        label: variant.label.into(),
        runtime: variant.runtime.into(),
        first_output_ms: first,
        total_ms: total,
        pss_kib: pss,
        sandboxes: args.clones,
        pss_per_sandbox_kib: sum / u64::from(args.clones),
        phases,
    })
}

pub fn start_bench(
    args: &StartBenchArgs,
    progress: &mut dyn FnMut(&str),
) -> Result<StartBenchReport, StartBenchError> {
    let scratch = tempfile::tempdir().map_err(|source| StartBenchError::Spawn {
        what: "a scratch directory".into(),
        source,
    })?;
    let phase_log = scratch.path().join("phases.jsonl");
    let ctr = Ctr { args };
    args.target.import_image()?;
    let hull = "io.containerd.hull.v2";
    let mut variants = vec![Variant {
        label: "hull, template",
        tag: "tmpl",
        runtime: hull,
        config: Some(bench_config(args, scratch.path(), &phase_log, true)?),
    }];
    if !args.no_cold {
        variants.push(Variant {
            label: "hull, cold boot",
            tag: "cold",
            runtime: hull,
            config: Some(bench_config(args, scratch.path(), &phase_log, false)?),
        });
    }
    variants.push(Variant {
        label: "runc",
        tag: "runc",
        runtime: "io.containerd.runc.v2",
        config: None,
    });
    let runs = variants
        .iter()
        .map(|variant| measure(&ctr, variant, &phase_log, progress))
        .collect::<Result<Vec<_>, _>>()?;
    let ratio = |a: &RuntimeStart, b: &RuntimeStart| {
        (
            format!("{} / {}", a.label, b.label),
            median(&a.first_output_ms) as f64 / median(&b.first_output_ms).max(1) as f64,
            a.pss_per_sandbox_kib as f64 / b.pss_per_sandbox_kib.max(1) as f64,
        )
    };
    let runc = runs.last().expect("runc is measured");
    let mut ratios: Vec<_> = runs[..runs.len() - 1]
        .iter()
        .map(|r| ratio(r, runc))
        .collect();
    if runs.len() == 3 {
        ratios.push(ratio(&runs[1], &runs[0]));
    }
    let report = StartBenchReport {
        machine: Machine::this(),
        date: utc_now(),
        runs,
        ratios,
    };
    if let Some(path) = &args.plot {
        std::fs::write(path, super::plot::start_svg(&report)).map_err(|source| {
            StartBenchError::Spawn {
                what: format!("writing {}", path.display()),
                source,
            }
        })?;
        progress(&format!("chart written to {}", path.display()));
    }
    Ok(report)
}

/// hull's config for one variant: `--config` (or /etc/hull/config.toml
/// when it exists, else the defaults) with `phase_log` and `templates` set.
fn bench_config(
    args: &StartBenchArgs,
    dir: &Path,
    log: &Path,
    templates: bool,
) -> Result<PathBuf, StartBenchError> {
    let name = if templates {
        "hull-template.toml"
    } else {
        "hull-cold.toml"
    };
    let overrides = [
        ("phase_log", log.display().to_string().into()),
        ("templates", templates.into()),
    ];
    Ok(args.target.hull_config(dir, name, &overrides)?)
}

pub fn render(r: &StartBenchReport) -> String {
    let m = &r.machine;
    let mut out = format!(
        "hull bench start — machine: {} ({} cores), host Linux {}, {} — {}\n",
        m.cpu_model,
        m.cores,
        m.host_kernel,
        m.kvm(),
        r.date
    );
    for rt in &r.runs {
        out.push_str(&format!(
            "{:<16} first output median {:>6} ms {:?}   ctr run --rm median {:>6} ms   {} running: {} KiB PSS each ({})\n",
            rt.label,
            median(&rt.first_output_ms),
            rt.first_output_ms,
            median(&rt.total_ms),
            rt.sandboxes,
            rt.pss_per_sandbox_kib,
            rt.pss_kib
                .iter()
                .map(|(n, k)| format!("{n} {k}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        for (what, runs) in &rt.phases {
            out.push_str(&format!(
                "    {what:<40} median {:>6} ms {runs:?}\n",
                median(runs)
            ));
        }
    }
    for (what, latency, memory) in &r.ratios {
        out.push_str(&format!(
            "{what}: start latency ×{latency:.2}, memory per running container ×{memory:.2}\n"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_account_for_the_whole_start() {
        let ms = 1_000_000u128;
        let marks: Vec<(String, u128)> = [
            ("create", 100),
            ("spec", 102),
            ("hooks", 110),
            ("disks", 150),
            ("template", 151),
            ("agent", 800),
            ("created", 8_000),
            ("started", 8_100),
        ]
        .iter()
        .map(|(m, t)| (m.to_string(), t * ms))
        .collect();
        let timed = Timed {
            first_ms: 8_200,
            total_ms: 9_000,
            started_ns: 0,
            first_ns: 8_200 * ms,
        };
        let phases = phase_durations(&marks, &timed);
        assert_eq!(phases, [100, 2, 8, 40, 0, 1, 649, 0, 7_200, 100, 100]);
        assert_eq!(phases.iter().sum::<u64>(), timed.first_ms);
    }

    #[test]
    fn median_and_pss_of_a_real_process() {
        assert_eq!(median(&[5, 1, 3]), 3);
        assert_eq!(median(&[7]), 7);
        assert!(
            pss_kib(std::process::id()) > 0,
            "this test process has a PSS"
        );
        let me = std::fs::read(format!("/proc/{}/cmdline", std::process::id())).unwrap();
        let arg0 = String::from_utf8_lossy(me.split(|b| *b == 0).next().unwrap()).into_owned();
        assert!(processes_with(&arg0)
            .iter()
            .any(|(pid, _)| *pid == std::process::id()));
    }
}
