//! The snapshot file without KVM: a round trip, and every refusal.

use super::*;
use crate::devices::virtio::state::QueueSnapshot;

fn state(vcpus: usize) -> MachineState {
    MachineState {
        vm: VmKvmState {
            pit: Default::default(),
            clock: Default::default(),
            pic_master: Default::default(),
            pic_slave: Default::default(),
            ioapic: Default::default(),
        },
        vcpus: (0..vcpus)
            .map(|_| VcpuState {
                mp_state: Default::default(),
                regs: kvm_bindings::kvm_regs {
                    rip: 0xffff_ffff_8100_0000,
                    ..Default::default()
                },
                sregs: Default::default(),
                xsave: Default::default(),
                xcrs: Default::default(),
                debugregs: Default::default(),
                lapic: Default::default(),
                msrs: vec![kvm_bindings::kvm_msr_entry {
                    index: 0x10,
                    data: 42,
                    ..Default::default()
                }],
                vcpu_events: Default::default(),
            })
            .collect(),
        serial: SerialSnapshot {
            baud_divisor_low: 1,
            baud_divisor_high: 0,
            interrupt_enable: 2,
            interrupt_identification: 1,
            line_control: 3,
            line_status: 0x60,
            modem_control: 8,
            modem_status: 0xb0,
            scratch: 0,
            in_buffer: vec![],
        },
        virtio: vec![SlotState {
            base: 0xd000_0000,
            irq: 5,
            transport: TransportState {
                device_type: 19,
                status: 15,
                device_features_sel: 0,
                driver_features_sel: 1,
                queue_sel: 2,
                interrupt_status: 0,
                acked_features: 1 << 32,
                queues: vec![QueueSnapshot {
                    max_size: 64,
                    size: 64,
                    ready: true,
                    desc_table: 0x1000,
                    avail_ring: 0x2000,
                    used_ring: 0x3000,
                    next_avail: 7,
                    next_used: 7,
                    event_idx: false,
                }],
                device: serde_json::json!({"guest_cid": 3}),
            },
        }],
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    inputs: Inputs,
    regions: Vec<(u64, u64)>,
    path: PathBuf,
}

/// A snapshot of a 2-region, 1-vCPU "VM" whose memory holds a pattern.
fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("vmlinux");
    std::fs::write(&kernel, b"kernel").unwrap();
    let initramfs = dir.path().join("initramfs");
    std::fs::write(&initramfs, b"initramfs").unwrap();
    let inputs = Inputs::of(&kernel, Some(&initramfs), 1, 1).unwrap();
    let regions = vec![(0, 8 * PAGE), (0x10_0000, 4 * PAGE)];
    let path = dir.path().join("snap");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    let header = write(
        &file,
        &path,
        &inputs,
        regions.clone(),
        &state(1),
        |offset| {
            file.write_all_at(&[0xab; 100], offset + PAGE)?;
            Ok(12 * PAGE)
        },
    )
    .unwrap();
    assert!(header.memory_offset.is_multiple_of(PAGE));
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        header.memory_offset + 12 * PAGE
    );
    Fixture {
        dir,
        inputs,
        regions,
        path,
    }
}

fn refusal(f: &Fixture, path: &Path, inputs: &Inputs) -> String {
    match Snapshot::open(path, inputs, &f.regions) {
        Ok(_) => panic!("{} was not refused", path.display()),
        Err(e) => e.to_string(),
    }
}

