//! `hull bench start --plot FILE`: the start bench as an SVG chart, drawn
//! by hand (a few rectangles and labels need no plotting library).
//!
//! Two panels: where each variant's start goes (one bar per variant, hull's
//! bars stacked by the shim's phases, medians over the runs), and the host
//! memory one running sandbox costs.

use std::fmt::Write;

use super::start::{median, RuntimeStart, StartBenchReport, PHASES};

const WIDTH: f64 = 960.0;
const LABEL_W: f64 = 150.0;
const BAR_W: f64 = 650.0;
const BAR_H: f64 = 26.0;
const ROW_H: f64 = 40.0;

/// One colour per phase of [`PHASES`], then runc's.
const COLOURS: &[&str] = &[
    "#9e9e9e", "#bdbdbd", "#8d6e63", "#ffb74d", "#42a5f5", "#26c6da", "#ef5350", "#ab47bc",
    "#66bb6a",
];
const RUNC: &str = "#546e7a";

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn seconds(ms: u64) -> String {
    if ms >= 1000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else {
        format!("{ms} ms")
    }
}

/// A variant's bar: (phase index or None for an unsplit bar, milliseconds).
fn segments(run: &RuntimeStart) -> Vec<(Option<usize>, u64)> {
    if run.phases.is_empty() {
        return vec![(None, median(&run.first_output_ms))];
    }
    run.phases
        .iter()
        .enumerate()
        .map(|(i, (_, values))| (Some(i), median(values)))
        .filter(|(_, ms)| *ms > 0)
        .collect()
}

/// The chart of `report`, as an SVG document.
pub fn start_svg(report: &StartBenchReport) -> String {
    let m = &report.machine;
    let rows = report.runs.len() as f64;
    let legend_rows = PHASES.len().div_ceil(3) as f64;
    let phases_top = 70.0;
    let legend_top = phases_top + rows * ROW_H + 16.0;
    let memory_top = legend_top + legend_rows * 20.0 + 50.0;
    let height = memory_top + rows * ROW_H + 40.0;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="13">"#
    );
    let _ = writeln!(
        svg,
        r##"<rect width="100%" height="100%" fill="#ffffff"/>"##
    );
    let _ = writeln!(
        svg,
        r#"<text x="10" y="22" font-size="16" font-weight="bold">ctr run to the container's first output (median of the phases)</text>"#
    );
    let _ = writeln!(
        svg,
        r##"<text x="10" y="42" fill="#555">{} ({} cores), {}; {}</text>"##,
        escape(&m.cpu_model),
        m.cores,
        escape(m.kvm()),
        escape(&report.date)
    );
    let bars: Vec<_> = report.runs.iter().map(segments).collect();
    let longest = bars
        .iter()
        .map(|b| b.iter().map(|(_, ms)| ms).sum::<u64>())
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    for (row, (run, bar)) in report.runs.iter().zip(&bars).enumerate() {
        let y = phases_top + row as f64 * ROW_H;
        label(&mut svg, y, &run.label);
        let mut x = LABEL_W;
        for (phase, ms) in bar {
            let w = (*ms as f64 / longest * BAR_W).max(1.0);
            let (colour, title) = match phase {
                Some(i) => (COLOURS[i % COLOURS.len()], PHASES[*i].1),
                None => (RUNC, "ctr run to first output"),
            };
            let _ = writeln!(
                svg,
                r#"<rect x="{x:.1}" y="{y:.1}" width="{w:.1}" height="{BAR_H}" fill="{colour}"><title>{}: {}</title></rect>"#,
                escape(title),
                seconds(*ms)
            );
            x += w;
        }
        let total: u64 = bar.iter().map(|(_, ms)| ms).sum();
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
            x + 6.0,
            y + BAR_H * 0.7,
            seconds(total)
        );
    }
    for (i, (_, what)) in PHASES.iter().enumerate() {
        let x = 10.0 + (i % 3) as f64 * 310.0;
        let y = legend_top + (i / 3) as f64 * 20.0;
        let _ = writeln!(
            svg,
            r#"<rect x="{x}" y="{y}" width="12" height="12" fill="{}"/><text x="{}" y="{}">{}</text>"#,
            COLOURS[i % COLOURS.len()],
            x + 18.0,
            y + 11.0,
            escape(what)
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="10" y="{}" font-size="16" font-weight="bold">host memory per running sandbox (PSS; shared pages counted once)</text>"#,
        memory_top - 14.0
    );
    let most = report
        .runs
        .iter()
        .map(|r| r.pss_per_sandbox_kib)
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    for (row, run) in report.runs.iter().enumerate() {
        let y = memory_top + row as f64 * ROW_H;
        label(&mut svg, y, &run.label);
        let w = (run.pss_per_sandbox_kib as f64 / most * BAR_W).max(1.0);
        let colour = if run.phases.is_empty() {
            RUNC
        } else {
            "#7e57c2"
        };
        let _ = writeln!(
            svg,
            r#"<rect x="{LABEL_W}" y="{y:.1}" width="{w:.1}" height="{BAR_H}" fill="{colour}"/><text x="{:.1}" y="{:.1}">{:.1} MiB ({} running)</text>"#,
            LABEL_W + w + 6.0,
            y + BAR_H * 0.7,
            run.pss_per_sandbox_kib as f64 / 1024.0,
            run.sandboxes
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn label(svg: &mut String, y: f64, text: &str) {
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
        LABEL_W - 8.0,
        y + BAR_H * 0.7,
        escape(text)
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::Machine;

    fn run(label: &str, first: u64, phases: bool) -> RuntimeStart {
        RuntimeStart {
            label: label.into(),
            runtime: "r".into(),
            first_output_ms: vec![first],
            total_ms: vec![first + 10],
            pss_kib: vec![("p".into(), 3 * 1024)],
            sandboxes: 1,
            pss_per_sandbox_kib: 3 * 1024,
            phases: if phases {
                PHASES
                    .iter()
                    .map(|(_, what)| ((*what).to_owned(), vec![first / PHASES.len() as u64]))
                    .collect()
            } else {
                Vec::new()
            },
        }
    }

    #[test]
    fn every_phase_and_variant_is_drawn_and_the_svg_is_well_formed() {
        let report = StartBenchReport {
            machine: Machine::this(),
            date: "now".into(),
            runs: vec![
                run("hull, template", 9_000, true),
                run("hull <cold>", 27_000, true),
                run("runc", 90, false),
            ],
            ratios: Vec::new(),
        };
        let svg = start_svg(&report);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert_eq!(svg.matches("<svg").count(), 1);
        assert!(svg.contains("hull &lt;cold&gt;"), "labels are escaped");
        // A box per phase for each hull bar, one for runc; a legend box per
        // phase and 3 memory bars; the background.
        let n = PHASES.len();
        assert_eq!(svg.matches("<rect").count(), n + n + 1 + n + 3 + 1);
        assert!(svg.contains("90 ms") && svg.contains("3.0 MiB (1 running)"));
        for (_, what) in PHASES {
            assert!(svg.contains(&escape(what)), "{what}");
        }
    }
}
