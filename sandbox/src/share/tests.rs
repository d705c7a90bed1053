use super::*;

#[test]
fn mountinfo_escapes_are_undone() {
    assert_eq!(unescape(r"/a\040b\011c\134d"), "/a b\tc\\d");
    assert_eq!(unescape(r"/plain\0"), r"/plain\0");
}

/// Needs root (mounts): binds of a directory (read-write) and a file
/// (read-only) under the share, what the host sees through them, and a
/// cleanup that unmounts and removes only the share's own entries.
#[test]
fn needs_root_binds_are_mounted_as_asked_and_cleaned_up_without_touching_the_host() {
    let host = tempfile::tempdir().unwrap();
    let data = host.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("kept.txt"), "host data").unwrap();
    let file = host.path().join("config.txt");
    std::fs::write(&file, "setting=1").unwrap();
    let link = host.path().join("link");
    std::os::unix::fs::symlink(&data, &link).unwrap();
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("share");
    std::fs::create_dir(&dir).unwrap();
    let binds = [
        HostBind {
            source: link.clone(),
            destination: "/data".into(),
            read_only: false,
        },
        HostBind {
            source: file.clone(),
            destination: "/etc/config.txt".into(),
            read_only: true,
        },
    ];
    let root = dir.join(ROOT);
    std::fs::create_dir_all(&root).unwrap();
    for (i, bind) in binds.iter().enumerate() {
        mount_bind(bind, &root.join(i.to_string())).unwrap();
    }
    // Through the share, as virtiofsd sees it.
    std::fs::write(root.join("0/new.txt"), "from the share").unwrap();
    assert_eq!(
        std::fs::read_to_string(data.join("new.txt")).unwrap(),
        "from the share"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("1")).unwrap(),
        "setting=1"
    );
    let refused = std::fs::write(root.join("1"), "x").unwrap_err();
    assert_eq!(refused.raw_os_error(), Some(libc::EROFS));
    assert_eq!(mounts_under(&root).len(), 2);

    remove_leftovers(&dir);
    assert!(!dir.exists(), "the share directory is gone");
    assert!(mounts_under(&root).is_empty());
    assert_eq!(
        std::fs::read_to_string(data.join("kept.txt")).unwrap(),
        "host data",
        "the host's files survive the cleanup"
    );
    assert!(data.join("new.txt").exists());
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "setting=1");
}

#[test]
fn sockets_and_missing_sources_are_named() {
    let host = tempfile::tempdir().unwrap();
    let socket = host.path().join("s.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let target = host.path().join("t");
    let bind = |source: &Path| HostBind {
        source: source.to_path_buf(),
        destination: "/x".into(),
        read_only: false,
    };
    let err = mount_bind(&bind(&socket), &target).unwrap_err().to_string();
    assert!(err.contains("s.sock") && err.contains("socket"), "{err}");
    let err = mount_bind(&bind(&host.path().join("nope")), &target)
        .unwrap_err()
        .to_string();
    assert!(err.contains("nope"), "{err}");
    assert!(!target.exists());
}
