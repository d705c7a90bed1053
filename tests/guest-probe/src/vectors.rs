//! Does the guest kernel keep each process's vector registers? Two processes
//! (parent and a forked child) each load every AVX register the CPU has and
//! the OS enabled (ymm0-15, and with AVX-512 zmm0-31 and the k1-k7 masks)
//! with a pattern of their own, yield the CPU to each other many times, and
//! read the registers back. A kernel that saves less state than the user
//! can use (FXSAVE only, while XCR0 enables AVX) shows the other process's
//! upper halves here; that is what made fresh processes die with SIGSEGV at
//! random under nested PVM (glibc's AVX string functions then compute with
//! another process's data).

use std::arch::asm;

use crate::report::Report;

/// How often each process gives the CPU away with its registers loaded.
const YIELDS: u32 = 100;
/// ymm0-15 (16 × 32 bytes) or zmm0-31 (32 × 64 bytes), then k1-k7 (7 × 8).
const AREA: usize = 32 * 64 + 7 * 8;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Width {
    Ymm,
    Zmm,
}

pub fn probe(report: &mut Report) {
    let width = if std::arch::is_x86_feature_detected!("avx512f") {
        Width::Zmm
    } else if std::arch::is_x86_feature_detected!("avx") {
        Width::Ymm
    } else {
        report.line("vectors skipped=no-avx");
        return;
    };
    let regs = match width {
        Width::Ymm => "ymm0-15",
        Width::Zmm => "zmm0-31,k1-7",
    };
    // SAFETY: fork in a single-threaded process; the child only runs the
    // register round (no allocation, no locks) and then _exits.
    let child = unsafe { libc::fork() };
    if child < 0 {
        report.line("vectors error step=fork");
        return;
    }
    if child == 0 {
        let ok = round(width, 0xc1);
        // SAFETY: _exit ends the forked child without running the parent's
        // atexit handlers or flushing its copied stdio buffers.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    let parent_ok = round(width, 0x5a);
    let mut status = 0;
    // SAFETY: waits for the child forked above; `status` is a valid pointer.
    let waited = unsafe { libc::waitpid(child, &mut status, 0) };
    let child_ok = waited == child && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    if parent_ok && child_ok {
        report.line(&format!("vectors ok regs={regs} yields={YIELDS}"));
    } else {
        report.line(&format!(
            "vectors error regs={regs} parent_kept={parent_ok} child_kept={child_ok} child_status={status:#x}"
        ));
    }
}

/// Load the registers with a pattern seeded by `seed`, yield [`YIELDS`]
/// times, and tell whether every register still holds it.
fn round(width: Width, seed: u8) -> bool {
    let mut pattern = [0u8; AREA];
    for (i, b) in pattern.iter_mut().enumerate() {
        *b = seed.wrapping_mul(31).wrapping_add((i % 251) as u8) ^ (i / 251) as u8;
    }
    // kmovw moves 16 of each mask slot's 64 bits.
    for slot in pattern[32 * 64..].chunks_mut(8) {
        slot[2..].fill(0);
    }
    let mut back = [0u8; AREA];
    match width {
        // SAFETY: only reached when the CPU and OS support AVX.
        Width::Ymm => unsafe { ymm_round(&pattern, &mut back) },
        // SAFETY: only reached when the CPU and OS support AVX-512F.
        Width::Zmm => unsafe { zmm_round(&pattern, &mut back) },
    }
    let used = match width {
        Width::Ymm => 16 * 32,
        Width::Zmm => AREA,
    };
    pattern[..used] == back[..used]
}

/// The syscall loop both rounds share: `sched_yield` [`YIELDS`] times with
/// nothing but general registers touched between the load and the store.
macro_rules! yield_loop {
    () => {
        concat!(
            "2:\n",
            "mov eax, 24\n", // SYS_sched_yield
            "syscall\n",
            "dec {n:e}\n",
            "jnz 2b\n",
        )
    };
}

/// ymm0-15 through [`YIELDS`] context switches.
#[target_feature(enable = "avx")]
unsafe fn ymm_round(pattern: &[u8; AREA], back: &mut [u8; AREA]) {
    // SAFETY: the loads and stores stay inside the two AREA-byte buffers
    // (16 × 32 bytes); every register the block writes is declared.
    unsafe {
        asm!(
            "vmovdqu ymm0, [{p}]", "vmovdqu ymm1, [{p} + 32]",
            "vmovdqu ymm2, [{p} + 64]", "vmovdqu ymm3, [{p} + 96]",
            "vmovdqu ymm4, [{p} + 128]", "vmovdqu ymm5, [{p} + 160]",
            "vmovdqu ymm6, [{p} + 192]", "vmovdqu ymm7, [{p} + 224]",
            "vmovdqu ymm8, [{p} + 256]", "vmovdqu ymm9, [{p} + 288]",
            "vmovdqu ymm10, [{p} + 320]", "vmovdqu ymm11, [{p} + 352]",
            "vmovdqu ymm12, [{p} + 384]", "vmovdqu ymm13, [{p} + 416]",
            "vmovdqu ymm14, [{p} + 448]", "vmovdqu ymm15, [{p} + 480]",
            yield_loop!(),
            "vmovdqu [{o}], ymm0", "vmovdqu [{o} + 32], ymm1",
            "vmovdqu [{o} + 64], ymm2", "vmovdqu [{o} + 96], ymm3",
            "vmovdqu [{o} + 128], ymm4", "vmovdqu [{o} + 160], ymm5",
            "vmovdqu [{o} + 192], ymm6", "vmovdqu [{o} + 224], ymm7",
            "vmovdqu [{o} + 256], ymm8", "vmovdqu [{o} + 288], ymm9",
            "vmovdqu [{o} + 320], ymm10", "vmovdqu [{o} + 352], ymm11",
            "vmovdqu [{o} + 384], ymm12", "vmovdqu [{o} + 416], ymm13",
            "vmovdqu [{o} + 448], ymm14", "vmovdqu [{o} + 480], ymm15",
            "vzeroupper",
            p = in(reg) pattern.as_ptr(),
            o = in(reg) back.as_mut_ptr(),
            n = inout(reg) YIELDS => _,
            out("rax") _, out("rcx") _, out("r11") _,
            out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _,
            out("ymm4") _, out("ymm5") _, out("ymm6") _, out("ymm7") _,
            out("ymm8") _, out("ymm9") _, out("ymm10") _, out("ymm11") _,
            out("ymm12") _, out("ymm13") _, out("ymm14") _, out("ymm15") _,
            options(nostack),
        );
    }
}

/// zmm0-31 and k1-k7 through [`YIELDS`] context switches.
#[target_feature(enable = "avx512f")]
unsafe fn zmm_round(pattern: &[u8; AREA], back: &mut [u8; AREA]) {
    // SAFETY: the loads and stores stay inside the two AREA-byte buffers
    // (32 × 64 bytes, then 7 × 2 bytes of masks at 2048); every register
    // the block writes is declared.
    unsafe {
        asm!(
            "vmovdqu64 zmm0, [{p}]", "vmovdqu64 zmm1, [{p} + 64]",
            "vmovdqu64 zmm2, [{p} + 128]", "vmovdqu64 zmm3, [{p} + 192]",
            "vmovdqu64 zmm4, [{p} + 256]", "vmovdqu64 zmm5, [{p} + 320]",
            "vmovdqu64 zmm6, [{p} + 384]", "vmovdqu64 zmm7, [{p} + 448]",
            "vmovdqu64 zmm8, [{p} + 512]", "vmovdqu64 zmm9, [{p} + 576]",
            "vmovdqu64 zmm10, [{p} + 640]", "vmovdqu64 zmm11, [{p} + 704]",
            "vmovdqu64 zmm12, [{p} + 768]", "vmovdqu64 zmm13, [{p} + 832]",
            "vmovdqu64 zmm14, [{p} + 896]", "vmovdqu64 zmm15, [{p} + 960]",
            "vmovdqu64 zmm16, [{p} + 1024]", "vmovdqu64 zmm17, [{p} + 1088]",
            "vmovdqu64 zmm18, [{p} + 1152]", "vmovdqu64 zmm19, [{p} + 1216]",
            "vmovdqu64 zmm20, [{p} + 1280]", "vmovdqu64 zmm21, [{p} + 1344]",
            "vmovdqu64 zmm22, [{p} + 1408]", "vmovdqu64 zmm23, [{p} + 1472]",
            "vmovdqu64 zmm24, [{p} + 1536]", "vmovdqu64 zmm25, [{p} + 1600]",
            "vmovdqu64 zmm26, [{p} + 1664]", "vmovdqu64 zmm27, [{p} + 1728]",
            "vmovdqu64 zmm28, [{p} + 1792]", "vmovdqu64 zmm29, [{p} + 1856]",
            "vmovdqu64 zmm30, [{p} + 1920]", "vmovdqu64 zmm31, [{p} + 1984]",
            "kmovw k1, [{p} + 2048]", "kmovw k2, [{p} + 2056]",
            "kmovw k3, [{p} + 2064]", "kmovw k4, [{p} + 2072]",
            "kmovw k5, [{p} + 2080]", "kmovw k6, [{p} + 2088]",
            "kmovw k7, [{p} + 2096]",
            yield_loop!(),
            "vmovdqu64 [{o}], zmm0", "vmovdqu64 [{o} + 64], zmm1",
            "vmovdqu64 [{o} + 128], zmm2", "vmovdqu64 [{o} + 192], zmm3",
            "vmovdqu64 [{o} + 256], zmm4", "vmovdqu64 [{o} + 320], zmm5",
            "vmovdqu64 [{o} + 384], zmm6", "vmovdqu64 [{o} + 448], zmm7",
            "vmovdqu64 [{o} + 512], zmm8", "vmovdqu64 [{o} + 576], zmm9",
            "vmovdqu64 [{o} + 640], zmm10", "vmovdqu64 [{o} + 704], zmm11",
            "vmovdqu64 [{o} + 768], zmm12", "vmovdqu64 [{o} + 832], zmm13",
            "vmovdqu64 [{o} + 896], zmm14", "vmovdqu64 [{o} + 960], zmm15",
            "vmovdqu64 [{o} + 1024], zmm16", "vmovdqu64 [{o} + 1088], zmm17",
            "vmovdqu64 [{o} + 1152], zmm18", "vmovdqu64 [{o} + 1216], zmm19",
            "vmovdqu64 [{o} + 1280], zmm20", "vmovdqu64 [{o} + 1344], zmm21",
            "vmovdqu64 [{o} + 1408], zmm22", "vmovdqu64 [{o} + 1472], zmm23",
            "vmovdqu64 [{o} + 1536], zmm24", "vmovdqu64 [{o} + 1600], zmm25",
            "vmovdqu64 [{o} + 1664], zmm26", "vmovdqu64 [{o} + 1728], zmm27",
            "vmovdqu64 [{o} + 1792], zmm28", "vmovdqu64 [{o} + 1856], zmm29",
            "vmovdqu64 [{o} + 1920], zmm30", "vmovdqu64 [{o} + 1984], zmm31",
            "kmovw [{o} + 2048], k1", "kmovw [{o} + 2056], k2",
            "kmovw [{o} + 2064], k3", "kmovw [{o} + 2072], k4",
            "kmovw [{o} + 2080], k5", "kmovw [{o} + 2088], k6",
            "kmovw [{o} + 2096], k7",
            "vzeroupper",
            p = in(reg) pattern.as_ptr(),
            o = in(reg) back.as_mut_ptr(),
            n = inout(reg) YIELDS => _,
            out("rax") _, out("rcx") _, out("r11") _,
            out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _,
            out("zmm4") _, out("zmm5") _, out("zmm6") _, out("zmm7") _,
            out("zmm8") _, out("zmm9") _, out("zmm10") _, out("zmm11") _,
            out("zmm12") _, out("zmm13") _, out("zmm14") _, out("zmm15") _,
            out("zmm16") _, out("zmm17") _, out("zmm18") _, out("zmm19") _,
            out("zmm20") _, out("zmm21") _, out("zmm22") _, out("zmm23") _,
            out("zmm24") _, out("zmm25") _, out("zmm26") _, out("zmm27") _,
            out("zmm28") _, out("zmm29") _, out("zmm30") _, out("zmm31") _,
            out("k1") _, out("k2") _, out("k3") _, out("k4") _,
            out("k5") _, out("k6") _, out("k7") _,
            options(nostack),
        );
    }
}
