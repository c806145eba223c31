//! Loops that own a thread. Each broker's router reads the log synchronously at every
//! step, and the log's writer writes and syncs every group; on a thread of its own
//! each does so without handing the work to tokio's blocking pool and back (a wake-up
//! each way), while its channels, watches and timers still run on the runtime.

use std::future::Future;

use tokio_util::task::TaskTracker;

/// Runs `fut` to completion on a new OS thread named `name`, inside the current tokio
/// runtime (its timers, I/O and spawned tasks work as on a worker). The future may
/// block between awaits: it is the only thing polled on that thread. `tracker` counts
/// it until it ends, as it counts spawned tasks.
///
/// Panics when called outside a tokio runtime, or when the thread cannot be started.
pub fn spawn_thread<F>(name: &str, tracker: &TaskTracker, fut: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    let handle = tokio::runtime::Handle::current();
    let fut = tracker.track_future(fut);
    std::thread::Builder::new()
        .name(name.to_string())
        // Routers evaluate CEL on their thread: the stack it is sized for.
        .stack_size(crate::expr::cost::EVAL_STACK)
        .spawn(move || handle.block_on(fut))
        .unwrap_or_else(|e| panic!("cannot start the {name} thread: {e}"));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn the_tracker_waits_for_the_thread_and_its_timers_run() {
        let tracker = TaskTracker::new();
        let (tx, rx) = tokio::sync::oneshot::channel();
        spawn_thread("test-loop", &tracker, async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            // Blocking between awaits holds up only this thread.
            std::thread::sleep(Duration::from_millis(20));
            let _ = tx.send(std::thread::current().name().map(str::to_string));
        });
        tracker.close();
        assert_eq!(
            tracker.len(),
            1,
            "the tracker counts the thread's loop until it ends"
        );
        tokio::time::timeout(Duration::from_secs(5), tracker.wait())
            .await
            .expect("the loop ends and the tracker sees it");
        assert_eq!(rx.await.unwrap().as_deref(), Some("test-loop"));
    }
}
