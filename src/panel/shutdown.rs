//! The safe shutdown: stop lightningd, wait until the plugin says the
//! journal is sealed, sync, unmount the backup device, power off.
//!
//! [`run_sequence`] owns the order and the rule that a failed step ends the
//! sequence before power-off; the [`Steps`] trait does the work, so tests
//! substitute fakes, and [`RealSteps`] takes its commands from panel.toml so
//! a test can make them `true` or `false`.

use super::health::read_status;
use crate::status::PluginState;
use anyhow::{anyhow, bail, Context, Result};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    StopLightningd,
    WaitSealed,
    Sync,
    Unmount,
    PowerOff,
}

impl Step {
    pub const ALL: [Step; 5] = [Step::StopLightningd, Step::WaitSealed, Step::Sync, Step::Unmount, Step::PowerOff];

    pub fn name(self) -> &'static str {
        match self {
            Step::StopLightningd => "stop lightningd",
            Step::WaitSealed => "wait for the sealed journal",
            Step::Sync => "sync",
            Step::Unmount => "unmount the backup device",
            Step::PowerOff => "power off",
        }
    }
}

/// Does one step; `Ok` carries a line for the log.
pub trait Steps {
    fn run(&mut self, step: Step) -> Result<String>;
}

#[derive(Debug)]
pub struct Failure {
    pub step: Step,
    pub error: anyhow::Error,
}

/// Runs every step in order, logging each; stops at the first failure.
pub fn run_sequence(steps: &mut dyn Steps, log: &mut dyn FnMut(&str)) -> Result<(), Failure> {
    log("safe shutdown: starting");
    for (i, step) in Step::ALL.into_iter().enumerate() {
        log(&format!("safe shutdown: step {}/{}: {}", i + 1, Step::ALL.len(), step.name()));
        match steps.run(step) {
            Ok(detail) => log(&format!("safe shutdown: {}: ok ({detail})", step.name())),
            Err(error) => {
                log(&format!("safe shutdown: {}: FAILED: {error:#}; not powering off", step.name()));
                return Err(Failure { step, error });
            }
        }
    }
    Ok(())
}

/// The real steps, from panel.toml.
pub struct RealSteps {
    pub lightning_rpc: PathBuf,
    pub status_file: PathBuf,
    pub seal_timeout: Duration,
    pub command_timeout: Duration,
    pub unmount_command: Vec<String>,
    pub poweroff_command: Vec<String>,
}

impl RealSteps {
    pub fn from_config(c: &super::config::PanelConfig) -> RealSteps {
        RealSteps {
            lightning_rpc: c.lightning_rpc.clone(),
            status_file: c.status_file.clone(),
            seal_timeout: Duration::from_millis(c.seal_timeout_ms),
            command_timeout: Duration::from_millis(c.command_timeout_ms),
            unmount_command: c.unmount_command.clone(),
            poweroff_command: c.poweroff_command.clone(),
        }
    }

