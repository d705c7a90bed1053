//! The snapshot file: a paused VM's whole state and its guest memory, in
//! one file that a new VMM process restores from, mapping the memory part
//! copy-on-write (so VMs restored from one file share its untouched pages).
//!
//! ```text
//! 0      "HULLSNAP", format version (u32 LE), 0 (u32), header length (u64 LE)
//! 24     header (JSON): versions, inputs, sizes and SHA-256 of the parts
//! ...    state (JSON): KVM VM and vCPU state, every device's state
//! page   guest memory, region after region (zero pages are holes)
//! ```
//!
//! A restore checks everything before it uses anything: the magic, the
//! format, the VMM version, the kernel and initramfs (by content), vCPUs,
//! memory size and layout, the file length, and the digests of the state
//! and of the memory. Any mismatch refuses the file with what differs.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use hull_protocol::digest;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub mod saver;

pub use saver::Saver;

use crate::devices::legacy::serial::SerialSnapshot;
use crate::devices::virtio::state::TransportState;
use crate::vstate::state::{VcpuState, VmKvmState};

pub const MAGIC: &[u8; 8] = b"HULLSNAP";
/// Bumped whenever the header or state changes shape.
pub const FORMAT_VERSION: u32 = 2;
/// The VMM a snapshot can be restored by: this build's version only.
pub const VMM_VERSION: &str = env!("CARGO_PKG_VERSION");
const PREAMBLE: usize = 24;
const PAGE: u64 = 4096;
/// Bounds what a restore reads before it has checked anything.
const MAX_HEADER: u64 = 1 << 20;
const MAX_STATE: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot {path}: {reason}")]
    Refused { path: PathBuf, reason: String },
    #[error("snapshot {path}: {what}")]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("reading {path} to check it against the snapshot")]
    Input {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What a snapshot was taken with, and where its parts are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    pub vmm_version: String,
    pub inputs: Inputs,
    /// Guest memory regions: (guest address, length).
    pub regions: Vec<(u64, u64)>,
    pub state_len: u64,
    pub state_sha256: String,
    pub memory_offset: u64,
    pub memory_len: u64,
    pub memory_sha256: String,
}

/// What a VM restored from a snapshot must be started with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inputs {
    pub kernel_sha256: String,
    pub initramfs_sha256: Option<String>,
    pub vcpus: u8,
    pub memory_mib: u32,
}

impl Inputs {
    /// The inputs of a VM booted from `kernel` and `initramfs`.
    pub fn of(
        kernel: &Path,
        initramfs: Option<&Path>,
        vcpus: u8,
        memory_mib: u32,
    ) -> Result<Self, SnapshotError> {
        Ok(Inputs {
            kernel_sha256: file_sha256(kernel)?,
            initramfs_sha256: initramfs.map(file_sha256).transpose()?,
            vcpus,
            memory_mib,
        })
    }
}

/// A virtio-mmio slot: where it is, and its device's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlotState {
    pub base: u64,
    pub irq: u32,
    pub transport: TransportState,
}

/// Everything of a paused VM but its memory.
#[derive(Serialize, Deserialize)]
pub struct MachineState {
    pub vm: VmKvmState,
    pub vcpus: Vec<VcpuState>,
    pub serial: SerialSnapshot,
    pub virtio: Vec<SlotState>,
}

fn file_sha256(path: &Path) -> Result<String, SnapshotError> {
    digest::file_sha256(path).map_err(|source| SnapshotError::Input {
        path: path.into(),
        source,
    })
}

/// SHA-256 of the content of `len` bytes of `file` from `offset` (a page
/// multiple): each page that is not all zeros, hashed as its index and its
/// bytes. Only the data the file holds is read: guest memory is saved
/// sparse (a 256 MiB guest is some 20 MiB of data) and every restore checks
/// it. The digest is the content's, not the layout's: a copy that wrote the
/// holes out as zeros digests the same, a byte changed anywhere (in a hole
/// too) does not.
fn range_sha256(file: &File, offset: u64, len: u64) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let end = offset + len;
    let mut at = offset;
    while at < end {
        let Some(data) = seek(file, at, libc::SEEK_DATA)? else {
            break;
        };
        if data >= end {
            break;
        }
        let hole = seek(file, data, libc::SEEK_HOLE)?.unwrap_or(end).min(end);
        // Whole pages around the data (a hole reads as zeros).
        let mut done = offset + (data - offset) / PAGE * PAGE;
        let stop = (offset + (hole - offset).div_ceil(PAGE) * PAGE).min(end);
        while done < stop {
            let n = buf.len().min((stop - done) as usize);
            file.read_exact_at(&mut buf[..n], done)?;
            for (i, page) in buf[..n].chunks(PAGE as usize).enumerate() {
                if page.iter().any(|&b| b != 0) {
                    let index = (done - offset) / PAGE + i as u64;
                    hasher.update(index.to_le_bytes());
                    hasher.update(page);
                }
            }
            done += n as u64;
        }
        at = stop.max(at + PAGE);
    }
    Ok(digest::hex(&hasher.finalize()))
}

