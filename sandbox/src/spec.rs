//! The container's OCI runtime spec, parsed once into `oci_spec`'s types
//! (the same crate and version the agent parses it with), and the VM size
//! derived from it once.

use std::path::{Path, PathBuf};

pub use oci_spec::runtime::Spec;

/// The most vCPUs a sandbox gets: a CPU quota above it still applies in the
/// guest, it just cannot use more CPUs than the VM has.
pub const MAX_VCPUS: u8 = 8;
/// The CFS period range the kernel accepts (1 ms to 1 s), in microseconds.
const CPU_PERIOD_US: std::ops::RangeInclusive<u64> = 1_000..=1_000_000;
/// The period when the spec gives a quota without one (the kernel's).
const DEFAULT_CPU_PERIOD_US: u64 = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("reading the OCI spec {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the OCI spec {path}: {field}: {reason}")]
    Parse {
        path: PathBuf,
        /// The JSON path of the field (`process.user.uid`), or `spec`.
        field: String,
        reason: String,
    },
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

/// Reads and parses the spec at `path`; a type error names its field.
pub fn load(path: &Path) -> Result<Spec, SpecError> {
    let bytes = std::fs::read(path).map_err(|source| SpecError::Read {
        path: path.into(),
        source,
    })?;
    parse(&bytes).map_err(|(field, reason)| SpecError::Parse {
        path: path.into(),
        field,
        reason,
    })
}

/// Parses a spec; on error, the field's JSON path (or `spec`) and why.
pub fn parse(bytes: &[u8]) -> Result<Spec, (String, String)> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let field = match err.path().to_string().as_str() {
            "." | "?" => "spec".to_owned(),
            path => path.to_owned(),
        };
        (field, err.into_inner().to_string())
    })
}

/// The VM size a sandbox gets when its spec sets no limit, and the memory
/// it adds to a limit (the guest kernel and agent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmDefaults {
    pub vcpus: u8,
    pub memory_mib: u32,
    pub memory_overhead_mib: u32,
    /// The host's memory: a VM may not ask for more.
    pub host_memory_mib: u64,
}

/// The size of a container's VM, from its spec's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmSize {
    pub vcpus: u8,
    pub memory_mib: u32,
    /// The spec's CPU bandwidth limit (quota, period) in microseconds,
    /// which the host cgroup also gets.
    pub cpu: Option<(u64, u64)>,
}

impl VmSize {
    /// vCPUs from the CPU quota (rounded up, at most [`MAX_VCPUS`]) and
    /// guest RAM from the memory limit plus the overhead; the defaults
    /// where the spec has no limit. A limit that cannot be met is refused,
    /// naming the field.
    pub fn of(spec: &Spec, defaults: &VmDefaults) -> Result<VmSize, SpecError> {
        let resources = spec.linux().as_ref().and_then(|l| l.resources().as_ref());
        let cpu = match resources.and_then(|r| r.cpu().as_ref()) {
            Some(cpu) => cpu_limit(cpu.quota(), cpu.period())?,
            None => None,
        };
        let vcpus = match cpu {
            Some((quota, period)) => {
                let wanted = quota.div_ceil(period);
                u8::try_from(wanted).unwrap_or(u8::MAX).clamp(1, MAX_VCPUS)
            }
            None => defaults.vcpus,
        };
        let limit = resources
            .and_then(|r| r.memory().as_ref())
            .and_then(|m| m.limit())
            .filter(|limit| *limit > 0);
        let memory_mib = match limit {
            None => defaults.memory_mib,
            Some(limit) => memory_mib(limit as u64, defaults)?,
        };
        Ok(VmSize {
            vcpus,
            memory_mib,
            cpu,
        })
    }
}

/// containerd's CRI annotations of a pod's resources on its sandbox
/// container: the sum of the pod's container limits plus its overhead, as
/// the kubelet passes them in the PodSandboxConfig.
pub const POD_MEMORY: &str = "io.kubernetes.cri.sandbox-memory";
pub const POD_CPU_QUOTA: &str = "io.kubernetes.cri.sandbox-cpu-quota";
pub const POD_CPU_PERIOD: &str = "io.kubernetes.cri.sandbox-cpu-period";

