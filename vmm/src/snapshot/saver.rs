//! Taking a snapshot of the running VM: what the machine holds to do it,
//! and the order of the steps (the vCPUs save their own state on their own
//! threads; devices and memory are read on the event loop thread, which
//! the devices run on, so nothing moves while they are read).

use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Header, Inputs, MachineState, SlotState, SnapshotError};
use crate::devices::legacy::serial::SerialConsole;
use crate::devices::virtio::mmio::MmioTransport;
use crate::vstate::memory::{self, GuestMemoryMmap};
use crate::vstate::vcpu::VcpuControl;
use crate::vstate::vm::Vm;

/// A virtio-mmio slot as the builder made it.
#[derive(Clone)]
pub struct Slot {
    pub base: u64,
    pub irq: u32,
    pub transport: Arc<Mutex<MmioTransport>>,
}

/// Everything a snapshot reads, and the file it goes to (opened when the
/// VMM started: the running VMM opens no file).
pub struct Saver {
    pub path: PathBuf,
    pub file: File,
    pub inputs: Inputs,
    pub vm: Arc<Vm>,
    pub mem: GuestMemoryMmap,
    pub serial: Arc<Mutex<SerialConsole>>,
    pub slots: Vec<Slot>,
    pub vcpus: u8,
}

impl Saver {
    /// Saves the VM, whose vCPUs must all be paused.
    pub fn save(&self, control: &VcpuControl, timeout: Duration) -> Result<Header, SnapshotError> {
        let refused = |reason: String| SnapshotError::Refused {
            path: self.path.clone(),
            reason,
        };
        control.request_save(0..self.vcpus);
        let deadline = Instant::now() + timeout;
        while control.saved_count() < usize::from(self.vcpus) {
            if Instant::now() > deadline {
                return Err(refused(format!(
                    "the vCPUs did not save their state in {timeout:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let vcpus = control
            .take_saved()
            .into_iter()
            .map(|(id, saved)| saved.map_err(|e| refused(format!("vCPU {id}: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let vm = self
            .vm
            .save_state()
            .map_err(|e| refused(hull_protocol::error_chain(&e)))?;
        let serial = self.serial.lock().expect("serial poisoned").save_state();
        let virtio = self
            .slots
            .iter()
            .map(|slot| SlotState {
                base: slot.base,
                irq: slot.irq,
                transport: slot
                    .transport
                    .lock()
                    .expect("transport poisoned")
                    .save_state(),
            })
            .collect();
        let state = MachineState {
            vm,
            vcpus,
            serial,
            virtio,
        };
        let regions = memory_regions(&self.mem);
        super::write(
            &self.file,
            &self.path,
            &self.inputs,
            regions,
            &state,
            |offset| memory::dump(&self.mem, &self.file, offset).map_err(std::io::Error::other),
        )
    }
}

/// (guest address, length) of each region of `mem`.
pub fn memory_regions(mem: &GuestMemoryMmap) -> Vec<(u64, u64)> {
    use vm_memory::{Address, GuestMemoryBackend, GuestMemoryRegion};
    mem.iter()
        .map(|r| (r.start_addr().raw_value(), r.len()))
        .collect()
}
