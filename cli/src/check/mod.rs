//! `hull check`: a Docker-Bench-style audit of the host and of containers,
//! with stable ids, a verdict per check (PASS, INFO, WARN, FAIL) and a
//! one-line remedy; `--json` for machines. Host checks are in [`host`];
//! container checks apply the shim's own spec policy
//! (`hull_sandbox::policy`) to a bundle, a containerd task or a Docker
//! container, in [`container`].

pub mod container;
pub mod host;
pub mod network;
pub mod share;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Verdict {
    Pass,
    Info,
    Warn,
    Fail,
}

impl Verdict {
    fn label(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Info => "INFO",
            Verdict::Warn => "WARN",
            Verdict::Fail => "FAIL",
        }
    }
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckResult {
    pub id: &'static str,
    pub verdict: Verdict,
    pub title: &'static str,
    pub detail: String,
    /// Empty for PASS.
    pub remedy: String,
}

impl CheckResult {
    pub fn new(
        id: &'static str,
        title: &'static str,
        verdict: Verdict,
        detail: impl Into<String>,
        remedy: impl Into<String>,
    ) -> Self {
        Self {
            id,
            verdict,
            title,
            detail: detail.into(),
            remedy: if verdict == Verdict::Pass {
                String::new()
            } else {
                remedy.into()
            },
        }
    }
}

/// The human form: one line per check, the remedy indented under it.
pub fn render_text(results: &[CheckResult]) -> String {
    let mut out = String::new();
    for r in results {
        out.push_str(&format!(
            "[{}] {:<5} {}: {}\n",
            r.verdict.label(),
            r.id,
            r.title,
            r.detail
        ));
        if !r.remedy.is_empty() {
            out.push_str(&format!("             -> {}\n", r.remedy));
        }
    }
    let count = |v| results.iter().filter(|r| r.verdict == v).count();
    out.push_str(&format!(
        "{} checks: {} PASS, {} INFO, {} WARN, {} FAIL\n",
        results.len(),
        count(Verdict::Pass),
        count(Verdict::Info),
        count(Verdict::Warn),
        count(Verdict::Fail)
    ));
    out
}

/// The exit status `hull check` ends with: 1 when anything FAILed.
pub fn exit_status(results: &[CheckResult]) -> u8 {
    u8::from(results.iter().any(|r| r.verdict == Verdict::Fail))
}
