//! `hull template list|build|clear`: the VM templates sandboxes start from
//! (see `hull_sandbox::template`), under the directory hull's config names.

use std::path::Path;
use std::time::Duration;

use hull_sandbox::config::ShimConfig;
use hull_sandbox::template::{self, Template, TemplateError, TemplateKey};

/// One line per template: its id, size class, when and how fast it was
/// built, its size on disk, and whether today's config would use it.
pub fn list(config: &ShimConfig) -> String {
    let templates = template::list(&config.template_dir);
    if templates.is_empty() {
        return format!("no templates in {}\n", config.template_dir.display());
    }
    let current: Vec<TemplateKey> = templates
        .iter()
        .filter_map(|t| {
            let spec = template::sandbox_spec(config, Some(t.meta.key.memory_mib));
            TemplateKey::of(&spec).ok()
        })
        .collect();
    let mut out = format!(
        "{:<16}  {:>5}  {:>8}  {:>9}  {:>8}  {:>8}  {}\n",
        "ID", "vCPUs", "memory", "boot", "save", "on disk", "inputs"
    );
    for t in &templates {
        let used = current.contains(&t.meta.key);
        out.push_str(&format!(
            "{:<16}  {:>5}  {:>4} MiB  {:>7} s  {:>6} s  {:>4} MiB  {}\n",
            t.id,
            t.meta.key.vcpus,
            t.meta.key.memory_mib,
            format!("{:.1}", t.meta.boot_ms as f64 / 1000.0),
            format!("{:.2}", t.meta.save_ms as f64 / 1000.0),
            disk_mib(&t.snapshot),
            if used {
                "current"
            } else {
                "stale (inputs changed)"
            }
        ));
    }
    out
}

/// Blocks actually allocated (the snapshot's zero pages are holes).
fn disk_mib(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map_or(0, |m| (m.blocks() * 512) >> 20)
}

/// Builds (or finds) the template of a sandbox without limits.
pub async fn build(
    config: &ShimConfig,
    memory_mib: Option<u32>,
) -> Result<Template, TemplateError> {
    let spec = template::sandbox_spec(config, memory_mib);
    template::ensure(
        &config.template_dir,
        &spec,
        Duration::from_secs(config.boot_timeout_secs),
    )
    .await
}
