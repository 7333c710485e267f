//! `sse-gateway`: the tokio frontend of sse-gateway. It binds the sans-IO core
//! (`sse-gateway-core`) to TCP, RabbitMQ and timers and decides nothing itself.
//!
//! The command line and start-up are the core's (`cli`); serving is `runtime-common/`, shared
//! with `sse-gateway-smol`. This crate is the tokio glue only: [`driver`] (executor, tasks,
//! timers, sockets, lapin's runtime), [`listener`] and the signals below. Threads: the main
//! thread, a `signals` thread and the `key-reload` thread it feeds, a `sources` thread with a broker, and `server.workers` shard threads
//! (0 = one per CPU), each a current-thread runtime.
#![forbid(unsafe_code)]

// Compiled into both binaries; written against `driver`, `listener` and `Signals`.
#[path = "../../runtime-common/mod.rs"]
mod common;
mod driver;
mod listener;

use std::io;
use std::process::ExitCode;

use tokio::signal::unix::{signal, Signal, SignalKind};

fn main() -> ExitCode {
    let per_cpu = std::thread::available_parallelism().map_or(1, |n| n.get());
    sse_gateway_core::cli::main("sse-gateway", per_cpu, common::run)
}

/// SIGTERM, SIGINT and SIGHUP, listened for on the thread that creates them.
struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    /// Installs the handlers.
    fn new() -> io::Result<Signals> {
        Ok(Signals { term: signal(SignalKind::terminate())?, int: signal(SignalKind::interrupt())?, hup: signal(SignalKind::hangup())? })
    }

    /// The next SIGTERM, SIGINT or SIGHUP.
    async fn next(&mut self) -> common::Signalled {
        tokio::select! {
            _ = self.term.recv() => common::Signalled::Stop(15),
            _ = self.int.recv() => common::Signalled::Stop(2),
            _ = self.hup.recv() => common::Signalled::Hangup,
        }
    }
}
