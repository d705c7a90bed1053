//! The i8042 keyboard controller, reduced to what a guest uses it for: the
//! CPU reset command (0xFE), which Linux sends for `reboot=k`. hull treats
//! it as the guest shutting down.

use vm_superio::I8042Device;
use vmm_sys_util::eventfd::EventFd;

use super::IrqTrigger;
use crate::devices::bus::BusDevice;
use crate::logger::guest_error;
use crate::vstate::interrupt::EventFdIrq;

/// Signals `reset_evt` when the guest asks for a CPU reset.
pub struct I8042 {
    inner: I8042Device<IrqTrigger>,
}

impl I8042 {
    /// Port range: 0x60 (data) to 0x64 (command).
    pub const PORT_LEN: u64 = 5;

    pub fn new(reset_evt: EventFd) -> Self {
        Self {
            inner: I8042Device::new(IrqTrigger(std::sync::Arc::new(EventFdIrq(reset_evt)))),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let Some(b) = data.first_mut() {
            *b = self.inner.read(offset as u8);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some(&b) = data.first() {
            if let Err(e) = self.inner.write(offset as u8, b) {
                guest_error!("i8042: signalling the reset event failed: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    #[test]
    fn reset_command_signals_only_on_the_command_port() {
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut dev = I8042::new(evt.try_clone().unwrap());
        dev.write(0, &[0xfe]);
        assert!(evt.read().is_err(), "data port must not reset");
        dev.write(4, &[0xfe]);
        assert_eq!(evt.read().unwrap(), 1);
    }
}
