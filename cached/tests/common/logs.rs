//! The log of the server running on the test's own (current-thread) runtime, captured.
//!
//! One process-wide subscriber writes each event to the buffer of the thread that logged it, if
//! that thread is capturing. A subscriber per test thread (`set_default`) raced with the
//! other tests of the binary: tracing caches each call site's interest across all subscribers,
//! and a call site first reached on a thread without one, while another thread was installing
//! its own, could be cached as uninteresting, dropping that line from every capture.

use std::cell::RefCell;
use std::sync::{Arc, Mutex, Once};

/// What every capture records: the audit log and cached's own at debug.
const FILTER: &str = "audit=info,cached=debug";

thread_local! {
    static CAPTURING: RefCell<Option<Captured>> = const { RefCell::new(None) };
}

/// What the server logged while the guard of [`capture`] lived.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    pub fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

/// Writes to the buffer of the thread it runs on, if any.
struct ThisThread;

impl std::io::Write for ThisThread {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        CAPTURING.with(|capturing| {
            if let Some(captured) = capturing.borrow().as_ref() {
                captured.0.lock().unwrap().extend_from_slice(bytes);
            }
        });
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Ends the capture of this thread when dropped.
pub struct Guard;

impl Drop for Guard {
    fn drop(&mut self) {
        CAPTURING.with(|capturing| capturing.borrow_mut().take());
    }
}

/// Captures what this thread logs (the audit log at info, cached's at debug: [`FILTER`]) until
/// the guard is dropped.
pub fn capture() -> (Captured, Guard) {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(FILTER)
            .with_ansi(false)
            .with_writer(|| ThisThread)
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("no other global subscriber in tests");
    });
    let captured = Captured::default();
    CAPTURING.with(|capturing| *capturing.borrow_mut() = Some(captured.clone()));
    (captured, Guard)
}
