//! The 16550 UART at COM1: the guest console. Output goes to a sink (a file,
//! stdout, or nowhere) through [`ConsoleSink`], which also keeps the last
//! lines for error reports, notices a kernel panic, and caps how much a guest
//! may write so it cannot fill the host's disk.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use vm_superio::serial::NoEvents;
use vm_superio::Serial;

use super::IrqTrigger;
use crate::devices::bus::BusDevice;
use crate::logger::guest_debug;

/// How many console lines are kept for error reports.
const TAIL_LINES: usize = 20;
/// A guest may write at most this much to the console sink.
pub const CONSOLE_LIMIT_BYTES: u64 = 16 << 20;
const PANIC_MARKER: &str = "Kernel panic - not syncing";

/// The last console lines and what they said; shared with the VMM.
#[derive(Debug, Default)]
pub struct ConsoleTail {
    lines: VecDeque<String>,
    partial: Vec<u8>,
    panicked: bool,
}

impl ConsoleTail {
    fn push(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if b == b'\n' {
                let line = String::from_utf8_lossy(&self.partial)
                    .trim_end()
                    .to_string();
                self.partial.clear();
                if line.contains(PANIC_MARKER) {
                    self.panicked = true;
                }
                if self.lines.len() == TAIL_LINES {
                    self.lines.pop_front();
                }
                self.lines.push_back(line);
            } else if self.partial.len() < 512 {
                self.partial.push(b);
            }
        }
    }

    /// The last lines, oldest first.
    pub fn lines(&self) -> Vec<String> {
        let mut v: Vec<String> = self.lines.iter().cloned().collect();
        if !self.partial.is_empty() {
            v.push(String::from_utf8_lossy(&self.partial).to_string());
        }
        v
    }

    /// Whether the guest kernel printed a panic.
    pub fn panicked(&self) -> bool {
        self.panicked
    }
}

/// Where the console goes.
pub struct ConsoleSink {
    out: Option<Box<dyn Write + Send>>,
    written: u64,
    tail: Arc<Mutex<ConsoleTail>>,
}

impl ConsoleSink {
    pub fn new(out: Option<Box<dyn Write + Send>>, tail: Arc<Mutex<ConsoleTail>>) -> Self {
        Self {
            out,
            written: 0,
            tail,
        }
    }
}

impl Write for ConsoleSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tail.lock().expect("console tail poisoned").push(buf);
        if let Some(out) = self.out.as_mut() {
            if self.written + buf.len() as u64 > CONSOLE_LIMIT_BYTES {
                let _ = writeln!(out, "\n[hull-vmm: console limit of {CONSOLE_LIMIT_BYTES} bytes reached; output dropped]");
                self.out = None;
            } else {
                self.written += buf.len() as u64;
                // A console sink that fails (full disk, closed pipe) must not stop the guest.
                if out.write_all(buf).and_then(|_| out.flush()).is_err() {
                    self.out = None;
                }
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

pub struct SerialConsole {
    inner: Serial<IrqTrigger, NoEvents, ConsoleSink>,
}

/// The UART's registers and unread input, for a snapshot (vm-superio's
/// `SerialState`, which has no serde of its own).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SerialSnapshot {
    pub baud_divisor_low: u8,
    pub baud_divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    pub in_buffer: Vec<u8>,
}

impl SerialConsole {
    pub const PORT_LEN: u64 = 8;

    pub fn new(irq: IrqTrigger, sink: ConsoleSink) -> Self {
        Self {
            inner: Serial::new(irq, sink),
        }
    }

    pub fn save_state(&self) -> SerialSnapshot {
        let s = self.inner.state();
        SerialSnapshot {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }

    /// Takes on the registers of a saved UART; the output stays this one's.
    pub fn restore_state(&mut self, saved: &SerialSnapshot) -> Result<(), String> {
        // The only state vm-superio refuses; checked first, so the output
        // is never lost to a refused state.
        if saved.in_buffer.len() > self.inner.fifo_capacity() + self.inner.state().in_buffer.len() {
            return Err(format!(
                "serial input of {} bytes overflows the FIFO",
                saved.in_buffer.len()
            ));
        }
        let state = vm_superio::serial::SerialState {
            baud_divisor_low: saved.baud_divisor_low,
            baud_divisor_high: saved.baud_divisor_high,
            interrupt_enable: saved.interrupt_enable,
            interrupt_identification: saved.interrupt_identification,
            line_control: saved.line_control,
            line_status: saved.line_status,
            modem_control: saved.modem_control,
            modem_status: saved.modem_status,
            scratch: saved.scratch,
            in_buffer: saved.in_buffer.clone(),
        };
        let irq = self.inner.interrupt_evt().clone();
        let detached = ConsoleSink::new(None, Arc::new(Mutex::new(ConsoleTail::default())));
        let old = std::mem::replace(&mut self.inner, Serial::new(irq.clone(), detached));
        let sink = old.into_writer();
        match Serial::from_state(&state, irq.clone(), NoEvents, sink) {
            Ok(serial) => {
                self.inner = serial;
                Ok(())
            }
            Err(e) => Err(format!("serial state: {e:?}")),
        }
    }
}

impl BusDevice for SerialConsole {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let Some(b) = data.first_mut() {
            *b = self.inner.read(offset as u8);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some(&b) = data.first() {
            if let Err(e) = self.inner.write(offset as u8, b) {
                guest_debug!("serial: {e:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_last_lines_and_spots_panics() {
        let mut t = ConsoleTail::default();
        for i in 0..30 {
            t.push(format!("line {i}\n").as_bytes());
        }
        t.push(b"partial");
        let lines = t.lines();
        assert_eq!(lines.len(), TAIL_LINES + 1);
        assert_eq!(lines[0], "line 10");
        assert_eq!(lines.last().unwrap(), "partial");
        assert!(!t.panicked());
        t.push(b"\n[ 1.0] Kernel panic - not syncing: Attempted to kill init!\n");
        assert!(t.panicked());
    }

    #[test]
    fn sink_caps_output() {
        let tail = Arc::new(Mutex::new(ConsoleTail::default()));
        let buf = Arc::new(Mutex::new(Vec::new()));
        struct Shared(Arc<Mutex<Vec<u8>>>);
        impl Write for Shared {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut sink = ConsoleSink::new(Some(Box::new(Shared(buf.clone()))), tail);
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..20 {
            sink.write_all(&chunk).unwrap();
        }
        let len = buf.lock().unwrap().len() as u64;
        assert!(len <= CONSOLE_LIMIT_BYTES + 200, "{len}");
        assert!(len >= CONSOLE_LIMIT_BYTES - (1 << 20));
    }
}
