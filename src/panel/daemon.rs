//! The panel's loop: [`Panel`] decides what the LEDs show and what a press
//! does, over any pins; [`run`] wires in the real lines, reads the status
//! file and runs the shutdown sequence in a thread so the LEDs keep blinking.

use super::button::{Button, ButtonEvent};
use super::config::PanelConfig;
use super::health::{self, Condition, Inputs};
use super::leds::{self, Overlay, Pattern};
use super::shutdown::{self, RealSteps};
use super::{Clock, MonotonicClock};
use anyhow::{anyhow, Result};
use embedded_hal::digital::{InputPin, OutputPin};
use std::sync::mpsc;
use std::time::Duration;

/// The loop samples the button and updates the LEDs this often.
pub const TICK_MS: u64 = 10;
/// ...and rereads the status file this often.
pub const STATUS_READ_MS: u64 = 200;

/// What the caller must do after a tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// A short press: log the status (the LEDs flash its code).
    ShowStatus,
    /// A long press: run the shutdown sequence, then call
    /// [`Panel::shutdown_finished`].
    StartShutdown,
}

pub struct Panel<S, A, B> {
    status_led: S,
    alert_led: Option<A>,
    button_pin: B,
    button: Button,
    overlay: Option<(Overlay, u64)>,
    shown: (Option<bool>, Option<bool>),
}

impl<S: OutputPin, A: OutputPin, B: InputPin> Panel<S, A, B> {
    pub fn new(status_led: S, alert_led: Option<A>, button_pin: B, button: Button) -> Self {
        Panel { status_led, alert_led, button_pin, button, overlay: None, shown: (None, None) }
    }

    pub fn overlay(&self) -> Option<Overlay> {
        self.overlay.map(|o| o.0)
    }

    /// One step: sample the button, act on a press, drive the LEDs.
    pub fn tick(&mut self, now_ms: u64, condition: &Condition) -> Result<Option<Action>> {
        let pressed = self.button_pin.is_high().map_err(|e| anyhow!("cannot read the button: {e:?}"))?;
        let action = match self.button.sample(pressed, now_ms) {
            None => None,
            Some(ButtonEvent::Short) => match self.overlay() {
                Some(Overlay::ShuttingDown | Overlay::PoweringOff) => None,
                // A press acknowledges a failed shutdown.
                Some(Overlay::ShutdownFailed) => {
                    self.overlay = None;
                    Some(Action::ShowStatus)
                }
                _ => {
                    self.overlay = Some((Overlay::ShowCode(condition.code()), now_ms));
                    Some(Action::ShowStatus)
                }
            },
            Some(ButtonEvent::Long) => match self.overlay() {
                Some(Overlay::ShuttingDown | Overlay::PoweringOff) => None,
                _ => {
                    self.overlay = Some((Overlay::ShuttingDown, now_ms));
                    Some(Action::StartShutdown)
                }
            },
        };
        if let Some((Overlay::ShowCode(n), since)) = self.overlay {
            let lasts = Pattern::Code { flashes: n }.duration_ms().unwrap_or(0);
            if now_ms.saturating_sub(since) >= lasts {
                self.overlay = None;
            }
        }
        self.show(now_ms, condition)?;
        Ok(action)
    }

    pub fn shutdown_finished(&mut self, ok: bool, now_ms: u64) {
        self.overlay = Some((if ok { Overlay::PoweringOff } else { Overlay::ShutdownFailed }, now_ms));
    }

    fn show(&mut self, now_ms: u64, condition: &Condition) -> Result<()> {
        let (status, alert) = leds::patterns(condition, self.overlay());
        // Blinks run on the shared clock; a one-shot code from its start.
        let t = match self.overlay {
            Some((Overlay::ShowCode(_), since)) => now_ms - since,
            _ => now_ms,
        };
        let (status_level, alert_level) = match self.alert_led {
            Some(_) => (status.level(t), Some(alert.level(t))),
            None => (leds::merge_for_one_led(status, alert).level(t), None),
        };
        if self.shown.0 != Some(status_level) {
            set(&mut self.status_led, status_level).map_err(|e| anyhow!("cannot drive the status LED: {e:?}"))?;
            self.shown.0 = Some(status_level);
        }
        if let (Some(pin), Some(level)) = (self.alert_led.as_mut(), alert_level) {
            if self.shown.1 != Some(level) {
                set(pin, level).map_err(|e| anyhow!("cannot drive the alert LED: {e:?}"))?;
                self.shown.1 = Some(level);
            }
        }
        Ok(())
    }
}