impl VmSize {
    /// The VM of a Kubernetes pod: sized for the whole pod from the CRI's
    /// annotations ([`POD_MEMORY`], [`POD_CPU_QUOTA`], [`POD_CPU_PERIOD`])
    /// as Kata does, the sandbox container's own limits (or the defaults)
    /// where the pod names none. Each container's own limits are its
    /// cgroup's in the guest.
    pub fn of_pod(spec: &Spec, defaults: &VmDefaults) -> Result<VmSize, SpecError> {
        let mut size = VmSize::of(spec, defaults)?;
        let annotations = spec.annotations().clone().unwrap_or_default();
        let number = |key: &'static str| -> Result<Option<i64>, SpecError> {
            annotations
                .get(key)
                .map(|v| {
                    v.trim().parse::<i64>().map_err(|_| SpecError::Invalid {
                        field: key,
                        reason: format!("{v:?} is not a number"),
                    })
                })
                .transpose()
        };
        if let Some(bytes) = number(POD_MEMORY)?.filter(|b| *b > 0) {
            size.memory_mib = memory_mib(bytes as u64, defaults)?;
        }
        let period = number(POD_CPU_PERIOD)?.filter(|p| *p > 0).map(|p| p as u64);
        if let Some((quota, period)) = cpu_limit(number(POD_CPU_QUOTA)?, period)? {
            size.cpu = Some((quota, period));
            size.vcpus = u8::try_from(quota.div_ceil(period))
                .unwrap_or(u8::MAX)
                .clamp(1, MAX_VCPUS);
        }
        Ok(size)
    }
}

/// The CPU bandwidth limit: `None` without a positive quota (unlimited).
fn cpu_limit(quota: Option<i64>, period: Option<u64>) -> Result<Option<(u64, u64)>, SpecError> {
    let Some(quota) = quota.filter(|q| *q > 0) else {
        return Ok(None);
    };
    let period = period.unwrap_or(DEFAULT_CPU_PERIOD_US);
    if !CPU_PERIOD_US.contains(&period) {
        return Err(SpecError::Invalid {
            field: "linux.resources.cpu.period",
            reason: format!(
                "{period} µs is outside the {}..={} µs the kernel accepts",
                CPU_PERIOD_US.start(),
                CPU_PERIOD_US.end()
            ),
        });
    }
    if (quota as u64) < *CPU_PERIOD_US.start() {
        return Err(SpecError::Invalid {
            field: "linux.resources.cpu.quota",
            reason: format!("{quota} µs is below the kernel's minimum of 1000 µs"),
        });
    }
    Ok(Some((quota as u64, period)))
}

/// Guest RAM for a memory limit of `bytes`: whole MiB plus the overhead.
fn memory_mib(bytes: u64, defaults: &VmDefaults) -> Result<u32, SpecError> {
    let field = "linux.resources.memory.limit";
    let mib = bytes.div_ceil(1 << 20) + u64::from(defaults.memory_overhead_mib);
    if mib > defaults.host_memory_mib {
        return Err(SpecError::Invalid {
            field,
            reason: format!(
                "{bytes} bytes plus hull's {} MiB guest overhead is {mib} MiB, more than this \
                 host's {} MiB",
                defaults.memory_overhead_mib, defaults.host_memory_mib
            ),
        });
    }
    u32::try_from(mib).map_err(|_| SpecError::Invalid {
        field,
        reason: format!("{bytes} bytes is more guest memory than a VM can have"),
    })
}

/// Present when /dev/kvm is nested PVM: the host is itself a VM whose KVM
/// emulates guest kernel mode.
const NESTED_PVM_MODULE: &str = "/sys/module/kvm_pvm";

/// The vCPUs a VM gets on this host: what it asked for, except under
/// nested PVM, where guests with more than one vCPU hang in the second
/// CPU's start-up (tests/tests/smp_boot.rs), so they get one.
pub fn vcpus_this_host_runs(wanted: u8) -> u8 {
    vcpus_under(wanted, Path::new(NESTED_PVM_MODULE).is_dir())
}

fn vcpus_under(wanted: u8, nested_pvm: bool) -> u8 {
    if nested_pvm {
        wanted.min(1)
    } else {
        wanted
    }
}

