//! The button: debouncing, and short versus long presses.
//!
//! Fed one raw sample at a time with the time it was taken; knows nothing of
//! pins. A level counts once it has held for `debounce_ms`. A long press
//! fires as soon as the hold reaches `long_press_ms` (the user sees the
//! shutdown start without letting go); its release is then ignored. A press
//! only counts once the button has been seen released: a stuck or shorted
//! button at boot must not power the machine off over and over.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ButtonEvent {
    Short,
    Long,
}

#[derive(Debug)]
pub struct Button {
    debounce_ms: u64,
    long_press_ms: u64,
    /// The debounced level (true: pressed).
    stable: bool,
    /// The last raw level and since when it has held.
    raw: bool,
    raw_since_ms: u64,
    /// Set once a released level has held for the debounce time.
    armed: bool,
    pressed_at_ms: Option<u64>,
    long_fired: bool,
}

impl Button {
    pub fn new(debounce_ms: u64, long_press_ms: u64) -> Button {
        assert!(long_press_ms > debounce_ms, "a long press must outlast the debounce");
        Button {
            debounce_ms,
            long_press_ms,
            stable: false,
            raw: false,
            raw_since_ms: 0,
            armed: false,
            pressed_at_ms: None,
            long_fired: false,
        }
    }

    /// Whether the debounced button is down (for the panel's feedback).
    pub fn is_down(&self) -> bool {
        self.stable && self.armed
    }

    /// One sample: `pressed` is the raw logical level at `now_ms`.
    pub fn sample(&mut self, pressed: bool, now_ms: u64) -> Option<ButtonEvent> {
        if pressed != self.raw {
            self.raw = pressed;
            self.raw_since_ms = now_ms;
        }
        if now_ms.saturating_sub(self.raw_since_ms) >= self.debounce_ms && self.raw != self.stable {
            self.stable = self.raw;
            if !self.stable {
                let was = self.pressed_at_ms.take();
                let long = std::mem::replace(&mut self.long_fired, false);
                if !self.armed {
                    self.armed = true;
                    return None;
                }
                if was.is_some() && !long {
                    return Some(ButtonEvent::Short);
                }
                return None;
            }
            if self.armed {
                // The press began when the level first changed, not when
                // the debounce confirmed it.
                self.pressed_at_ms = Some(self.raw_since_ms);
            }
        }
        if !self.armed && !self.stable && now_ms.saturating_sub(self.raw_since_ms) >= self.debounce_ms {
            self.armed = true;
        }
        if let Some(at) = self.pressed_at_ms {
            if !self.long_fired && now_ms.saturating_sub(at) >= self.long_press_ms {
                self.long_fired = true;
                return Some(ButtonEvent::Long);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds (level, duration_ms) segments sampled every 10 ms; returns the
    /// events with their times.
    fn run(b: &mut Button, t: &mut u64, segments: &[(bool, u64)]) -> Vec<(u64, ButtonEvent)> {
        let mut events = Vec::new();
        for &(level, ms) in segments {
            let end = *t + ms;
            while *t < end {
                if let Some(e) = b.sample(level, *t) {
                    events.push((*t, e));
                }
                *t += 10;
            }
        }
        events
    }

    fn armed() -> (Button, u64) {
        let mut b = Button::new(30, 3_000);
        let mut t = 0;
        assert!(run(&mut b, &mut t, &[(false, 100)]).is_empty());
        (b, t)
    }

    #[test]
    fn short_press_fires_on_release() {
        let (mut b, mut t) = armed();
        let e = run(&mut b, &mut t, &[(true, 300), (false, 100)]);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].1, ButtonEvent::Short);
        assert!(e[0].0 >= 400 && e[0].0 <= 440, "{e:?}");
    }

    #[test]
    fn long_press_fires_while_held_and_only_once() {
        let (mut b, mut t) = armed();
        let e = run(&mut b, &mut t, &[(true, 10_000), (false, 200)]);
        assert_eq!(e, vec![(3_100, ButtonEvent::Long)]);
        // Nothing carries over into the next press.
        let e = run(&mut b, &mut t, &[(true, 200), (false, 200)]);
        assert_eq!(e.iter().map(|e| e.1).collect::<Vec<_>>(), [ButtonEvent::Short]);
    }

    #[test]
    fn bounces_are_ignored() {
        let (mut b, mut t) = armed();
        // Contact bounce: 20 ms blips never make a press.
        let mut bouncy = Vec::new();
        for _ in 0..20 {
            bouncy.push((true, 20));
            bouncy.push((false, 20));
        }
        assert!(run(&mut b, &mut t, &bouncy).is_empty());
        // Bounce during a long hold does not restart or end it.
        let mut hold = vec![(true, 1_000)];
        for _ in 0..5 {
            hold.push((false, 10));
            hold.push((true, 500));
        }
        hold.push((true, 1_000));
        let e = run(&mut b, &mut t, &hold);
        assert_eq!(e.iter().map(|e| e.1).collect::<Vec<_>>(), [ButtonEvent::Long]);
    }

    #[test]
    fn a_button_held_at_start_is_ignored_until_released() {
        let mut b = Button::new(30, 3_000);
        let mut t = 0;
        assert!(run(&mut b, &mut t, &[(true, 20_000)]).is_empty());
        assert!(!b.is_down());
        assert!(run(&mut b, &mut t, &[(false, 100)]).is_empty());
        let e = run(&mut b, &mut t, &[(true, 3_500)]);
        assert_eq!(e.iter().map(|e| e.1).collect::<Vec<_>>(), [ButtonEvent::Long]);
    }
}
