//! `hull bench net`: a container's network, hull against runc in one run on
//! the same containerd, image and CNI network (`ctr run --cni`, the bridge
//! network `./setup.sh` configures): TCP throughput from the host into the
//! container, round-trip latency of one-byte messages over one TCP
//! connection, and what `--cni` adds to the start of a container.
//!
//! The container's side is busybox: `nc -l -e dd of=/dev/null bs=64k` for
//! the throughput (dd reads the socket itself, 64 KiB per call: busybox
//! nc's own 1 KiB reads would measure the guest kernel's syscall cost, a
//! third of the throughput under nested PVM, not the network), `nc -l -e
//! cat` echoing for the latency; the host side is
//! this process. The container prints its address first, so nothing needs
//! to ask containerd or the CNI plugins for it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, ChildStdout, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::machine::{utc_now, Machine};
use super::start::{median, CtrError, CtrTarget};

#[derive(Debug, Clone, clap::Args)]
pub struct NetBenchArgs {
    #[command(flatten)]
    pub target: CtrTarget,
    /// MiB sent into the container for the throughput.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub mib: u32,
    /// One-byte round trips for the latency.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    pub round_trips: u32,
    /// Starts with and without --cni per runtime, for the start cost.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    pub runs: u32,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum NetBenchError {
    #[error(transparent)]
    Ctr(#[from] CtrError),
    #[error("running {what}")]
    Spawn {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} failed: {reason}")]
    Failed { what: String, reason: String },
}

#[derive(Debug, Clone, Serialize)]
pub struct NetRuntime {
    pub runtime: String,
    /// Host → container over TCP, MiB/s.
    pub throughput_mib_s: f64,
    /// One-byte round trips over one TCP connection: median and 99th
    /// percentile, microseconds.
    pub rtt_median_us: u64,
    pub rtt_p99_us: u64,
    /// `ctr run` to the first output, with and without `--cni`: medians, ms.
    pub start_cni_ms: u64,
    pub start_plain_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct NetBenchReport {
    pub machine: Machine,
    pub date: String,
    pub mib: u32,
    pub round_trips: u32,
    pub runs: Vec<NetRuntime>,
}

const RUNTIMES: [(&str, &str); 2] = [
    ("hull", "io.containerd.hull.v2"),
    ("runc", "io.containerd.runc.v2"),
];

/// The container: its address, a sink for the throughput, an echo for the
/// latency.
const SERVER: &str = "ip -o -4 addr show eth0; nc -l -p 5001 -e dd of=/dev/null bs=65536; \
                      echo received; nc -l -p 5002 -e cat; echo done";

pub fn net_bench(
    args: &NetBenchArgs,
    progress: &mut dyn FnMut(&str),
) -> Result<NetBenchReport, NetBenchError> {
    args.target.import_image()?;
    let mut runs = Vec::new();
    for (label, runtime) in RUNTIMES {
        progress(&format!("{label}: throughput and latency"));
        let (throughput_mib_s, rtts) = traffic(args, runtime, &format!("hull-bench-net-{label}"))?;
        progress(&format!("{label}: start with and without --cni"));
        let mut cni = Vec::new();
        let mut plain = Vec::new();
        for run in 0..args.runs {
            cni.push(first_output_ms(
                args,
                runtime,
                true,
                &format!("hull-bench-cni-{label}-{run}"),
            )?);
            plain.push(first_output_ms(
                args,
                runtime,
                false,
                &format!("hull-bench-plain-{label}-{run}"),
            )?);
        }
        let mut sorted = rtts.clone();
        sorted.sort_unstable();
        runs.push(NetRuntime {
            runtime: label.to_owned(),
            throughput_mib_s,
            rtt_median_us: median(&rtts),
            rtt_p99_us: sorted[(sorted.len() * 99 / 100).min(sorted.len() - 1)],
            start_cni_ms: median(&cni),
            start_plain_ms: median(&plain),
        });
    }
    Ok(NetBenchReport {
        machine: Machine::this(),
        date: utc_now(),
        mib: args.mib,
        round_trips: args.round_trips,
        runs,
    })
}

/// `ctr run --rm [--cni] --runtime RUNTIME IMAGE ID sh -c SCRIPT`, its
/// stdout piped.
fn spawn_run(
    args: &NetBenchArgs,
    runtime: &str,
    cni: bool,
    id: &str,
    script: &str,
) -> Result<Child, NetBenchError> {
    let mut cmd = args.target.command();
    cmd.args(["run", "--rm", "--runtime", runtime]);
    if cni {
        cmd.arg("--cni");
    }
    if let (Some(config), true) = (&args.target.config, runtime.contains("hull")) {
        cmd.arg("--runtime-config-path").arg(config);
    }
    cmd.arg(&args.target.image)
        .arg(id)
        .args(["sh", "-c", script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| NetBenchError::Spawn {
            what: format!("ctr run {id}"),
            source,
        })
}

fn failed(what: &str, child: Child) -> NetBenchError {
    let out = child.wait_with_output();
    NetBenchError::Failed {
        what: what.to_owned(),
        reason: out
            .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_owned())
            .unwrap_or_else(|e| e.to_string()),
    }
}

/// One container serving [`SERVER`]: MiB/s into it, and the round trips.
fn traffic(args: &NetBenchArgs, runtime: &str, id: &str) -> Result<(f64, Vec<u64>), NetBenchError> {
    let mut child = spawn_run(args, runtime, true, id, SERVER)?;
    let mut lines = BufReader::new(child.stdout.take().expect("piped"));
    let Some(ip) = read_address(&mut lines) else {
        return Err(failed(&format!("{id}: the container's address"), child));
    };
    // Throughput: everything written, then the container says it has read
    // it all (its dd saw the end of the stream).
    let chunk = vec![0x5a_u8; 1 << 20];
    let mut sink = connect(SocketAddr::new(ip, 5001)).ok_or_else(|| NetBenchError::Failed {
        what: format!("{id}: connecting to {ip}:5001"),
        reason: "no answer within 60 s".into(),
    })?;
    let begun = Instant::now();
    for _ in 0..args.mib {
        sink.write_all(&chunk)
            .map_err(|source| NetBenchError::Spawn {
                what: format!("{id}: sending"),
                source,
            })?;
    }
    let _ = sink.shutdown(std::net::Shutdown::Write);
    if !wait_line(&mut lines, "received") {
        return Err(failed(&format!("{id}: the container's receipt"), child));
    }
    let seconds = begun.elapsed().as_secs_f64();
    drop(sink);
    // Latency: one byte there and back, `round_trips` times.
    let mut echo = connect(SocketAddr::new(ip, 5002)).ok_or_else(|| NetBenchError::Failed {
        what: format!("{id}: connecting to {ip}:5002"),
        reason: "no answer within 60 s".into(),
    })?;
    let _ = echo.set_nodelay(true);
    let mut rtts = Vec::new();
    let mut byte = [0u8; 1];
    for _ in 0..args.round_trips {
        let sent = Instant::now();
        echo.write_all(b"x")
            .and_then(|()| echo.read_exact(&mut byte))
            .map_err(|source| NetBenchError::Spawn {
                what: format!("{id}: a round trip"),
                source,
            })?;
        rtts.push(sent.elapsed().as_micros() as u64);
    }
    drop(echo);
    let out = child
        .wait_with_output()
        .map_err(|source| NetBenchError::Spawn {
            what: format!("ctr run {id}"),
            source,
        })?;
    if !out.status.success() {
        return Err(NetBenchError::Failed {
            what: format!("ctr run {id}"),
            reason: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok((f64::from(args.mib) / seconds, rtts))
}

/// The address in `ip -o -4 addr show eth0`'s line.
fn read_address(lines: &mut BufReader<ChildStdout>) -> Option<std::net::IpAddr> {
    let mut line = String::new();
    lines.read_line(&mut line).ok()?;
    parse_address(&line)
}

fn parse_address(line: &str) -> Option<std::net::IpAddr> {
    let after = line.split(" inet ").nth(1)?;
    after.split('/').next()?.trim().parse().ok()
}

fn wait_line(lines: &mut BufReader<ChildStdout>, wanted: &str) -> bool {
    let mut line = String::new();
    loop {
        line.clear();
        match lines.read_line(&mut line) {
            Ok(0) | Err(_) => return false,
            Ok(_) if line.trim() == wanted => return true,
            Ok(_) => {}
        }
    }
}

/// Connects, retrying while the container's listener is not there yet.
fn connect(addr: SocketAddr) -> Option<TcpStream> {
    let until = Instant::now() + Duration::from_secs(60);
    while Instant::now() < until {
        if let Ok(stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            return Some(stream);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

/// `ctr run --rm [--cni] ... echo ready` to its first output, ms.
fn first_output_ms(
    args: &NetBenchArgs,
    runtime: &str,
    cni: bool,
    id: &str,
) -> Result<u64, NetBenchError> {
    let begun = Instant::now();
    let mut child = spawn_run(args, runtime, cni, id, "echo ready")?;
    let mut stdout = child.stdout.take().expect("piped");
    let mut byte = [0u8; 1];
    let first = matches!(stdout.read(&mut byte), Ok(1)).then(|| begun.elapsed());
    let mut rest = Vec::new();
    let _ = stdout.read_to_end(&mut rest);
    match first {
        Some(first) if child.wait().is_ok_and(|s| s.success()) => Ok(first.as_millis() as u64),
        _ => Err(failed(&format!("ctr run {id}"), child)),
    }
}

pub fn render(report: &NetBenchReport) -> String {
    let m = &report.machine;
    let mut out = format!(
        "hull bench net — machine: {} ({} cores), host Linux {}, {} — {}\n\
         {} MiB host -> container, {} one-byte round trips, CNI bridge\n\n",
        m.cpu_model,
        m.cores,
        m.host_kernel,
        m.kvm(),
        report.date,
        report.mib,
        report.round_trips
    );
    out.push_str(&format!(
        "{:<8} {:>14} {:>14} {:>14} {:>16} {:>16}\n",
        "runtime", "MiB/s", "RTT median", "RTT p99", "start --cni", "start plain"
    ));
    for run in &report.runs {
        out.push_str(&format!(
            "{:<8} {:>14.2} {:>11} us {:>11} us {:>13} ms {:>13} ms\n",
            run.runtime,
            run.throughput_mib_s,
            run.rtt_median_us,
            run.rtt_p99_us,
            run.start_cni_ms,
            run.start_plain_ms
        ));
    }
    if let [hull, runc] = report.runs.as_slice() {
        out.push_str(&format!(
            "\nrunc / hull: throughput x{:.0}, RTT x{:.1}; --cni adds {} ms to a hull start, {} ms to runc's\n",
            runc.throughput_mib_s / hull.throughput_mib_s.max(f64::MIN_POSITIVE),
            hull.rtt_median_us as f64 / runc.rtt_median_us.max(1) as f64,
            hull.start_cni_ms as i64 - hull.start_plain_ms as i64,
            runc.start_cni_ms as i64 - runc.start_plain_ms as i64,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_container_s_address_is_read_from_ip_s_line() {
        let line = "2: eth0    inet 10.88.0.7/16 brd 10.88.255.255 scope global eth0\\       valid_lft forever\n";
        assert_eq!(parse_address(line), Some("10.88.0.7".parse().unwrap()));
        assert_eq!(parse_address("nothing here"), None);
    }
}
