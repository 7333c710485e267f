//! `sse-gateway-smol`: the smol frontend of sse-gateway, for small hosts. It binds the sans-IO
//! core (`sse-gateway-core`) to TCP, RabbitMQ and timers and decides nothing itself.
//!
//! The command line and start-up are the core's (`cli`); serving is `runtime-common/`, shared
//! with `sse-gateway` (tokio). This crate is the smol glue only: [`driver`] (executor, tasks,
//! timers, sockets, lapin's runtime), [`listener`] and the signals below. Threads: the main
//! thread, a `signals` thread and the `key-reload` thread it feeds, a `sources` thread with a broker, and `server.workers` shard threads
//! (0 = one), each a `LocalExecutor` on async-io.
#![forbid(unsafe_code)]

// Compiled into both binaries; written against `driver`, `listener` and `Signals`.
#[path = "../../runtime-common/mod.rs"]
mod common;
mod driver;
mod listener;

use std::io;
use std::process::ExitCode;

use async_signal::Signal;
use futures_lite::StreamExt;

fn main() -> ExitCode {
    // smol's global executor runs lapin's tasks on `SMOL_THREADS` threads; at 0 nothing would
    // run them and no source would ever connect: at least one (before any thread starts).
    if std::env::var("SMOL_THREADS").ok().and_then(|v| v.trim().parse::<usize>().ok()) == Some(0) {
        std::env::set_var("SMOL_THREADS", "1");
    }
    sse_gateway_core::cli::main("sse-gateway-smol", 1, common::run)
}

/// SIGTERM, SIGINT and SIGHUP, listened for on the thread that creates them.
struct Signals(async_signal::Signals);

impl Signals {
    /// Installs the handlers.
    fn new() -> io::Result<Signals> {
        async_signal::Signals::new([Signal::Term, Signal::Int, Signal::Hup]).map(Signals)
    }

    /// The next SIGTERM, SIGINT or SIGHUP. An error reading the signals counts as a SIGTERM, so
    /// that the process can still stop.
    async fn next(&mut self) -> common::Signalled {
        match self.0.next().await {
            Some(Ok(Signal::Hup)) => common::Signalled::Hangup,
            Some(Ok(Signal::Int)) => common::Signalled::Stop(2),
            _ => common::Signalled::Stop(15),
        }
    }
}
