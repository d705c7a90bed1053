//! The builder's steps for snapshots: opening and checking the snapshot a
//! VM restores from, writing its state into the new VM, and preparing the
//! file a running VM may be saved into.

use std::sync::Arc;

use super::{BuildError, Devices};
use crate::config::VmConfig;
use crate::snapshot::{Inputs, Saver, Snapshot, SnapshotError};
use crate::vstate::memory::GuestMemoryMmap;
use crate::vstate::vcpu::Vcpu;
use crate::vstate::vm::Vm;

/// What the VM is started with, as a snapshot records it.
fn inputs(config: &VmConfig) -> Result<Inputs, SnapshotError> {
    Inputs::of(
        &config.kernel,
        config.initramfs.as_deref(),
        config.vcpus,
        config.memory_mib,
    )
}

/// The snapshot `restore_from` names, checked against the config.
pub(super) fn open_snapshot(config: &VmConfig) -> Result<Option<Snapshot>, BuildError> {
    let Some(path) = &config.restore_from else {
        return Ok(None);
    };
    let regions: Vec<(u64, u64)> = crate::arch::layout::ram_regions(super::guest_mem_size(config));
    Ok(Some(Snapshot::open(path, &inputs(config)?, &regions)?))
}

/// The saved state into the new VM: the VM-wide part after the vCPUs
/// exist and before theirs, then the devices (which re-activate what the
/// driver had activated).
pub(super) fn restore_state(
    snapshot: &Snapshot,
    vm: &Vm,
    vcpus: &[Vcpu],
    devices: &Devices,
) -> Result<(), BuildError> {
    let refused = |reason: String| {
        BuildError::Snapshot(SnapshotError::Refused {
            path: snapshot.path.clone(),
            reason,
        })
    };
    let state = &snapshot.state;
    vm.restore_state(&state.vm)?;
    for (vcpu, saved) in vcpus.iter().zip(&state.vcpus) {
        vcpu.restore_state(saved)?;
    }
    devices
        .serial
        .lock()
        .expect("serial poisoned")
        .restore_state(&state.serial)
        .map_err(refused)?;
    if state.virtio.len() != devices.slots.len() {
        return Err(refused(format!(
            "{} virtio devices were saved, this VM has {}",
            state.virtio.len(),
            devices.slots.len()
        )));
    }
    for (slot, saved) in devices.slots.iter().zip(&state.virtio) {
        if (slot.base, slot.irq) != (saved.base, saved.irq) {
            return Err(refused(format!(
                "a virtio device was saved at {:#x} IRQ {}, this VM has one at {:#x} IRQ {}",
                saved.base, saved.irq, slot.base, slot.irq
            )));
        }
        slot.transport
            .lock()
            .expect("transport poisoned")
            .restore_state(&saved.transport)
            .map_err(|e| refused(format!("the device at {:#x}: {e}", slot.base)))?;
    }
    Ok(())
}

/// The file `snapshot_file` names, made (mode 0600) now: the running VMM,
/// under seccomp, opens no file.
pub(super) fn saver(
    config: &VmConfig,
    vm: &Arc<Vm>,
    mem: &GuestMemoryMmap,
    devices: &Devices,
) -> Result<Option<Saver>, BuildError> {
    let Some(path) = &config.snapshot_file else {
        return Ok(None);
    };
    use std::os::unix::fs::OpenOptionsExt;
    // Read back too: the memory digest is taken from the file.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path);
    let file = file.map_err(|source| BuildError::Open {
        what: "snapshot file",
        path: path.clone(),
        source,
    })?;
    Ok(Some(Saver {
        path: path.clone(),
        file,
        inputs: inputs(config)?,
        vm: vm.clone(),
        mem: mem.clone(),
        serial: devices.serial.clone(),
        slots: devices.slots.clone(),
        vcpus: config.vcpus,
    }))
}
