//! sluice: a multi-tenant automation runtime for Prisme.ai DSUL workflows.
//!
//! # Layout
//! - [`value`]: the value model (JSON plus JavaScript's `undefined`).
//! - [`budgets`]: what one execution may use (instructions, sizes, depth, waits).
//! - [`checked`]: numbers from the settings file, checked with one wording.
//! - [`expr`]: `{{ }}` templates, `{% %}` expressions and variable paths.
//! - [`dsl`]: automation files compiled into instructions, with diagnostics.
//! - [`workspace`]: workspaces on disk, their config and secrets.
//! - [`runtime`]: the interpreter and its contexts; one file per instruction under
//!   `runtime/instructions/` (its fields, checks and execution).
//! - [`limits`]: per-workspace burst-capable limiters and throttle accounting; `limits::named`
//!   the workspaces' own limits (keys, units, concurrency, lanes), `limits::cluster` the same
//!   held across instances over NATS.
//! - [`quota`]: credit quotas: plans, cycles, bands and durable usage.
//! - [`metrics`]: Prometheus counters and histograms.
//! - [`bus`]: the event bus trait, its embedded and its NATS implementations.
//! - [`config`]: settings from defaults, a file and the environment.
//! - [`http`]: the routes of `sluice serve`.
//! - [`server`]: `sluice serve` wiring: watcher, schedules, shutdown.
//! - [`cli`]: the `run`, `validate` and `serve` commands.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod budgets;
pub mod bus;
pub mod checked;
pub mod cli;
pub mod config;
pub mod dsl;
pub mod expr;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod quota;
pub mod runtime;
pub mod server;
pub mod value;
pub mod workspace;
