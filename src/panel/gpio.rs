//! Real GPIO lines through the kernel's character device (`/dev/gpiochipN`,
//! uAPI v2, via the `gpiocdev` crate), behind the `embedded_hal::digital`
//! traits the panel's logic is written against.
//!
//! Active-low and bias are set in the line request, so the kernel does the
//! inversion: "high" here always means logically active (LED lit, button
//! pressed). Tested against gpio-sim by scripts/test.d/50-panel.

use super::config::{Bias, LineConfig};
use anyhow::{Context, Result};
use embedded_hal::digital::{ErrorKind, ErrorType, InputPin, OutputPin};
use gpiocdev::line::Value;
use gpiocdev::Request;
use std::path::Path;

const CONSUMER: &str = "cln-replica-panel";

#[derive(Debug)]
pub struct GpioError(pub gpiocdev::Error);

impl embedded_hal::digital::Error for GpioError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Other
    }
}

/// One requested line: held for the life of the value, released on drop.
pub struct CdevLine {
    request: Request,
    offset: u32,
}

/// The chips this machine has (`/dev/gpiochip*`), for error messages.
fn chips_present() -> String {
    let mut chips: Vec<String> = std::fs::read_dir("/dev")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("gpiochip"))
                .collect()
        })
        .unwrap_or_default();
    chips.sort();
    if chips.is_empty() {
        "none".into()
    } else {
        chips.join(", ")
    }
}

/// Why a request failed, where the chip itself says it: a missing chip, or a
/// line it does not have.
fn diagnose(l: &LineConfig, path: &Path) -> Option<String> {
    if !path.exists() {
        return Some(format!(
            "no GPIO chip {}: this machine's chips: {} (set `chip` in panel.toml; `gpiodetect` lists them)",
            path.display(),
            chips_present()
        ));
    }
    let info = gpiocdev::chip::Chip::from_path(path).and_then(|c| c.info()).ok()?;
    (l.line >= info.num_lines).then(|| {
        format!(
            "{} ({}, \"{}\") has lines 0..{}, not line {}: is this the header's chip? (`gpioinfo` lists the lines)",
            path.display(),
            info.name,
            info.label,
            info.num_lines.saturating_sub(1),
            l.line
        )
    })
}

fn request(l: &LineConfig, output: bool) -> Result<CdevLine> {
    let path = l.chip_path();
    if let Some(problem) = diagnose(l, &path) {
        anyhow::bail!("cannot request line {} of {}: {problem}", l.line, path.display());
    }
    let mut b = Request::builder();
    b.on_chip(&path).with_consumer(CONSUMER).with_line(l.line);
    if output {
        b.as_output(Value::Inactive);
    } else {
        b.as_input();
    }
    if l.active_low {
        b.as_active_low();
    }
    match l.bias {
        Bias::AsIs => {}
        Bias::PullUp => {
            b.with_bias(gpiocdev::line::Bias::PullUp);
        }
        Bias::PullDown => {
            b.with_bias(gpiocdev::line::Bias::PullDown);
        }
        Bias::Disabled => {
            b.with_bias(gpiocdev::line::Bias::Disabled);
        }
    }
    let request = b.request().with_context(|| {
        format!(
            "cannot request line {} of {} as {} (is the chip there, is the line free, may this user open it?)",
            l.line,
            path.display(),
            if output { "an output" } else { "an input" }
        )
    })?;
    Ok(CdevLine { request, offset: l.line })
}

/// An LED.
pub fn output(l: &LineConfig) -> Result<CdevLine> {
    request(l, true)
}

/// The button.
pub fn input(l: &LineConfig) -> Result<CdevLine> {
    request(l, false)
}

impl ErrorType for CdevLine {
    type Error = GpioError;
}

impl OutputPin for CdevLine {
    fn set_low(&mut self) -> Result<(), GpioError> {
        self.request.set_value(self.offset, Value::Inactive).map_err(GpioError)
    }
    fn set_high(&mut self) -> Result<(), GpioError> {
        self.request.set_value(self.offset, Value::Active).map_err(GpioError)
    }
}

impl InputPin for CdevLine {
    fn is_high(&mut self) -> Result<bool, GpioError> {
        Ok(self.request.value(self.offset).map_err(GpioError)? == Value::Active)
    }
    fn is_low(&mut self) -> Result<bool, GpioError> {
        self.is_high().map(|h| !h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_chip_is_named_as_missing() {
        let l = LineConfig { chip: "/nonexistent/gpiochip9".into(), line: 17, active_low: false, bias: Bias::AsIs };
        let e = format!("{:#}", output(&l).err().expect("no such chip"));
        assert!(e.contains("no GPIO chip /nonexistent/gpiochip9: this machine's chips:"), "{e}");
    }
}
