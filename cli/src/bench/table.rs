//! The table `hull bench boot` prints (`--json` prints the report itself).

use std::fmt::Write;

use super::{BootBenchReport, QemuStatus, Summary};

/// The table `hull bench boot` prints.
pub fn render(r: &BootBenchReport) -> String {
    let mut out = String::new();
    let m = &r.machine;
    let g = &r.guest;
    let _ = writeln!(out, "hull bench boot, {}", r.date);
    let _ = writeln!(
        out,
        "machine: {} ({} cores), host Linux {}, {}",
        m.cpu_model,
        m.cores,
        m.host_kernel,
        m.kvm()
    );
    let _ = writeln!(
        out,
        "guest:   Linux {}, hull-agent {}, {} vCPU, {} MiB",
        g.guest_kernel, g.agent_version, g.vcpus, g.memory_mib
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<40} {:>4} {:>9} {:>9} {:>9} {:>9}",
        "", "runs", "median", "min", "max", "spread"
    );
    let h = &r.hull;
    let _ = writeln!(
        out,
        "{:<40} {:>4} {:>6} ms {:>6} ms {:>6} ms {:>6} ms",
        "hull: VMM start -> agent ready", h.runs, h.median_ms, h.min_ms, h.max_ms, h.spread_ms
    );
    let _ = writeln!(
        out,
        "{:<40} {:>4} {:>5} KiB   (guest RAM resident: {} KiB)",
        "hull: VMM RSS without guest RAM", h.runs, h.rss_kib_median, h.guest_rss_kib_median
    );
    let Some(c) = &r.comparison else {
        let _ = writeln!(out, "\nQEMU comparison skipped (--qemu-runs 0)");
        return out;
    };
    let _ = writeln!(
        out,
        "\nSame kernel, initramfs, command line and console (kernel messages on),\n\
         timed from VMM start to the console line {:?}:",
        c.marker
    );
    let hs = Summary::of(&c.hull_marker_ms);
    let _ = writeln!(
        out,
        "{:<40} {:>4} {:>6} ms {:>6} ms {:>6} ms {:>6} ms",
        "hull: VMM start -> marker",
        c.hull_marker_ms.len(),
        hs.median,
        hs.min,
        hs.max,
        hs.max - hs.min
    );
    let q = &r.qemu;
    match (q.status, q.median_ms) {
        (QemuStatus::Ok, Some(_)) => {
            let qs = Summary::of(&q.runs_ms);
            let _ = writeln!(
                out,
                "{:<40} {:>4} {:>6} ms {:>6} ms {:>6} ms {:>6} ms",
                "QEMU microvm: start -> marker",
                q.runs_ms.len(),
                qs.median,
                qs.min,
                qs.max,
                qs.max - qs.min
            );
        }
        _ => {
            let _ = writeln!(
                out,
                "{:<40} failed after {} ms: {}",
                "QEMU microvm: start -> marker",
                q.failed_after_ms.unwrap_or(0),
                q.error.as_deref().unwrap_or("unknown")
            );
            if !q.console_tail.is_empty() {
                let _ = writeln!(out, "  guest console under QEMU ended with:");
                for line in &q.console_tail {
                    let _ = writeln!(out, "    {line}");
                }
            }
        }
    }
    match r.ratio {
        Some(ratio) => {
            let _ = writeln!(out, "ratio hull/QEMU (medians to marker): {ratio:.2}");
        }
        None => {
            let _ = writeln!(
                out,
                "ratio hull/QEMU: none (QEMU did not boot this guest here; hull did)"
            );
        }
    }
    let _ = writeln!(out, "\nguest command line: {}", c.kernel_cmdline);
    let _ = writeln!(out, "QEMU command:       {}", c.qemu_command);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::{Comparison, Guest, HullFigures, Machine, QemuFigures};

    fn report(qemu: QemuFigures, ratio: Option<f64>) -> BootBenchReport {
        BootBenchReport {
            machine: Machine {
                cpu_model: "AMD EPYC".into(),
                cores: 2,
                host_kernel: "6.18".into(),
                nested_pvm: true,
            },
            date: "2026-11-23T11:32:06Z".into(),
            guest: Guest {
                vcpus: 1,
                memory_mib: 128,
                kernel: "/k".into(),
                initramfs: "/i".into(),
                guest_kernel: "6.1.192".into(),
                agent_version: "0.1.0".into(),
            },
            hull: HullFigures {
                runs: 2,
                boot_ms: vec![24302, 24570],
                median_ms: 24436,
                min_ms: 24302,
                max_ms: 24570,
                spread_ms: 268,
                rss_kib: vec![6208, 6120],
                rss_kib_median: 6164,
                guest_rss_kib_median: 19642,
            },
            comparison: Some(Comparison {
                marker: "hull-agent: serving".into(),
                kernel_cmdline: "console=ttyS0".into(),
                qemu_command: "qemu-system-x86_64 -M microvm".into(),
                hull_marker_ms: vec![25192],
                hull_marker_median_ms: 25192,
            }),
            qemu,
            ratio,
        }
    }

    #[test]
    fn a_failed_qemu_shows_its_error_and_no_ratio() {
        let text = render(&report(
            QemuFigures {
                status: QemuStatus::Failed,
                error: Some("KVM internal error. Suberror: 1".into()),
                failed_after_ms: Some(7903),
                console_tail: vec!["x86/fpu: x87 FPU will use FXSAVE".into()],
                runs_ms: Vec::new(),
                median_ms: None,
            },
            None,
        ));
        assert!(text.contains("hull: VMM start -> agent ready              2  24436 ms"));
        assert!(text.contains("6164 KiB"));
        assert!(text.contains("failed after 7903 ms: KVM internal error. Suberror: 1"));
        assert!(text.contains("    x86/fpu: x87 FPU will use FXSAVE"));
        assert!(text.contains("ratio hull/QEMU: none"));
    }

    #[test]
    fn a_booted_qemu_gives_a_ratio() {
        let text = render(&report(
            QemuFigures {
                status: QemuStatus::Ok,
                error: None,
                failed_after_ms: None,
                console_tail: Vec::new(),
                runs_ms: vec![50384],
                median_ms: Some(50384),
            },
            Some(0.5),
        ));
        assert!(text.contains("QEMU microvm: start -> marker               1  50384 ms"));
        assert!(text.contains("ratio hull/QEMU (medians to marker): 0.50"));
    }
}