fn set<P: OutputPin>(pin: &mut P, high: bool) -> Result<(), P::Error> {
    if high {
        pin.set_high()
    } else {
        pin.set_low()
    }
}

fn log(msg: &str) {
    eprintln!("cln-replica panel: {msg}");
}

/// Runs the panel on the configured lines until an error (systemd restarts it).
pub fn run(config: &PanelConfig) -> Result<()> {
    let status_led = super::gpio::output(&config.status_led)?;
    let alert_led = config.alert_led.as_ref().map(super::gpio::output).transpose()?;
    let button_pin = super::gpio::input(&config.button)?;
    let mut panel =
        Panel::new(status_led, alert_led, button_pin, Button::new(config.debounce_ms, config.long_press_ms));
    let clock = MonotonicClock::default();
    log(&format!(
        "watching {} (stale after {} ms); hold the button {} ms to shut down",
        config.status_file.display(),
        config.status_stale_ms,
        config.long_press_ms
    ));
    let (done_tx, done_rx) = mpsc::channel::<bool>();
    let mut condition = Condition::Unknown("not read yet".into());
    let mut next_read_ms = 0;
    loop {
        let now = clock.now_ms();
        if now >= next_read_ms {
            let c = health::assess(&Inputs {
                status: health::read_status(&config.status_file),
                now_unix_ms: crate::clock::now_unix_ms(),
                status_stale_ms: config.status_stale_ms,
                backup_mounted: config.backup_mount.as_deref().map(health::is_mount_point),
                pid_alive: &health::pid_alive,
            });
            // Writing comes and goes with every write: not worth a log line.
            let quiet = matches!(
                (&condition, &c),
                (Condition::InSync, Condition::Writing) | (Condition::Writing, Condition::InSync)
            );
            if c != condition && !quiet {
                log(&c.describe());
            }
            condition = c;
            next_read_ms = now + STATUS_READ_MS;
        }
        if let Ok(ok) = done_rx.try_recv() {
            panel.shutdown_finished(ok, now);
        }
        match panel.tick(now, &condition)? {
            None => {}
            Some(Action::ShowStatus) => log(&format!("button: {} (code {})", condition.describe(), condition.code())),
            Some(Action::StartShutdown) => {
                log("button held: safe shutdown");
                let mut steps = RealSteps::from_config(config);
                let tx = done_tx.clone();
                std::thread::Builder::new()
                    .name("shutdown".into())
                    .spawn(move || {
                        let ok = shutdown::run_sequence(&mut steps, &mut |l| log(l)).is_ok();
                        let _ = tx.send(ok);
                    })
                    .map_err(|e| anyhow!("cannot start the shutdown thread: {e}"))?;
            }
        }
        std::thread::sleep(Duration::from_millis(TICK_MS));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::convert::Infallible;
    use embedded_hal::digital::ErrorType;
    use std::cell::{Cell, RefCell};
    use std::rc::Rc;

    // Fake pins: a legitimate mock here, since this is the logic layer; the
    // real character device is tested against gpio-sim (50-panel).
    #[derive(Clone, Default)]
    struct FakeLed(Rc<RefCell<Vec<(bool, usize)>>>, Rc<Cell<usize>>);
    impl ErrorType for FakeLed {
        type Error = Infallible;
    }
    impl OutputPin for FakeLed {
        fn set_low(&mut self) -> Result<(), Infallible> {
            self.0.borrow_mut().push((false, self.1.get()));
            Ok(())
        }
        fn set_high(&mut self) -> Result<(), Infallible> {
            self.0.borrow_mut().push((true, self.1.get()));
            Ok(())
        }
    }
    impl FakeLed {
        fn level(&self) -> bool {
            self.0.borrow().last().map(|l| l.0).unwrap_or(false)
        }
    }
    #[derive(Clone, Default)]
    struct FakeButton(Rc<Cell<bool>>);
    impl ErrorType for FakeButton {
        type Error = Infallible;
    }
    impl InputPin for FakeButton {
        fn is_high(&mut self) -> Result<bool, Infallible> {
            Ok(self.0.get())
        }
        fn is_low(&mut self) -> Result<bool, Infallible> {
            Ok(!self.0.get())
        }
    }

    struct FakeClock(Cell<u64>);
    impl Clock for FakeClock {
        fn now_ms(&self) -> u64 {
            self.0.get()
        }
    }

    struct Rig {
        panel: Panel<FakeLed, FakeLed, FakeButton>,
        status: FakeLed,
        alert: FakeLed,
        button: FakeButton,
        clock: FakeClock,
    }

    impl Rig {
        fn new(with_alert: bool) -> Rig {
            let (status, alert, button) = (FakeLed::default(), FakeLed::default(), FakeButton::default());
            let panel =
                Panel::new(status.clone(), with_alert.then(|| alert.clone()), button.clone(), Button::new(30, 3_000));
            Rig { panel, status, alert, button, clock: FakeClock(Cell::new(0)) }
        }
        /// Runs `ms` of ticks; returns the actions and the status LED's lit ms.
        fn run(&mut self, ms: u64, c: &Condition) -> (Vec<Action>, u64, u64) {
            let mut actions = vec![];
            let (mut status_lit, mut alert_lit) = (0, 0);
            let end = self.clock.now_ms() + ms;
            while self.clock.now_ms() < end {
                if let Some(a) = self.panel.tick(self.clock.now_ms(), c).unwrap() {
                    actions.push(a);
                }
                status_lit += self.status.level() as u64 * TICK_MS;
                alert_lit += self.alert.level() as u64 * TICK_MS;
                self.clock.0.set(self.clock.now_ms() + TICK_MS);
            }
            (actions, status_lit, alert_lit)
        }
    }

    #[test]
    fn leds_follow_the_condition() {
        let mut r = Rig::new(true);
        assert_eq!(r.run(4_000, &Condition::InSync), (vec![], 4_000, 0));
        assert_eq!(r.run(4_000, &Condition::RemoteLagging), (vec![], 2_000, 0));
        assert_eq!(r.run(4_000, &Condition::Alert("x".into())), (vec![], 0, 2_000));
        assert_eq!(r.run(4_000, &Condition::Unknown("x".into())), (vec![], 0, 1_000));
        assert_eq!(r.run(4_000, &Condition::LightningdDown("x".into())), (vec![], 200, 0));
        // Pins are written on change only.
        let writes = r.status.0.borrow().len();
        r.run(4_000, &Condition::InSync);
        assert_eq!(r.status.0.borrow().len(), writes + 1);
        // One LED: the alert shows on the status LED.
        let mut one = Rig::new(false);
        assert_eq!(one.run(4_000, &Condition::Alert("x".into())), (vec![], 2_000, 0));
    }

    #[test]
    fn short_press_flashes_the_code() {
        let mut r = Rig::new(true);
        r.run(1_000, &Condition::InSync);
        r.button.0.set(true);
        r.run(200, &Condition::RemoteLagging);
        r.button.0.set(false);
        let (actions, _, _) = r.run(50, &Condition::RemoteLagging);
        assert_eq!(actions, [Action::ShowStatus]);
        assert_eq!(r.panel.overlay(), Some(Overlay::ShowCode(2)));
        // Two flashes of 200 ms (the first 20 ms of the first fell in the
        // previous run: the code starts at the debounced release), then the
        // condition again.
        let (_, lit, _) = r.run(2_000, &Condition::RemoteLagging);
        assert_eq!(lit, 380);
        assert_eq!(r.panel.overlay(), None);
    }

    #[test]
    fn long_press_shuts_down_once_and_failure_shows_until_acknowledged() {
        let mut r = Rig::new(true);
        r.run(1_000, &Condition::InSync);
        r.button.0.set(true);
        let (actions, _, _) = r.run(5_000, &Condition::InSync);
        assert_eq!(actions, [Action::StartShutdown]);
        r.button.0.set(false);
        r.run(100, &Condition::InSync);
        // Another long press while it runs does nothing.
        r.button.0.set(true);
        assert_eq!(r.run(4_000, &Condition::InSync).0, []);
        r.button.0.set(false);
        let (_, lit, _) = r.run(2_000, &Condition::InSync);
        assert_eq!(lit, 1_000, "shutting down blinks evenly");
        r.panel.shutdown_finished(false, r.clock.now_ms());
        assert_eq!(r.run(10_000, &Condition::InSync), (vec![], 0, 10_000));
        r.button.0.set(true);
        r.run(100, &Condition::InSync);
        r.button.0.set(false);
        assert_eq!(r.run(100, &Condition::InSync).0, [Action::ShowStatus]);
        assert_eq!(r.panel.overlay(), None);
        // After success: dark.
        r.button.0.set(true);
        r.run(3_100, &Condition::InSync);
        r.panel.shutdown_finished(true, r.clock.now_ms());
        r.button.0.set(false);
        assert_eq!(r.run(2_000, &Condition::InSync), (vec![], 0, 0));
    }
}
