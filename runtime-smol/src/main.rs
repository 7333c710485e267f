//! `sse-gateway-smol`: the smol frontend of sse-gateway, for small hosts. It binds the sans-IO
//! core (`sse-gateway-core`) to TCP, RabbitMQ and timers and decides nothing itself.
//!
//! The command line and start-up are the core's (`cli`); serving is `runtime-common/`, shared
//! with `sse-gateway` (tokio). This crate is the smol glue only: [`driver`] (executor, tasks,
//! timers, sockets, lapin's runtime), [`listener`] and the signals below. Threads: the main
//! thread, a `sources` thread with a broker, and `server.workers` shard threads (0 = one), each a
//! `LocalExecutor` on async-io.
#![forbid(unsafe_code)]

// Compiled into both binaries; written against `driver`, `listener` and `shutdown_signal`.
#[path = "../../runtime-common/mod.rs"]
mod common;
mod driver;
mod listener;

use std::future::Future;
use std::io;
use std::process::ExitCode;

use async_signal::{Signal, Signals};
use futures_lite::StreamExt;

fn main() -> ExitCode {
    sse_gateway_core::cli::main("sse-gateway-smol", 1, common::run)
}

/// Installs the SIGTERM and SIGINT handlers; the future completes at the first of them. SIGHUP
/// is caught too and only logged ([`common::SIGHUP_IGNORED`]).
fn shutdown_signal() -> io::Result<impl Future<Output = ()>> {
    let mut signals = Signals::new([Signal::Term, Signal::Int, Signal::Hup])?;
    Ok(async move {
        while let Some(Ok(Signal::Hup)) = signals.next().await {
            tracing::warn!("{}", common::SIGHUP_IGNORED);
        }
    })
}