/// The host's memory in MiB (`MemTotal`), `u64::MAX` when unreadable.
pub fn host_memory_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("MemTotal:"))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
        })
        .map_or(u64::MAX, |kib| kib / 1024)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const DEFAULTS: VmDefaults = VmDefaults {
        vcpus: 1,
        memory_mib: 256,
        memory_overhead_mib: 96,
        host_memory_mib: 24 * 1024,
    };

    fn spec(value: serde_json::Value) -> Spec {
        parse(&serde_json::to_vec(&value).unwrap()).unwrap()
    }

    #[test]
    fn the_vm_is_sized_from_the_spec_limits() {
        assert_eq!(
            VmSize::of(&spec(json!({"ociVersion": "1.0.2"})), &DEFAULTS).unwrap(),
            VmSize {
                vcpus: 1,
                memory_mib: 256,
                cpu: None
            }
        );
        let limited = spec(json!({"linux": {"resources": {
            "memory": {"limit": 268_435_456},
            "cpu": {"quota": 150_000, "period": 100_000}
        }}}));
        assert_eq!(
            VmSize::of(&limited, &DEFAULTS).unwrap(),
            VmSize {
                vcpus: 2,
                memory_mib: 256 + 96,
                cpu: Some((150_000, 100_000))
            }
        );
        // Unlimited quota (-1), a quota without a period, and many CPUs.
        let size = |cpu| {
            VmSize::of(
                &spec(json!({"linux": {"resources": {"cpu": cpu}}})),
                &DEFAULTS,
            )
            .unwrap()
        };
        assert_eq!(size(json!({"quota": -1, "period": 100_000})).cpu, None);
        assert_eq!(size(json!({"quota": 50_000})).cpu, Some((50_000, 100_000)));
        assert_eq!(size(json!({"quota": 6_400_000})).vcpus, MAX_VCPUS);
    }

    #[test]
    fn a_pod_is_sized_from_the_cri_annotations() {
        let pod = spec(json!({"annotations": {
            POD_MEMORY: "536870912",
            POD_CPU_QUOTA: "150000",
            POD_CPU_PERIOD: "100000",
        }}));
        assert_eq!(
            VmSize::of_pod(&pod, &DEFAULTS).unwrap(),
            VmSize {
                vcpus: 2,
                memory_mib: 512 + 96,
                cpu: Some((150_000, 100_000))
            }
        );
        // No pod resources ("0", no quota): the defaults.
        let unlimited = spec(json!({"annotations": {POD_MEMORY: "0", POD_CPU_QUOTA: "0"}}));
        assert_eq!(
            VmSize::of_pod(&unlimited, &DEFAULTS).unwrap(),
            VmSize::of(&unlimited, &DEFAULTS).unwrap()
        );
        let bad = spec(json!({"annotations": {POD_MEMORY: "lots"}}));
        let err = VmSize::of_pod(&bad, &DEFAULTS).unwrap_err().to_string();
        assert!(err.contains(POD_MEMORY) && err.contains("lots"), "{err}");
    }

    #[test]
    fn limits_that_cannot_be_met_are_refused_naming_the_field() {
        let refused = |resources| {
            let spec = spec(json!({"linux": {"resources": resources}}));
            VmSize::of(&spec, &DEFAULTS).unwrap_err().to_string()
        };
        let err = refused(json!({"memory": {"limit": i64::MAX}}));
        assert!(
            err.starts_with("linux.resources.memory.limit: ")
                && err.contains("more than this host"),
            "{err}"
        );
        let err = refused(json!({"memory": {"limit": 30_i64 << 30}}));
        assert!(err.contains("24576 MiB"), "{err}");
        let err = refused(json!({"cpu": {"quota": 100_000, "period": 0}}));
        assert!(err.starts_with("linux.resources.cpu.period: 0 µs"), "{err}");
        let err = refused(json!({"cpu": {"quota": 10, "period": 100_000}}));
        assert!(err.starts_with("linux.resources.cpu.quota: "), "{err}");
        // More than u32 MiB on a (hypothetical) host that has it.
        let huge = VmDefaults {
            host_memory_mib: u64::MAX,
            ..DEFAULTS
        };
        let spec = spec(json!({"linux": {"resources": {"memory": {"limit": i64::MAX}}}}));
        let err = VmSize::of(&spec, &huge).unwrap_err().to_string();
        assert!(
            err.contains("more guest memory than a VM can have"),
            "{err}"
        );
    }

    #[test]
    fn a_type_error_names_its_field() {
        let (field, reason) =
            parse(br#"{"ociVersion": "1.0.2", "process": {"user": {"uid": "root"}}}"#).unwrap_err();
        assert_eq!(field, "process.user.uid");
        assert!(reason.contains("invalid type"), "{reason}");
        assert_eq!(parse(b"{").unwrap_err().0, "spec");
        let dir = tempfile::tempdir().unwrap();
        let err = load(&dir.path().join("config.json")).unwrap_err();
        assert!(err.to_string().contains("reading the OCI spec"), "{err}");
    }

    #[test]
    fn nested_pvm_gets_one_vcpu() {
        assert_eq!(vcpus_under(4, false), 4);
        assert_eq!(vcpus_under(4, true), 1);
        assert_eq!(vcpus_under(1, true), 1);
    }

    #[test]
    fn the_host_memory_is_known() {
        let mib = host_memory_mib();
        assert!(mib > 64 && mib < u64::MAX, "{mib}");
    }
}
