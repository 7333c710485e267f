//! `sse-gateway`: the tokio frontend of sse-gateway. It binds the sans-IO core
//! (`sse-gateway-core`) to TCP, RabbitMQ and timers and decides nothing itself.
//!
//! The command line and start-up are the core's (`cli`); serving is `runtime-common/`, shared
//! with `sse-gateway-smol`. This crate is the tokio glue only: [`driver`] (executor, tasks,
//! timers, sockets, lapin's runtime), [`listener`] and the signals below. Threads: the main
//! thread, a `sources` thread with a broker, and `server.workers` shard threads (0 = one per CPU),
//! each a current-thread runtime.
#![forbid(unsafe_code)]

// Compiled into both binaries; written against `driver`, `listener` and `shutdown_signal`.
#[path = "../../runtime-common/mod.rs"]
mod common;
mod driver;
mod listener;

use std::future::Future;
use std::io;
use std::process::ExitCode;

use tokio::signal::unix::{signal, SignalKind};

fn main() -> ExitCode {
    let per_cpu = std::thread::available_parallelism().map_or(1, |n| n.get());
    sse_gateway_core::cli::main("sse-gateway", per_cpu, common::run)
}

/// Installs the SIGTERM and SIGINT handlers; the future completes at the first of them. SIGHUP
/// is caught too and only logged ([`common::SIGHUP_IGNORED`]).
fn shutdown_signal() -> io::Result<impl Future<Output = ()>> {
    let (mut term, mut int) = (signal(SignalKind::terminate())?, signal(SignalKind::interrupt())?);
    let mut hup = signal(SignalKind::hangup())?;
    Ok(async move {
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => tracing::warn!("{}", common::SIGHUP_IGNORED),
            }
        }
    })
}
