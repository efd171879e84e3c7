//! The pool's driver: one current-thread runtime, on a thread of its own,
//! whose timers and I/O serve every worker.
//!
//! A worker polls user code outside any runtime's `block_on` (see
//! `park.rs`), so that the code may build, block on and drop a runtime of
//! its own, as it may under `spawn_blocking`. What tokio needs from a
//! runtime while that code runs, the worker takes from here: the handle it
//! enters makes `tokio::time`, tokio I/O and `Handle::current()` work, and
//! the driver thread turns the timer wheel and the I/O driver even while
//! every worker is blocked, which is what `Handle::block_on` on a
//! current-thread handle needs (its docs: timers and I/O only work while
//! another thread runs `Runtime::block_on`). Tasks that handlers spawn with
//! `tokio::spawn` run on this thread too.

use std::io;
use std::sync::mpsc;
use std::thread;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// The driver runtime's handle; dropping it stops the thread.
pub(crate) struct Driver {
    handle: Handle,
    // Dropped with the pool's shared state, once no worker is left to use
    // the handle: a timer polled after its runtime is gone panics.
    _stop: oneshot::Sender<()>,
}

impl Driver {
    /// Starts the thread, named `{prefix}-driver`, and builds the runtime
    /// there: a runtime may not be dropped inside another's context, and
    /// the pool may be built inside one.
    pub(crate) fn start(prefix: &str) -> io::Result<Self> {
        let (built, on_built) = mpsc::sync_channel(1);
        let (stop, stopped) = oneshot::channel::<()>();
        thread::Builder::new()
            .name(format!("{prefix}-driver"))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                let runtime = match runtime {
                    Ok(runtime) => runtime,
                    Err(error) => return drop(built.send(Err(error))),
                };
                let _ = built.send(Ok(runtime.handle().clone()));
                // Parks in the I/O driver, turning it and the timers, until
                // the sender is gone; then drops the runtime here, with the
                // tasks handlers spawned on it.
                let _ = runtime.block_on(stopped);
            })?;
        let handle = on_built
            .recv()
            .map_err(|_| io::Error::other("tower-affinity: the driver thread ended"))??;
        Ok(Self {
            handle,
            _stop: stop,
        })
    }

    pub(crate) fn handle(&self) -> &Handle {
        &self.handle
    }
}
