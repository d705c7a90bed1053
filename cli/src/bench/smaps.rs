//! The VMM's own resident memory, from `/proc/<pid>/smaps`: the `Rss` of
//! every mapping, less the guest's RAM (which is the guest's, not the
//! VMM's, and grows with whatever the guest touches).
//!
//! Guest RAM is recognised by shape, not by address: a private anonymous
//! read-write mapping whose size is exactly the guest memory size (hull-vmm
//! maps guest RAM as one anonymous region, or two when the RAM reaches past
//! the 32-bit MMIO gap; then they are the two largest anonymous mappings and
//! their sizes add up to the guest memory size).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum SmapsError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "no anonymous read-write mapping of {guest_kib} KiB (the guest RAM) in the VMM's smaps"
    )]
    NoGuestMapping { guest_kib: u64 },
}

/// One mapping of an smaps file, with the fields the bench needs.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mapping {
    perms: String,
    /// No backing file (`[anon:name]` counts as anonymous too).
    anonymous: bool,
    size_kib: u64,
    rss_kib: u64,
}

impl Mapping {
    fn is_anonymous_rw(&self) -> bool {
        self.anonymous && self.perms.starts_with("rw") && self.perms.ends_with('p')
    }
}

/// The VMM's resident memory, split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmmRss {
    /// `Rss` summed over every mapping.
    pub total_kib: u64,
    /// The resident part of guest RAM.
    pub guest_kib: u64,
    /// `total_kib - guest_kib`: what the VMM itself uses.
    pub vmm_kib: u64,
}

/// Read `/proc/<pid>/smaps` of a running VMM with `guest_bytes` of guest RAM.
pub fn read(pid: u32, guest_bytes: u64) -> Result<VmmRss, SmapsError> {
    let path = PathBuf::from(format!("/proc/{pid}/smaps"));
    let text =
        std::fs::read_to_string(&path).map_err(|source| SmapsError::Read { path, source })?;
    vmm_rss(&text, guest_bytes)
}

/// Split the `Rss` of an smaps text into guest RAM and the VMM's own.
pub fn vmm_rss(smaps: &str, guest_bytes: u64) -> Result<VmmRss, SmapsError> {
    let mappings = parse(smaps);
    let guest_kib = guest_bytes / 1024;
    let guest =
        guest_mappings(&mappings, guest_kib).ok_or(SmapsError::NoGuestMapping { guest_kib })?;
    let total_kib: u64 = mappings.iter().map(|m| m.rss_kib).sum();
    let guest_rss: u64 = guest.iter().map(|m| m.rss_kib).sum();
    Ok(VmmRss {
        total_kib,
        guest_kib: guest_rss,
        vmm_kib: total_kib - guest_rss,
    })
}

/// The mapping(s) holding guest RAM. Should several anonymous mappings have
/// the guest's size, the one with the most resident pages is taken: the
/// guest has touched its RAM by the time the agent answers.
fn guest_mappings(mappings: &[Mapping], guest_kib: u64) -> Option<Vec<&Mapping>> {
    let mut anonymous: Vec<&Mapping> = mappings.iter().filter(|m| m.is_anonymous_rw()).collect();
    if let Some(one) = anonymous
        .iter()
        .filter(|m| m.size_kib == guest_kib)
        .max_by_key(|m| m.rss_kib)
    {
        return Some(vec![one]);
    }
    anonymous.sort_by_key(|m| std::cmp::Reverse(m.size_kib));
    match anonymous[..] {
        [a, b, ..] if a.size_kib + b.size_kib == guest_kib => Some(vec![a, b]),
        _ => None,
    }
}

