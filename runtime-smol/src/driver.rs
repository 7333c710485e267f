//! The smol glue `runtime-common/` runs on (its `mod.rs` lists what it needs): a
//! `LocalExecutor` per thread driven by async-io's `block_on`, async-io's `Timer` and
//! `Async<TcpStream>`. async-io has one reactor for the process; whichever thread is blocked in
//! `block_on` polls it for all.

use std::cell::RefCell;
use std::future::Future;
use std::io;

use smol::LocalExecutor;

thread_local! {
    /// This thread's executor: [`spawn`] puts tasks here, [`Executor::block_on`] runs them.
    static LOCAL: RefCell<LocalExecutor<'static>> = const { RefCell::new(LocalExecutor::new()) };
}

/// A thread's executor (its `LocalExecutor` lives in a thread-local, created on first use).
pub(crate) struct Executor;

impl Executor {
    pub(crate) fn new() -> io::Result<Executor> {
        Ok(Executor)
    }

    /// Runs `fut` (and what it spawns) on this thread until it completes; then drops the tasks
    /// still there (closing their sockets), as tokio's `LocalSet` does when it is dropped. Left
    /// in the thread-local executor, they would hold their connections, unpolled, until the
    /// process exits (the main thread's, during the shutdown drain).
    pub(crate) fn block_on<F: Future>(&self, fut: F) -> F::Output {
        let out = LOCAL.with(|ex| smol::block_on(ex.borrow().run(fut)));
        // Out of the borrow before the tasks are dropped: dropping one may spawn (into the new,
        // never-run executor).
        let rest = LOCAL.with(|ex| ex.replace(LocalExecutor::new()));
        drop(rest);
        out
    }
}

/// Spawns a task on this thread's executor; it runs to its end unless the thread stops first.
pub(crate) fn spawn(fut: impl Future<Output = ()> + 'static) {
    LOCAL.with(|ex| ex.borrow().spawn(fut).detach());
}

/// A timer completing at an instant, re-armed with `set_at`.
pub(crate) type Timer = smol::Timer;

/// A connection registered with the async-io reactor (`Async::new` adopts one, `into_inner`
/// gives it back).
pub(crate) type Socket = smol::Async<std::net::TcpStream>;

/// The runtime handle lapin connects with: smol (lapin's own tasks go to smol's global
/// executor, its IO loop to a thread of its own).
pub(crate) type AmqpRuntime = async_rs::SmolRuntime;

pub(crate) fn amqp_runtime() -> AmqpRuntime {
    async_rs::Runtime::smol()
}
