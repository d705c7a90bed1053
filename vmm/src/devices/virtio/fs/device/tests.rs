//! The device's own parts: config space, error answers, what a restore
//! accepts. Requests through a real virtiofsd are tested end to end (a
//! Docker volume, tests/shim_volumes_kvm.rs).

use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;

use super::*;

fn guest() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
}

#[test]
fn the_config_space_holds_the_tag_and_one_request_queue() {
    let fs = Fs::new("hull-share", None).unwrap();
    let mut config = [0xffu8; TAG_LEN + 4];
    fs.read_config(0, &mut config);
    assert_eq!(&config[..10], b"hull-share");
    assert!(config[10..TAG_LEN].iter().all(|&b| b == 0), "NUL-padded");
    assert_eq!(config[TAG_LEN..], 1u32.to_le_bytes());
    assert_eq!(fs.common().device_type, TYPE_FS);
    assert_eq!(fs.common().queues.len(), 2, "hiprio and one request queue");
}

#[test]
fn error_answers_carry_the_request_s_unique_id() {
    let mem = guest();
    let mut request = [0u8; 40];
    request[8..16].copy_from_slice(&0x1234_5678_9abc_u64.to_le_bytes());
    mem.write_slice(&request, GuestAddress(0x1000)).unwrap();
    mem.write_slice(&[0xee; 64], GuestAddress(0x2000)).unwrap();
    let descs = [
        Descriptor::new(0x1000, 40, 0, 0),
        Descriptor::new(0x2000, 64, VRING_DESC_F_WRITE as u16, 0),
    ];
    assert_eq!(answer_error(&mem, &descs, libc::EIO), OUT_HEADER_LEN);
    let mut out = [0u8; 20];
    mem.read_slice(&mut out, GuestAddress(0x2000)).unwrap();
    assert_eq!(out[..4], 16u32.to_le_bytes());
    assert_eq!(out[4..8], (-libc::EIO).to_le_bytes());
    assert_eq!(out[8..16], 0x1234_5678_9abc_u64.to_le_bytes());
    assert_eq!(out[16..], [0xee; 4], "nothing past the header");
    // FORGET has no writable part: returned with nothing written.
    assert_eq!(answer_error(&mem, &descs[..1], libc::EIO), 0);
    // A writable buffer too small for a header is left alone.
    let small = [
        descs[0],
        Descriptor::new(0x3000, 8, VRING_DESC_F_WRITE as u16, 0),
    ];
    assert_eq!(answer_error(&mem, &small, libc::EIO), 0);
}

#[test]
fn a_restore_needs_the_same_tag_and_an_unused_share() {
    let mut fs = Fs::new("hull-share", None).unwrap();
    let saved = fs.device_state();
    assert!(!fs.restore_device_state(&saved).unwrap());
    let other = serde_json::json!({"tag": "other", "used_backend": false});
    let err = fs.restore_device_state(&other).unwrap_err().to_string();
    assert!(err.contains("other"), "{err}");
    let used = serde_json::json!({"tag": "hull-share", "used_backend": true});
    let err = fs.restore_device_state(&used).unwrap_err().to_string();
    assert!(err.contains("used its shared directory"), "{err}");
}