/// `lseek` to the next data (`SEEK_DATA`) or hole (`SEEK_HOLE`) at or
/// after `from`; `None` past the last data (ENXIO).
fn seek(file: &File, from: u64, whence: libc::c_int) -> std::io::Result<Option<u64>> {
    let from = i64::try_from(from).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: lseek on a file descriptor `file` owns for the call; it
    // touches no memory.
    let at = unsafe { libc::lseek(file.as_raw_fd(), from, whence) };
    if at >= 0 {
        return Ok(Some(at as u64));
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ENXIO) {
        Ok(None)
    } else {
        Err(err)
    }
}

fn round_up(n: u64) -> u64 {
    n.div_ceil(PAGE) * PAGE
}

/// Writes `state` and the memory `write_memory` puts at the offset it is
/// given (returning the bytes it covered) into `file`, which is truncated
/// first.
pub fn write(
    file: &File,
    path: &Path,
    inputs: &Inputs,
    regions: Vec<(u64, u64)>,
    state: &MachineState,
    write_memory: impl FnOnce(u64) -> std::io::Result<u64>,
) -> Result<Header, SnapshotError> {
    let io = |what| {
        move |source| SnapshotError::Io {
            path: path.into(),
            what,
            source,
        }
    };
    let state = serde_json::to_vec(state).map_err(|e| io("encoding the state")(e.into()))?;
    let memory_len: u64 = regions.iter().map(|r| r.1).sum();
    let mut header = Header {
        vmm_version: VMM_VERSION.into(),
        inputs: inputs.clone(),
        regions,
        state_len: state.len() as u64,
        state_sha256: digest::sha256_hex(&state),
        memory_offset: 0,
        memory_len,
        memory_sha256: String::new(),
    };
    file.set_len(0).map_err(io("truncating"))?;
    // The header's own length must not depend on the offset it names:
    // the offset is computed with room for its largest value.
    let placeholder = serde_json::to_vec(&Header {
        memory_offset: u64::MAX,
        memory_sha256: "0".repeat(64),
        ..header.clone()
    })
    .map_err(|e| io("encoding the header")(e.into()))?;
    header.memory_offset = round_up((PREAMBLE + placeholder.len() + state.len()) as u64);
    let covered = write_memory(header.memory_offset).map_err(io("writing guest memory"))?;
    if covered != memory_len {
        return Err(SnapshotError::Refused {
            path: path.into(),
            reason: format!("{covered} bytes of memory written, {memory_len} expected"),
        });
    }
    file.set_len(header.memory_offset + memory_len)
        .map_err(io("sizing"))?;
    header.memory_sha256 =
        range_sha256(file, header.memory_offset, memory_len).map_err(io("reading back memory"))?;
    let json = serde_json::to_vec(&header).map_err(|e| io("encoding the header")(e.into()))?;
    let mut head = Vec::with_capacity(PREAMBLE + json.len() + state.len());
    head.extend_from_slice(MAGIC);
    head.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    head.extend_from_slice(&0u32.to_le_bytes());
    head.extend_from_slice(&(json.len() as u64).to_le_bytes());
    head.extend_from_slice(&json);
    head.extend_from_slice(&state);
    debug_assert!(head.len() as u64 <= header.memory_offset);
    file.write_all_at(&head, 0)
        .map_err(io("writing the state"))?;
    file.sync_all().map_err(io("syncing"))?;
    Ok(header)
}

/// A checked snapshot, open for its memory to be mapped.
pub struct Snapshot {
    pub path: PathBuf,
    pub file: File,
    pub header: Header,
    pub state: MachineState,
}

