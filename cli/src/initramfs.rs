//! The guest's initramfs: an uncompressed cpio "newc" archive holding the
//! agent as `/init` and the few nodes the kernel needs before the agent
//! mounts anything.
//!
//! Uncompressed because the guest kernel would decompress it in emulated
//! kernel mode. Deterministic (mtime 0, uid/gid 0, inode numbers by
//! position), so the same agent always gives the same bytes and a hash of
//! the archive can key a cache.
//!
//! Layout: the directories `/dev /etc /proc /run /sbin /sys /tmp`,
//! `/dev/console` (char 5,1: the kernel opens it as init's stdio) and
//! `/dev/null` (char 1,3: Rust's runtime falls back to it if the console is
//! missing), `/init` (the agent, 0755), and the `TRAILER!!!` record.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use thiserror::Error;

/// The newc magic; "070702" would be the variant with checksums.
const NEWC_MAGIC: &[u8; 6] = b"070701";
/// 6 bytes of magic and 13 fields of 8 hex digits.
const HEADER_LEN: usize = 110;
const TRAILER: &str = "TRAILER!!!";

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFCHR: u32 = 0o020_000;

/// Directories of the image, each mode 0755 except `/tmp` (1777).
pub const DIRECTORIES: &[(&str, u32)] = &[
    ("dev", 0o755),
    ("etc", 0o755),
    ("proc", 0o755),
    ("run", 0o755),
    ("sbin", 0o755),
    ("sys", 0o755),
    ("tmp", 0o1777),
];

/// Device nodes of the image: (path, mode, major, minor).
pub const DEVICES: &[(&str, u32, u32, u32)] =
    &[("dev/console", 0o600, 5, 1), ("dev/null", 0o666, 1, 3)];

/// Where the agent goes, and its mode.
pub const INIT_PATH: &str = "init";
pub const INIT_MODE: u32 = 0o755;

/// Writes a newc archive entry by entry; [`finish`](Self::finish) adds the
/// trailer. Inode numbers count from 1 in the order entries are added.
pub struct CpioWriter<W: Write> {
    out: W,
    next_ino: u32,
    written: u64,
}

impl<W: Write> CpioWriter<W> {
    pub fn new(out: W) -> Self {
        CpioWriter {
            out,
            next_ino: 1,
            written: 0,
        }
    }

    pub fn directory(&mut self, name: &str, permissions: u32) -> io::Result<()> {
        self.entry(name, S_IFDIR | permissions, 2, (0, 0), &[])
    }

    pub fn file(&mut self, name: &str, permissions: u32, data: &[u8]) -> io::Result<()> {
        self.entry(name, S_IFREG | permissions, 1, (0, 0), data)
    }

    pub fn char_device(
        &mut self,
        name: &str,
        permissions: u32,
        major: u32,
        minor: u32,
    ) -> io::Result<()> {
        self.entry(name, S_IFCHR | permissions, 1, (major, minor), &[])
    }

    /// Writes the trailer and returns the output and the archive's length.
    pub fn finish(mut self) -> io::Result<(W, u64)> {
        self.next_ino = 0;
        self.entry(TRAILER, 0, 1, (0, 0), &[])?;
        self.out.flush()?;
        Ok((self.out, self.written))
    }

    fn entry(
        &mut self,
        name: &str,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> io::Result<()> {
        let too_big = |what| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name}: {what} too large for cpio"),
            )
        };
        let filesize = u32::try_from(data.len()).map_err(|_| too_big("file"))?;
        let namesize = u32::try_from(name.len() + 1).map_err(|_| too_big("name"))?;
        let ino = self.next_ino;
        if ino != 0 {
            self.next_ino += 1;
        }
        // ino mode uid gid nlink mtime filesize devmajor devminor
        // rdevmajor rdevminor namesize check
        let fields = [
            ino, mode, 0, 0, nlink, 0, filesize, 0, 0, rdev.0, rdev.1, namesize, 0,
        ];
        let mut header = Vec::with_capacity(HEADER_LEN + name.len() + 4);
        header.extend_from_slice(NEWC_MAGIC);
        for field in fields {
            header.extend_from_slice(format!("{field:08X}").as_bytes());
        }
        header.extend_from_slice(name.as_bytes());
        header.push(0);
        header.resize(align4(header.len()), 0);
        self.write(&header)?;
        self.write(data)?;
        self.write(&[0; 3][..align4(data.len()) - data.len()])
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }
}

fn align4(len: usize) -> usize {
    (len + 3) & !3
}

