//! The backup's health as an operator sees it without reading a log: how
//! long until the backup device fills ([`device`]), the Prometheus text file
//! ([`metrics`]), and a command run when a condition is raised or cleared
//! ([`alerts`]). [`monitor`] is the one thread that drives them, off the
//! hook's path: the hook only bumps a histogram bucket
//! ([`metrics::HookHistogram::record`]).
//!
//! Not here: the panel's LEDs (crate::panel, which reads the status file),
//! and anything that refuses a hook. A nearly full device is a warning; the
//! halt stays where it is, at a real ENOSPC.

pub mod alerts;
pub mod device;
pub mod metrics;
pub mod monitor;