/// A copy of the fixture's file with `edit` applied.
fn edited(f: &Fixture, name: &str, edit: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let mut bytes = std::fs::read(&f.path).unwrap();
    edit(&mut bytes);
    let path = f.dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn a_snapshot_round_trips() {
    let f = fixture();
    let snap = Snapshot::open(&f.path, &f.inputs, &f.regions).unwrap();
    assert_eq!(snap.state.vcpus[0].regs.rip, 0xffff_ffff_8100_0000);
    assert_eq!(snap.state.vcpus[0].msrs[0].data, 42);
    assert_eq!(snap.state.virtio, state(1).virtio);
    assert_eq!(snap.state.serial, state(1).serial);
    let mut byte = [0u8; 1];
    snap.file
        .read_exact_at(&mut byte, snap.header.memory_offset + PAGE + 99)
        .unwrap();
    assert_eq!(byte, [0xab]);
}

#[test]
fn damaged_and_foreign_snapshots_are_refused_naming_why() {
    let f = fixture();
    let len = std::fs::metadata(&f.path).unwrap().len() as usize;
    let memory_offset = len - 12 * PAGE as usize;
    let next_format = format!("snapshot format {}", FORMAT_VERSION + 1);
    let cases: Vec<(PathBuf, &str)> = vec![
        (edited(&f, "empty", |b| b.clear()), "too short"),
        (edited(&f, "magic", |b| b[0] = b'X'), "not a hull snapshot"),
        (
            edited(&f, "format", |b| b[8] = FORMAT_VERSION as u8 + 1),
            &next_format,
        ),
        (
            edited(&f, "header-len", |b| {
                b[16..24].copy_from_slice(&u64::MAX.to_le_bytes())
            }),
            "does not fit",
        ),
        (
            edited(&f, "truncated", |b| b.truncate(len - 1)),
            "truncated or corrupt",
        ),
        (edited(&f, "longer", |b| b.push(0)), "truncated or corrupt"),
        (
            edited(&f, "memory", |b| b[memory_offset + PAGE as usize] ^= 1),
            "guest memory does not match its digest",
        ),
        (
            edited(&f, "state", |b| {
                let at = memory_offset - 1;
                let end = (0..at).rev().find(|&i| b[i] == b'}').unwrap();
                b[end - 1] ^= 1;
            }),
            "the state does not match its digest",
        ),
        (
            edited(&f, "version", |b| {
                let at = 24 + b"{\"vmm_version\":\"".len();
                b[at] = b'7';
            }),
            "this is hull-vmm",
        ),
    ];
    for (path, reason) in &cases {
        let err = refusal(&f, path, &f.inputs);
        assert!(err.contains(reason), "{}: {err}", path.display());
        assert!(
            err.starts_with(&format!("snapshot {}", path.display())),
            "{err}"
        );
    }
    let other = |edit: &dyn Fn(&mut Inputs)| {
        let mut inputs = f.inputs.clone();
        edit(&mut inputs);
        refusal(&f, &f.path, &inputs)
    };
    assert!(other(&|i| i.kernel_sha256 = "0".repeat(64)).contains("another kernel"));
    assert!(other(&|i| i.initramfs_sha256 = None).contains("another initramfs"));
    assert!(other(&|i| i.memory_mib = 2).contains("this VM has 1 and 2 MiB"));
    assert!(other(&|i| i.vcpus = 2).contains("this VM has 2 and 1 MiB"));
    let err = match Snapshot::open(&f.path, &f.inputs, &[(0, 12 * PAGE)]) {
        Ok(_) => panic!("another memory layout was not refused"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("memory regions"), "{err}");
}

#[test]
fn the_memory_digest_is_the_contents_wherever_the_holes_are() {
    let dir = tempfile::tempdir().unwrap();
    let open = |name: &str| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join(name))
            .unwrap()
    };
    let len = 8 << 20;
    let sparse = open("sparse");
    sparse.set_len(len).unwrap();
    sparse.write_all_at(b"guest", 1 << 20).unwrap();
    let base = range_sha256(&sparse, 0, len).unwrap();
    assert_eq!(range_sha256(&sparse, 0, len).unwrap(), base, "repeatable");
    // The same content written out in full, zeros and all.
    let dense = open("dense");
    let mut bytes = vec![0u8; len as usize];
    bytes[1 << 20..(1 << 20) + 5].copy_from_slice(b"guest");
    dense.write_all_at(&bytes, 0).unwrap();
    assert_eq!(range_sha256(&dense, 0, len).unwrap(), base);
    // A byte in what was a hole, and the same bytes at another place.
    sparse.write_all_at(b"x", 6 << 20).unwrap();
    assert_ne!(range_sha256(&sparse, 0, len).unwrap(), base);
    dense.write_all_at(&[0; 5], 1 << 20).unwrap();
    dense.write_all_at(b"guest", 2 << 20).unwrap();
    assert_ne!(range_sha256(&dense, 0, len).unwrap(), base);
    // Pages count from the range's start.
    assert_ne!(
        range_sha256(&dense, PAGE, len - PAGE).unwrap(),
        range_sha256(&dense, 0, len).unwrap()
    );
}
