//! Legacy devices: the 16550 serial console and the i8042 reset line.

pub mod i8042;
pub mod serial;

use std::io;
use std::sync::Arc;

use vm_superio::Trigger;

use crate::vstate::interrupt::IrqLine;

/// Lets vm-superio devices raise an [`IrqLine`].
#[derive(Clone)]
pub struct IrqTrigger(pub Arc<dyn IrqLine>);

impl Trigger for IrqTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.trigger()
    }
}
