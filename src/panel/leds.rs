//! Blink patterns, and which pattern each LED shows for a condition.
//!
//! Pure functions of time: a pattern's level at a millisecond, so the LEDs
//! need no timers of their own and tests can sample any moment.

use super::health::Condition;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    Off,
    On,
    /// Repeats: lit `on_ms`, dark `off_ms`.
    Blink {
        on_ms: u32,
        off_ms: u32,
    },
    /// Once, from the moment it starts: `flashes` flashes of 200 ms lit,
    /// 300 ms dark (a short press's answer).
    Code {
        flashes: u8,
    },
}

pub const STEADY: Pattern = Pattern::On;
/// Writing: lit with a brief dark flicker.
pub const FLICKER: Pattern = Pattern::Blink { on_ms: 200, off_ms: 50 };
pub const SLOW_BLINK: Pattern = Pattern::Blink { on_ms: 1_000, off_ms: 1_000 };
pub const FAST_BLINK: Pattern = Pattern::Blink { on_ms: 100, off_ms: 100 };
/// A short blip every two seconds: alive, but lightningd is not running.
pub const BLIP: Pattern = Pattern::Blink { on_ms: 100, off_ms: 1_900 };
/// Unknown: uneven, so that it reads differently from the slow blink on a
/// one-LED panel.
pub const UNKNOWN_BLINK: Pattern = Pattern::Blink { on_ms: 250, off_ms: 750 };
/// Device nearly full, on the alert LED: long on, short off (the inverse
/// of the unknown blink), beside a steady status LED.
pub const NEARLY_FULL_BLINK: Pattern = Pattern::Blink { on_ms: 750, off_ms: 250 };
/// Shutting down: an even half-second blink.
pub const SHUTTING_DOWN: Pattern = Pattern::Blink { on_ms: 250, off_ms: 250 };

const CODE_ON_MS: u64 = 200;
const CODE_PERIOD_MS: u64 = 500;

impl Pattern {
    /// The LED's level `t_ms` after the pattern started.
    pub fn level(&self, t_ms: u64) -> bool {
        match *self {
            Pattern::Off => false,
            Pattern::On => true,
            Pattern::Blink { on_ms, off_ms } => t_ms % (on_ms as u64 + off_ms as u64).max(1) < on_ms as u64,
            Pattern::Code { flashes } => t_ms < flashes as u64 * CODE_PERIOD_MS && t_ms % CODE_PERIOD_MS < CODE_ON_MS,
        }
    }

    /// How long a one-shot pattern lasts (with a second of dark after it).
    pub fn duration_ms(&self) -> Option<u64> {
        match *self {
            Pattern::Code { flashes } => Some(flashes as u64 * CODE_PERIOD_MS + 1_000),
            _ => None,
        }
    }
}

/// What the panel shows instead of the condition, for a while.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overlay {
    /// A short press: the condition's code, once.
    ShowCode(u8),
    /// The shutdown sequence runs.
    ShuttingDown,
    /// A step failed: alert lit steady until the next press.
    ShutdownFailed,
    /// Power-off was asked for: dark.
    PoweringOff,
}

/// (status LED, alert LED) for a condition, or for an overlay.
pub fn patterns(condition: &Condition, overlay: Option<Overlay>) -> (Pattern, Pattern) {
    use Pattern::Off;
    match overlay {
        Some(Overlay::ShowCode(n)) => return (Pattern::Code { flashes: n }, Off),
        Some(Overlay::ShuttingDown) => return (SHUTTING_DOWN, Off),
        Some(Overlay::ShutdownFailed) => return (Off, STEADY),
        Some(Overlay::PoweringOff) => return (Off, Off),
        None => {}
    }
    match condition {
        Condition::InSync => (STEADY, Off),
        Condition::Writing => (FLICKER, Off),
        Condition::RemoteLagging => (SLOW_BLINK, Off),
        Condition::DeviceNearlyFull => (STEADY, NEARLY_FULL_BLINK),
        Condition::Alert(_) => (Off, FAST_BLINK),
        Condition::LightningdDown(_) => (BLIP, Off),
        Condition::Unknown(_) => (Off, UNKNOWN_BLINK),
    }
}

/// With no alert LED, the status LED shows the alert's pattern instead.
pub fn merge_for_one_led(status: Pattern, alert: Pattern) -> Pattern {
    if alert == Pattern::Off {
        status
    } else {
        alert
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lit_ms(p: Pattern, from: u64, to: u64) -> u64 {
        (from..to).filter(|&t| p.level(t)).count() as u64
    }

    #[test]
    fn duty_cycles() {
        assert_eq!(lit_ms(STEADY, 0, 2_000), 2_000);
        assert_eq!(lit_ms(Pattern::Off, 0, 2_000), 0);
        assert_eq!(lit_ms(FLICKER, 0, 1_000), 800);
        assert_eq!(lit_ms(SLOW_BLINK, 0, 4_000), 2_000);
        assert_eq!(lit_ms(FAST_BLINK, 0, 1_000), 500);
        assert_eq!(lit_ms(BLIP, 0, 4_000), 200);
        assert!(SLOW_BLINK.level(999) && !SLOW_BLINK.level(1_000) && SLOW_BLINK.level(2_000));
    }

    #[test]
    fn code_flashes_once() {
        let p = Pattern::Code { flashes: 3 };
        let rising = (1..5_000).filter(|&t| p.level(t) && !p.level(t - 1)).count() + p.level(0) as usize;
        assert_eq!(rising, 3);
        assert_eq!(p.duration_ms(), Some(2_500));
        assert!(!p.level(1_600));
    }

    #[test]
    fn every_condition_reads_differently() {
        let conds = [
            Condition::InSync,
            Condition::Writing,
            Condition::RemoteLagging,
            Condition::DeviceNearlyFull,
            Condition::Alert("x".into()),
            Condition::LightningdDown("x".into()),
            Condition::Unknown("x".into()),
        ];
        let mut two = Vec::new();
        let mut one = Vec::new();
        for c in &conds {
            let (s, a) = patterns(c, None);
            two.push((s, a));
            one.push(merge_for_one_led(s, a));
        }
        for i in 0..conds.len() {
            for j in 0..i {
                assert_ne!(two[i], two[j], "{:?} vs {:?}", conds[i], conds[j]);
                assert_ne!(one[i], one[j], "{:?} vs {:?} on one LED", conds[i], conds[j]);
            }
        }
        // Only an alert, a nearly full device or unknown ever lights the alert LED.
        assert_eq!(patterns(&Condition::InSync, None).1, Pattern::Off);
        assert_eq!(patterns(&Condition::Alert("x".into()), None), (Pattern::Off, FAST_BLINK));
        assert_eq!(patterns(&Condition::DeviceNearlyFull, None), (STEADY, NEARLY_FULL_BLINK));
    }
}