/// Writes the initramfs with `agent` as `/init`; returns the output and the
/// archive's length. Does not check `agent` (see [`build_initramfs`]).
pub fn write_initramfs<W: Write>(out: W, agent: &[u8]) -> io::Result<(W, u64)> {
    let mut cpio = CpioWriter::new(out);
    for &(name, permissions) in DIRECTORIES {
        cpio.directory(name, permissions)?;
    }
    for &(name, permissions, major, minor) in DEVICES {
        cpio.char_device(name, permissions, major, minor)?;
    }
    cpio.file(INIT_PATH, INIT_MODE, agent)?;
    cpio.finish()
}

/// Why an initramfs could not be built.
#[derive(Debug, Error)]
pub enum InitramfsError {
    #[error("cannot read the agent binary {path}")]
    ReadAgent {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not an x86-64 or aarch64 ELF executable")]
    NotElf { path: PathBuf },
    #[error("{path} is dynamically linked (interpreter {interpreter}) but the guest has no libc; build it with agent/build.sh")]
    DynamicAgent { path: PathBuf, interpreter: String },
    #[error("cannot write the initramfs {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Builds the initramfs at `out` from the agent binary at `agent`, and
/// returns its length in bytes.
///
/// The agent must be a static ELF executable: the guest has no dynamic
/// loader, and a kernel that cannot run `/init` panics. `out` is replaced
/// atomically (written beside it, then renamed), so a reader never sees a
/// half-written archive.
pub fn build_initramfs(agent: &Path, out: &Path) -> Result<u64, InitramfsError> {
    let binary = fs::read(agent).map_err(|source| InitramfsError::ReadAgent {
        path: agent.to_owned(),
        source,
    })?;
    check_static_elf(&binary).map_err(|problem| match problem {
        ElfProblem::NotElf => InitramfsError::NotElf {
            path: agent.to_owned(),
        },
        ElfProblem::Interpreter(interpreter) => InitramfsError::DynamicAgent {
            path: agent.to_owned(),
            interpreter,
        },
    })?;

    let write_error = |source| InitramfsError::Write {
        path: out.to_owned(),
        source,
    };
    let file_name = out
        .file_name()
        .ok_or_else(|| write_error(io::ErrorKind::InvalidInput.into()))?;
    let partial = out.with_file_name(format!(
        ".{}.{}.partial",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let written = File::create(&partial)
        .and_then(|file| write_initramfs(BufWriter::new(file), &binary))
        .and_then(|(writer, len)| {
            writer
                .into_inner()
                .map_err(io::IntoInnerError::into_error)?
                .sync_all()?;
            Ok(len)
        })
        .and_then(|len| fs::rename(&partial, out).map(|()| len));
    if written.is_err() {
        let _ = fs::remove_file(&partial);
    }
    written.map_err(write_error)
}

#[derive(Debug, PartialEq, Eq)]
enum ElfProblem {
    NotElf,
    Interpreter(String),
}

/// Accepts a 64-bit little-endian ELF executable without `PT_INTERP`.
fn check_static_elf(binary: &[u8]) -> Result<(), ElfProblem> {
    const EM_X86_64: u16 = 62;
    const EM_AARCH64: u16 = 183;
    const PT_INTERP: u32 = 3;
    let u16_at = |at: usize| {
        binary
            .get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |at: usize| {
        binary
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |at: usize| {
        binary
            .get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };

    let is_elf64_le =
        binary.starts_with(b"\x7fELF") && binary.get(4) == Some(&2) && binary.get(5) == Some(&1);
    let machine = u16_at(18).ok_or(ElfProblem::NotElf)?;
    if !is_elf64_le || !matches!(machine, EM_X86_64 | EM_AARCH64) {
        return Err(ElfProblem::NotElf);
    }
    let phoff = u64_at(32)
        .and_then(|off| usize::try_from(off).ok())
        .ok_or(ElfProblem::NotElf)?;
    let phentsize = usize::from(u16_at(54).ok_or(ElfProblem::NotElf)?);
    let phnum = usize::from(u16_at(56).ok_or(ElfProblem::NotElf)?);
    let headers_end = phnum
        .checked_mul(phentsize)
        .and_then(|len| len.checked_add(phoff));
    if phentsize < 56 || headers_end.is_none_or(|end| end > binary.len()) {
        return Err(ElfProblem::NotElf);
    }
    for index in 0..phnum {
        let header = phoff + index * phentsize;
        if u32_at(header).ok_or(ElfProblem::NotElf)? != PT_INTERP {
            continue;
        }
        let offset = u64_at(header + 8).and_then(|off| usize::try_from(off).ok());
        let size = u64_at(header + 32).and_then(|size| usize::try_from(size).ok());
        let interpreter = offset
            .zip(size)
            .and_then(|(offset, size)| binary.get(offset..offset.checked_add(size)?))
            .map(|name| {
                String::from_utf8_lossy(name)
                    .trim_end_matches('\0')
                    .to_owned()
            })
            .unwrap_or_default();
        return Err(ElfProblem::Interpreter(interpreter));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One parsed record of a newc archive.
    #[derive(Debug)]
    struct Entry {
        name: String,
        ino: u32,
        mode: u32,
        uid: u32,
        gid: u32,
        nlink: u32,
        mtime: u32,
        rdev: (u32, u32),
        data: Vec<u8>,
    }

    /// Parses a whole archive, checking the magic, the NUL after each name,
    /// the 4-byte alignment of every header and every file's data, and that
    /// the trailer is the last record and ends the archive.
    fn parse(archive: &[u8]) -> Vec<Entry> {
        let mut entries = Vec::new();
        let mut offset = 0;
        loop {
            assert_eq!(offset % 4, 0, "header at {offset} not aligned");
            let header = &archive[offset..offset + HEADER_LEN];
            assert_eq!(&header[..6], NEWC_MAGIC, "magic at {offset}");
            let field = |index: usize| {
                let hex = std::str::from_utf8(&header[6 + 8 * index..14 + 8 * index]).unwrap();
                u32::from_str_radix(hex, 16).unwrap()
            };
            let (filesize, namesize) = (field(6) as usize, field(11) as usize);
            assert_eq!(field(12), 0, "check field");
            assert_eq!((field(7), field(8)), (0, 0), "devmajor/devminor");
            let name_start = offset + HEADER_LEN;
            let name_bytes = &archive[name_start..name_start + namesize];
            assert_eq!(name_bytes.last(), Some(&0), "name not NUL-terminated");
            let data_start = align4(name_start + namesize);
            assert!(archive[name_start + namesize..data_start]
                .iter()
                .all(|&b| b == 0));
            let data_end = data_start + filesize;
            let next = align4(data_end);
            assert!(archive[data_end..next].iter().all(|&b| b == 0), "padding");
            let entry = Entry {
                name: String::from_utf8(name_bytes[..namesize - 1].to_vec()).unwrap(),
                ino: field(0),
                mode: field(1),
                uid: field(2),
                gid: field(3),
                nlink: field(4),
                mtime: field(5),
                rdev: (field(9), field(10)),
                data: archive[data_start..data_end].to_vec(),
            };
            offset = next;
            let last = entry.name == TRAILER;
            entries.push(entry);
            if last {
                assert_eq!(offset, archive.len(), "bytes after the trailer");
                return entries;
            }
        }
    }

    fn build(agent: &[u8]) -> Vec<u8> {
        let (archive, len) = write_initramfs(Vec::new(), agent).unwrap();
        assert_eq!(len, archive.len() as u64);
        archive
    }

    #[test]
    fn every_entry_is_there_with_its_type_mode_and_content() {
        // An odd length exercises the data padding.
        let agent = b"\x7fELF-not-really-but-odd";
        let entries = parse(&build(agent));
        let summary: Vec<(&str, u32, u32, (u32, u32))> = entries
            .iter()
            .map(|e| (e.name.as_str(), e.mode, e.nlink, e.rdev))
            .collect();
        assert_eq!(
            summary,
            [
                ("dev", 0o040755, 2, (0, 0)),
                ("etc", 0o040755, 2, (0, 0)),
                ("proc", 0o040755, 2, (0, 0)),
                ("run", 0o040755, 2, (0, 0)),
                ("sbin", 0o040755, 2, (0, 0)),
                ("sys", 0o040755, 2, (0, 0)),
                ("tmp", 0o041777, 2, (0, 0)),
                ("dev/console", 0o020600, 1, (5, 1)),
                ("dev/null", 0o020666, 1, (1, 3)),
                ("init", 0o100755, 1, (0, 0)),
                ("TRAILER!!!", 0, 1, (0, 0)),
            ]
        );
        let init = entries.iter().find(|e| e.name == "init").unwrap();
        assert_eq!(init.data, agent);
        for entry in &entries {
            assert_eq!(
                (entry.uid, entry.gid, entry.mtime),
                (0, 0, 0),
                "{}",
                entry.name
            );
            if entry.name != "init" {
                assert!(entry.data.is_empty(), "{}", entry.name);
            }
        }
    }

    #[test]
    fn inodes_are_fixed_and_distinct() {
        let entries = parse(&build(b"agent"));
        let inodes: Vec<u32> = entries.iter().map(|e| e.ino).collect();
        let expected: Vec<u32> = (1..entries.len() as u32).chain([0]).collect();
        assert_eq!(inodes, expected);
    }

    #[test]
    fn output_is_deterministic_and_aligned() {
        for agent_len in 0..8 {
            let agent = vec![0xAB; agent_len];
            let first = build(&agent);
            assert_eq!(first, build(&agent), "same agent, same bytes");
            assert_eq!(first.len() % 4, 0);
            assert_eq!(parse(&first).len(), DIRECTORIES.len() + DEVICES.len() + 2);
        }
        assert_ne!(build(b"one"), build(b"two"));
    }

    /// A minimal ELF64 x86-64 executable image: a PT_LOAD and, if asked,
    /// a PT_INTERP naming `interpreter`.
    fn fake_elf(interpreter: Option<&str>) -> Vec<u8> {
        let phnum: u16 = if interpreter.is_some() { 2 } else { 1 };
        let mut elf = vec![0u8; 64];
        elf[..8].copy_from_slice(b"\x7fELF\x02\x01\x01\x00");
        elf[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        elf[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
        elf[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
        elf[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
        elf[56..58].copy_from_slice(&phnum.to_le_bytes());
        let strings_at = 64 + 56 * u64::from(phnum);
        let mut load = vec![0u8; 56];
        load[..4].copy_from_slice(&1u32.to_le_bytes());
        elf.extend_from_slice(&load);
        if let Some(interpreter) = interpreter {
            let mut interp = vec![0u8; 56];
            interp[..4].copy_from_slice(&3u32.to_le_bytes());
            interp[8..16].copy_from_slice(&strings_at.to_le_bytes());
            interp[32..40].copy_from_slice(&(interpreter.len() as u64 + 1).to_le_bytes());
            elf.extend_from_slice(&interp);
            elf.extend_from_slice(interpreter.as_bytes());
            elf.push(0);
        }
        elf
    }

    #[test]
    fn only_static_elf_executables_are_accepted() {
        assert_eq!(check_static_elf(&fake_elf(None)), Ok(()));
        assert_eq!(
            check_static_elf(&fake_elf(Some("/lib64/ld-linux-x86-64.so.2"))),
            Err(ElfProblem::Interpreter(
                "/lib64/ld-linux-x86-64.so.2".into()
            ))
        );
        assert_eq!(
            check_static_elf(b"#!/bin/sh\nexit 0\n"),
            Err(ElfProblem::NotElf)
        );
        assert_eq!(
            check_static_elf(&fake_elf(None)[..40]),
            Err(ElfProblem::NotElf)
        );
        let mut truncated = fake_elf(None);
        truncated.truncate(80);
        assert_eq!(check_static_elf(&truncated), Err(ElfProblem::NotElf));
    }

    #[test]
    fn build_writes_the_file_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let agent = dir.path().join("hull-agent");
        let out = dir.path().join("initramfs.cpio");
        let binary = fake_elf(None);
        fs::write(&agent, &binary).unwrap();
        fs::write(&out, b"stale").unwrap();

        let len = build_initramfs(&agent, &out).unwrap();
        let archive = fs::read(&out).unwrap();
        assert_eq!(len, archive.len() as u64);
        assert_eq!(archive, build(&binary));
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "no partial file left: {names:?}");
    }

    #[test]
    fn a_dynamically_linked_agent_is_refused() {
        // This test binary is an ordinary dynamically linked executable.
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("initramfs.cpio");
        let this = std::env::current_exe().unwrap();
        match build_initramfs(&this, &out) {
            Err(InitramfsError::DynamicAgent { interpreter, .. }) => {
                assert!(interpreter.contains("ld"), "{interpreter}")
            }
            other => panic!("expected DynamicAgent, got {other:?}"),
        }
        assert!(!out.exists());
    }

    #[test]
    fn a_missing_agent_or_output_directory_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let err = build_initramfs(&missing, &dir.path().join("out")).unwrap_err();
        assert!(matches!(err, InitramfsError::ReadAgent { .. }), "{err:?}");

        let agent = dir.path().join("agent");
        fs::write(&agent, fake_elf(None)).unwrap();
        let err = build_initramfs(&agent, &missing.join("out")).unwrap_err();
        assert!(matches!(err, InitramfsError::Write { .. }), "{err:?}");
    }
}
