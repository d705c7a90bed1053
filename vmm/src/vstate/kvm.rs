//! Opening /dev/kvm and telling what kind of KVM this host has.

use std::path::Path;

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::Cap;

/// What serves /dev/kvm on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKvm {
    /// Hardware virtualisation (VMX/SVM): nothing special to do.
    Hardware,
    /// kvm_pvm: the host is itself a VM and runs guest kernel mode through an
    /// instruction emulator; see `vstate::pvm` for what that takes.
    NestedPvm,
}

impl HostKvm {
    /// kvm_pvm registers itself as a module; hardware KVM never has it.
    pub fn detect() -> Self {
        if Path::new("/sys/module/kvm_pvm").exists() {
            HostKvm::NestedPvm
        } else {
            HostKvm::Hardware
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    #[error("cannot open /dev/kvm (is KVM enabled and may this user open it?)")]
    Open(#[source] kvm_ioctls::Error),
    #[error("KVM API version {0} is not the supported version 12")]
    ApiVersion(i32),
    #[error("KVM lacks a capability hull needs: {0:?}")]
    MissingCap(Cap),
    #[error("KVM_GET_SUPPORTED_CPUID failed")]
    Cpuid(#[source] kvm_ioctls::Error),
}

pub struct Kvm {
    pub(super) fd: kvm_ioctls::Kvm,
    pub host: HostKvm,
}

const REQUIRED_CAPS: &[Cap] = &[
    Cap::Irqchip,
    Cap::Ioeventfd,
    Cap::Irqfd,
    Cap::UserMemory,
    Cap::SetTssAddr,
    Cap::Pit2,
];

impl Kvm {
    pub fn open() -> Result<Self, KvmError> {
        let fd = kvm_ioctls::Kvm::new().map_err(KvmError::Open)?;
        let version = fd.get_api_version();
        if version != 12 {
            return Err(KvmError::ApiVersion(version));
        }
        if let Some(cap) = REQUIRED_CAPS.iter().find(|c| !fd.check_extension(**c)) {
            return Err(KvmError::MissingCap(*cap));
        }
        Ok(Self {
            fd,
            host: HostKvm::detect(),
        })
    }

    pub fn supported_cpuid(&self) -> Result<CpuId, KvmError> {
        self.fd
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(KvmError::Cpuid)
    }
}
