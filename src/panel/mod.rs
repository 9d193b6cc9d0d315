//! The appliance's front panel: status LEDs and a safe-shutdown button.
//!
//! `cln-replica panel` (run by systemd, see `systemd/` and docs/PANEL.md)
//! reads the plugin's status file, shows what it says on one or two LEDs,
//! and turns a long press of a button into a safe shutdown: stop lightningd,
//! wait for the journal to be sealed, sync, unmount the backup device, power
//! off.
//!
//! The logic (status to condition, condition to blink pattern, button
//! debouncing, the shutdown sequence) is written against the
//! `embedded_hal::digital` traits, the [`Clock`] trait and the [`shutdown::Steps`]
//! trait, so unit tests drive it with fake pins, a fake clock and fake
//! steps. Only [`daemon`] and [`gpio`] touch real lines, through the kernel's
//! GPIO character device; scripts/test.d/50-panel tests them against
//! gpio-sim in a qemu-booted kernel.
//!
//! Not for: anything on the plugin's hook path. The panel is a separate
//! process that only reads the status file, so either side can restart
//! without the other.

pub mod button;
pub mod config;
pub mod daemon;
pub mod gpio;
pub mod health;
pub mod leds;
pub mod shutdown;

/// A monotonic clock in milliseconds. The logic never reads time itself, so
/// tests step it by hand.
pub trait Clock {
    fn now_ms(&self) -> u64;
}

/// The process's monotonic clock, counted from its creation.
pub struct MonotonicClock(std::time::Instant);

impl Default for MonotonicClock {
    fn default() -> Self {
        MonotonicClock(std::time::Instant::now())
    }
}

impl Clock for MonotonicClock {
    fn now_ms(&self) -> u64 {
        self.0.elapsed().as_millis() as u64
    }
}
