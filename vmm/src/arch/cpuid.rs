//! The CPU template: KVM's supported CPUID, adjusted per vCPU so the guest sees
//! a consistent topology and knows it runs under a hypervisor.
//!
//! Note: on nested PVM hosts most leaves cannot be changed (KVM overrides
//! them); features are hidden there on the kernel command line instead
//! (see `vstate::pvm`).

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_TOPOLOGY: u32 = 0x4;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;

/// Adjust `cpuid` (from KVM_GET_SUPPORTED_CPUID) for vCPU `id` of `count`.
pub fn apply_template(cpuid: &mut CpuId, id: u8, count: u8) {
    for entry in cpuid.as_mut_slice() {
        apply_to_entry(entry, id, count);
    }
}

fn apply_to_entry(entry: &mut kvm_cpuid_entry2, id: u8, count: u8) {
    match entry.function {
        LEAF_FEATURES => {
            // EBX: initial APIC id (31:24), logical processor count (23:16), CLFLUSH size (15:8).
            entry.ebx = (u32::from(id) << 24) | (u32::from(count) << 16) | (8 << 8);
            entry.ecx |= ECX_HYPERVISOR;
            if count > 1 {
                entry.edx |= EDX_HTT;
            } else {
                entry.edx &= !EDX_HTT;
            }
        }
        LEAF_CACHE_TOPOLOGY => {
            // EAX 31:26: cores per package - 1; one core per vCPU, one package.
            entry.eax = (entry.eax & 0x03ff_ffff) | ((u32::from(count) - 1) << 26);
        }
        LEAF_EXT_TOPOLOGY => {
            // One thread per core; EDX is the x2APIC id.
            entry.edx = u32::from(id);
            match entry.index {
                0 => {
                    entry.eax = 0;
                    entry.ebx = 1;
                    entry.ecx = 0x100; // level 0, type SMT
                }
                1 => {
                    entry.eax = u32::from(count).next_power_of_two().trailing_zeros();
                    entry.ebx = u32::from(count);
                    entry.ecx = 0x201; // level 1, type core
                }
                n => {
                    entry.eax = 0;
                    entry.ebx = 0;
                    entry.ecx = n;
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        }
    }

    #[test]
    fn leaf1_carries_apic_id_count_and_hypervisor_bit() {
        let mut e = entry(LEAF_FEATURES, 0);
        apply_to_entry(&mut e, 3, 4);
        assert_eq!(e.ebx >> 24, 3);
        assert_eq!((e.ebx >> 16) & 0xff, 4);
        assert_ne!(e.ecx & ECX_HYPERVISOR, 0);
        assert_ne!(e.edx & EDX_HTT, 0);
    }

    #[test]
    fn leaf_b_reports_x2apic_id_and_core_count() {
        let mut e = entry(LEAF_EXT_TOPOLOGY, 1);
        apply_to_entry(&mut e, 2, 3);
        assert_eq!((e.eax, e.ebx, e.edx), (2, 3, 2));
        let mut cpuid =
            CpuId::from_entries(&[entry(LEAF_FEATURES, 0), entry(LEAF_EXT_TOPOLOGY, 0)]).unwrap();
        apply_template(&mut cpuid, 1, 2);
        assert_eq!(cpuid.as_slice()[1].edx, 1);
    }
}