impl Snapshot {
    /// Opens `path` and checks it against what the new VM is started with
    /// (`inputs`) and its memory layout.
    pub fn open(
        path: &Path,
        inputs: &Inputs,
        regions: &[(u64, u64)],
    ) -> Result<Snapshot, SnapshotError> {
        let refused = |reason: String| SnapshotError::Refused {
            path: path.into(),
            reason,
        };
        let io = |what| {
            move |source| SnapshotError::Io {
                path: path.into(),
                what,
                source,
            }
        };
        let file = File::open(path).map_err(io("opening"))?;
        let len = file.metadata().map_err(io("reading its size"))?.len();
        let mut preamble = [0u8; PREAMBLE];
        if len < PREAMBLE as u64 {
            return Err(refused(format!(
                "{len} bytes is too short to be a snapshot"
            )));
        }
        file.read_exact_at(&mut preamble, 0)
            .map_err(io("reading the preamble"))?;
        if &preamble[..8] != MAGIC {
            return Err(refused("not a hull snapshot (no HULLSNAP magic)".into()));
        }
        let format = u32::from_le_bytes(preamble[8..12].try_into().expect("4 bytes"));
        if format != FORMAT_VERSION {
            return Err(refused(format!(
                "snapshot format {format}; this hull-vmm reads format {FORMAT_VERSION}"
            )));
        }
        let header_len = u64::from_le_bytes(preamble[16..24].try_into().expect("8 bytes"));
        if header_len > MAX_HEADER || PREAMBLE as u64 + header_len > len {
            return Err(refused(format!(
                "header of {header_len} bytes does not fit the {len}-byte file (truncated?)"
            )));
        }
        let mut json = vec![0u8; header_len as usize];
        file.read_exact_at(&mut json, PREAMBLE as u64)
            .map_err(io("reading the header"))?;
        let header: Header = serde_json::from_slice(&json)
            .map_err(|e| refused(format!("the header is not valid: {e}")))?;
        if header.vmm_version != VMM_VERSION {
            return Err(refused(format!(
                "taken by hull-vmm {}; this is hull-vmm {VMM_VERSION}",
                header.vmm_version
            )));
        }
        check_inputs(&header.inputs, inputs).map_err(refused)?;
        let wanted: Vec<(u64, u64)> = regions.to_vec();
        if header.regions != wanted {
            return Err(refused(format!(
                "memory regions {:?}, this VM has {wanted:?}",
                header.regions
            )));
        }
        let state_offset = PREAMBLE as u64 + header_len;
        let expected_len = header.memory_offset.checked_add(header.memory_len);
        if header.state_len > MAX_STATE
            || state_offset + header.state_len > header.memory_offset
            || !header.memory_offset.is_multiple_of(PAGE)
            || header.memory_len != regions.iter().map(|r| r.1).sum::<u64>()
            || expected_len != Some(len)
        {
            return Err(refused(format!(
                "the file is {len} bytes, its header describes {} (truncated or corrupt)",
                expected_len.map_or("an impossible size".into(), |n| format!("{n}"))
            )));
        }
        let mut state = vec![0u8; header.state_len as usize];
        file.read_exact_at(&mut state, state_offset)
            .map_err(io("reading the state"))?;
        if digest::sha256_hex(&state) != header.state_sha256 {
            return Err(refused(
                "the state does not match its digest (corrupt)".into(),
            ));
        }
        let memory_sha256 = range_sha256(&file, header.memory_offset, header.memory_len)
            .map_err(io("reading the memory"))?;
        if memory_sha256 != header.memory_sha256 {
            return Err(refused(
                "guest memory does not match its digest (corrupt)".into(),
            ));
        }
        let state: MachineState = serde_json::from_slice(&state)
            .map_err(|e| refused(format!("the state is not valid: {e}")))?;
        if state.vcpus.len() != usize::from(inputs.vcpus) {
            return Err(refused(format!(
                "{} vCPU states for {} vCPUs",
                state.vcpus.len(),
                inputs.vcpus
            )));
        }
        Ok(Snapshot {
            path: path.into(),
            file,
            header,
            state,
        })
    }
}

fn check_inputs(saved: &Inputs, now: &Inputs) -> Result<(), String> {
    if saved.vcpus != now.vcpus || saved.memory_mib != now.memory_mib {
        return Err(format!(
            "taken with {} vCPU(s) and {} MiB; this VM has {} and {} MiB",
            saved.vcpus, saved.memory_mib, now.vcpus, now.memory_mib
        ));
    }
    if saved.kernel_sha256 != now.kernel_sha256 {
        return Err("taken with another kernel".into());
    }
    if saved.initramfs_sha256 != now.initramfs_sha256 {
        return Err("taken with another initramfs".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests;