    fn wait_sealed(&self) -> Result<String> {
        let started = Instant::now();
        let mut last = String::from("no status read yet");
        while started.elapsed() < self.seal_timeout {
            match read_status(&self.status_file) {
                Ok(s) if s.state == PluginState::Stopped && s.sealed => {
                    return Ok(format!(
                        "the plugin reports stopped and sealed at data_version {:?} after {} ms",
                        s.data_version,
                        started.elapsed().as_millis()
                    ));
                }
                Ok(s) if s.state == PluginState::Halted => {
                    bail!("the plugin halted ({}): the journal is not sealed", s.reason.unwrap_or_default())
                }
                Ok(s) => last = format!("state {:?}, sealed {}", s.state, s.sealed),
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!("the plugin did not report a sealed journal within {} ms (last: {last})", self.seal_timeout.as_millis())
    }
}

impl Steps for RealSteps {
    fn run(&mut self, step: Step) -> Result<String> {
        match step {
            Step::StopLightningd => match crate::rpc::stop(&self.lightning_rpc, self.seal_timeout)? {
                crate::rpc::StopOutcome::Stopping(answer) => Ok(format!("lightningd answered {answer}")),
                crate::rpc::StopOutcome::NotRunning => {
                    Ok(format!("lightningd is not running (nothing listens on {})", self.lightning_rpc.display()))
                }
            },
            Step::WaitSealed => self.wait_sealed(),
            Step::Sync => {
                // SAFETY: sync(2) takes no arguments and cannot fail.
                unsafe { libc::sync() };
                Ok("all filesystems flushed".into())
            }
            Step::Unmount if self.unmount_command.is_empty() => Ok("no unmount_command configured: skipped".into()),
            Step::Unmount => run_command(&self.unmount_command, self.command_timeout),
            Step::PowerOff => run_command(&self.poweroff_command, self.command_timeout),
        }
    }
}

/// Runs argv (no shell) and requires exit status 0 within `timeout`.
pub fn run_command(argv: &[String], timeout: Duration) -> Result<String> {
    let (program, args) = argv.split_first().ok_or_else(|| anyhow!("empty command"))?;
    let shown = argv.join(" ");
    let mut child = Command::new(program).args(args).spawn().with_context(|| format!("cannot run `{shown}`"))?;
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            if status.success() {
                return Ok(format!("`{shown}` exited 0"));
            }
            bail!("`{shown}` failed: {status}");
        }
        if started.elapsed() >= timeout {
            let _ = child.kill();
            let _ = child.wait();
            bail!("`{shown}` did not finish within {} ms; killed", timeout.as_millis());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::StatusBoard;
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixListener;

    /// Records the steps and fails the one named.
    struct Fake {
        fail_at: Option<Step>,
        done: Vec<Step>,
    }

    impl Steps for Fake {
        fn run(&mut self, step: Step) -> Result<String> {
            self.done.push(step);
            if self.fail_at == Some(step) {
                bail!("injected failure");
            }
            Ok("fake".into())
        }
    }

    #[test]
    fn every_step_runs_in_order() {
        let mut f = Fake { fail_at: None, done: vec![] };
        let mut lines = vec![];
        run_sequence(&mut f, &mut |l| lines.push(l.to_string())).unwrap();
        assert_eq!(f.done, Step::ALL);
        assert_eq!(lines.iter().filter(|l| l.ends_with("ok (fake)")).count(), 5);
    }

    #[test]
    fn a_failed_step_stops_before_power_off() {
        for fail in Step::ALL {
            let mut f = Fake { fail_at: Some(fail), done: vec![] };
            let mut lines = vec![];
            let e = run_sequence(&mut f, &mut |l| lines.push(l.to_string())).unwrap_err();
            assert_eq!(e.step, fail);
            assert_eq!(f.done.last(), Some(&fail));
            let later_ran = f
                .done
                .iter()
                .any(|s| Step::ALL.iter().position(|x| x == s) > Step::ALL.iter().position(|x| *x == fail));
            assert!(!later_ran);
            assert!(lines.last().unwrap().contains("FAILED: injected failure"), "{lines:?}");
        }
    }

    fn status_file(dir: &std::path::Path, state: PluginState, sealed: bool) -> PathBuf {
        let board = StatusBoard::default();
        board.set_state(state, None);
        let mut v = serde_json::to_value(board.snapshot()).unwrap();
        v["sealed"] = serde_json::json!(sealed);
        let path = dir.join("status.json");
        std::fs::write(&path, v.to_string()).unwrap();
        path
    }

    fn real(dir: &std::path::Path, unmount: &str, poweroff: &str) -> RealSteps {
        RealSteps {
            lightning_rpc: dir.join("lightning-rpc"),
            status_file: dir.join("status.json"),
            seal_timeout: Duration::from_millis(1_000),
            command_timeout: Duration::from_millis(5_000),
            unmount_command: vec![unmount.into()],
            poweroff_command: vec!["sh".into(), "-c".into(), poweroff.into()],
        }
    }

    /// A fake lightningd: answers one `stop`, then (as the plugin would on
    /// its way out) leaves a sealed, stopped status file.
    fn fake_lightningd(dir: &std::path::Path) -> std::thread::JoinHandle<String> {
        let listener = UnixListener::bind(dir.join("lightning-rpc")).unwrap();
        let dir = dir.to_path_buf();
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            // Our client sends one JSON object without a newline: read what came.
            let mut buf = vec![0u8; 4096];
            let n = std::io::Read::read(reader.get_mut(), &mut buf).unwrap();
            line.push_str(std::str::from_utf8(&buf[..n]).unwrap());
            let req: serde_json::Value = serde_json::from_str(&line).unwrap();
            let answer = serde_json::json!({"jsonrpc": "2.0", "id": req["id"], "result": "Shutdown complete"});
            (&stream).write_all(format!("{answer}\n\n").as_bytes()).unwrap();
            let _ = reader.read_line(&mut String::new());
            std::thread::sleep(Duration::from_millis(300));
            status_file(&dir, PluginState::Stopped, true);
            req["method"].as_str().unwrap().to_string()
        })
    }

    #[test]
    fn real_steps_with_a_fake_lightningd_power_off() {
        let dir = tempfile::tempdir().unwrap();
        status_file(dir.path(), PluginState::InSync, false);
        let server = fake_lightningd(dir.path());
        let marker = dir.path().join("powered-off");
        let mut steps = real(dir.path(), "true", &format!("touch {}", marker.display()));
        let mut lines = vec![];
        run_sequence(&mut steps, &mut |l| lines.push(l.to_string())).unwrap();
        assert_eq!(server.join().unwrap(), "stop");
        assert!(marker.exists(), "{lines:?}");
        assert!(lines.iter().any(|l| l.contains("Shutdown complete")), "{lines:?}");
    }

    #[test]
    fn real_steps_refuse_to_power_off() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("powered-off");
        let poweroff = format!("touch {}", marker.display());
        // lightningd not running and the journal sealed: only a failing unmount stops it.
        status_file(dir.path(), PluginState::Stopped, true);
        let e = run_sequence(&mut real(dir.path(), "false", &poweroff), &mut |_| {}).unwrap_err();
        assert_eq!(e.step, Step::Unmount);
        // Not sealed: the wait times out.
        status_file(dir.path(), PluginState::InSync, false);
        let e = run_sequence(&mut real(dir.path(), "true", &poweroff), &mut |_| {}).unwrap_err();
        assert_eq!(e.step, Step::WaitSealed);
        assert!(format!("{:#}", e.error).contains("within 1000 ms"));
        // Halted: fails at once.
        status_file(dir.path(), PluginState::Halted, false);
        let started = Instant::now();
        let e = run_sequence(&mut real(dir.path(), "true", &poweroff), &mut |_| {}).unwrap_err();
        assert_eq!(e.step, Step::WaitSealed);
        assert!(started.elapsed() < Duration::from_millis(900));
        assert!(!marker.exists());
        // A power-off command that fails is reported too.
        status_file(dir.path(), PluginState::Stopped, true);
        let e = run_sequence(&mut real(dir.path(), "true", "exit 3"), &mut |_| {}).unwrap_err();
        assert_eq!(e.step, Step::PowerOff);
    }

    #[test]
    fn commands_time_out() {
        let e = run_command(&["sleep".into(), "5".into()], Duration::from_millis(200)).unwrap_err();
        assert!(e.to_string().contains("killed"));
        assert!(run_command(&["/nonexistent/cmd".into()], Duration::from_secs(1)).is_err());
    }
}