fn parse(smaps: &str) -> Vec<Mapping> {
    let mut mappings = Vec::new();
    for line in smaps.lines() {
        if let Some(mapping) = parse_header(line) {
            mappings.push(mapping);
            continue;
        }
        let Some(current) = mappings.last_mut() else {
            continue;
        };
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let kib = || {
            value
                .trim()
                .strip_suffix("kB")
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        match key {
            "Size" => current.size_kib = kib().unwrap_or(0),
            "Rss" => current.rss_kib = kib().unwrap_or(0),
            _ => {}
        }
    }
    mappings
}

/// `start-end perms offset dev inode [path]`, e.g.
/// `7f2c00000000-7f2c08000000 rw-p 00000000 00:00 0`.
fn parse_header(line: &str) -> Option<Mapping> {
    let mut fields = line.split_whitespace();
    let range = fields.next()?;
    let (start, end) = range.split_once('-')?;
    u64::from_str_radix(start, 16).ok()?;
    u64::from_str_radix(end, 16).ok()?;
    let perms = fields.next()?;
    let _offset = fields.next()?;
    let _dev = fields.next()?;
    let _inode = fields.next()?;
    let path = fields.next();
    Some(Mapping {
        perms: perms.to_owned(),
        anonymous: path.is_none_or(|p| p.starts_with("[anon:")),
        size_kib: 0,
        rss_kib: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Trimmed from a real hull-vmm (128 MiB guest) smaps.
    const SMAPS: &str = "\
55d4c5a00000-55d4c5c3e000 r--p 00000000 fe:01 1311 /work/main/target/debug/hull-vmm
Size:               2296 kB
KernelPageSize:        4 kB
MMUPageSize:           4 kB
Rss:                2048 kB
Pss:                2048 kB
VmFlags: rd mr mw me dw sd
55d4c7e1b000-55d4c7e3c000 rw-p 00000000 00:00 0                          [heap]
Size:                132 kB
Rss:                  24 kB
VmFlags: rd wr mr mw me ac sd
7f3b40000000-7f3b48000000 rw-p 00000000 00:00 0 
Size:             131072 kB
KernelPageSize:        4 kB
Rss:               40960 kB
AnonHugePages:     32768 kB
VmFlags: rd wr mr mw me nr sd
7f3b48000000-7f3b48021000 rw-p 00000000 00:00 0 
Size:                132 kB
Rss:                   8 kB
7f3b4c000000-7f3b50000000 ---p 00000000 00:00 0 
Size:             131072 kB
Rss:                   0 kB
7ffd2a1e8000-7ffd2a209000 rw-p 00000000 00:00 0                          [stack]
Size:                132 kB
Rss:                  16 kB
";

    #[test]
    fn guest_ram_is_the_anonymous_mapping_of_the_guest_size() {
        let rss = vmm_rss(SMAPS, 128 << 20).unwrap();
        assert_eq!(
            rss,
            VmmRss {
                total_kib: 2048 + 24 + 40960 + 8 + 16,
                guest_kib: 40960,
                vmm_kib: 2048 + 24 + 8 + 16,
            }
        );
    }

    #[test]
    fn size_is_not_confused_with_kernel_page_size() {
        let mappings = parse(SMAPS);
        assert_eq!(mappings.len(), 6);
        assert_eq!(mappings[0].size_kib, 2296);
        assert!(!mappings[0].anonymous);
        assert!(!mappings[1].anonymous, "[heap] is named");
        assert!(mappings[2].is_anonymous_rw());
        assert!(!mappings[4].is_anonymous_rw(), "a PROT_NONE reservation");
    }

    #[test]
    fn guest_ram_split_around_the_mmio_gap() {
        let smaps = "\
7f0000000000-7f00c0000000 rw-p 00000000 00:00 0
Size:            3145728 kB
Rss:              100000 kB
7f1000000000-7f1040000000 rw-p 00000000 00:00 0
Size:            1048576 kB
Rss:                 100 kB
7f2000000000-7f2000001000 rw-p 00000000 00:00 0
Size:                  4 kB
Rss:                   4 kB
";
        let rss = vmm_rss(smaps, 4 << 30).unwrap();
        assert_eq!(rss.guest_kib, 100_100);
        assert_eq!(rss.vmm_kib, 4);
    }

    #[test]
    fn no_guest_mapping_is_an_error() {
        let err = vmm_rss(SMAPS, 256 << 20).unwrap_err();
        assert!(matches!(
            err,
            SmapsError::NoGuestMapping { guest_kib: 262144 }
        ));
    }
}
