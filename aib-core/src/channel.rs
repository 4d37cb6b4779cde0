//! The events channel of a run: bounded for output lines, lossless for everything else,
//! and never blocking the run.
//!
//! Output lines and progress ([`Event::is_lossy`]) count against a capacity; when the reader
//! falls behind that far, further lossy events are dropped and counted, and the next event
//! that is delivered is preceded by one [`Event::Lagged`]. State, step, resource and notice
//! events are always queued: a run emits a bounded number of them (a few per step and per
//! resource), so the queue stays bounded too. Order is kept.

use crate::events::Event;
use futures::Stream;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

/// Lossy events queued at most, unless the pipeline says otherwise.
pub(crate) const DEFAULT_CAPACITY: usize = 4096;

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Event>,
    /// Lossy events in `queue`.
    lossy: usize,
    /// Dropped since the last `Lagged`.
    dropped: u64,
    closed: bool,
    reader_gone: bool,
    waker: Option<Waker>,
}

#[derive(Debug)]
struct Shared {
    capacity: usize,
    state: Mutex<State>,
}

/// The sending side; the stream ends when it is dropped.
#[derive(Debug)]
pub(crate) struct EventSender {
    shared: Arc<Shared>,
}

/// A sender and its stream.
pub(crate) fn channel(capacity: usize) -> (EventSender, EventStream) {
    let shared = Arc::new(Shared { capacity: capacity.max(1), state: Mutex::new(State::default()) });
    (EventSender { shared: shared.clone() }, EventStream { shared: Some(shared) })
}

impl EventSender {
    /// Queues `e` (or drops it, if lossy and the reader is `capacity` behind). Never blocks
    /// for long: the lock is held only to push.
    pub(crate) fn send(&self, e: Event) {
        let Ok(mut st) = self.shared.state.lock() else { return };
        if st.reader_gone {
            return;
        }
        let lossy = e.is_lossy();
        if lossy && st.lossy >= self.shared.capacity {
            st.dropped += 1;
            return;
        }
        if st.dropped > 0 {
            let dropped = std::mem::take(&mut st.dropped);
            st.queue.push_back(Event::Lagged { dropped });
        }
        st.lossy += usize::from(lossy);
        st.queue.push_back(e);
        if let Some(w) = st.waker.take() {
            w.wake();
        }
    }
}

impl Drop for EventSender {
    fn drop(&mut self) {
        if let Ok(mut st) = self.shared.state.lock() {
            if st.dropped > 0 {
                let dropped = std::mem::take(&mut st.dropped);
                st.queue.push_back(Event::Lagged { dropped });
            }
            st.closed = true;
            if let Some(w) = st.waker.take() {
                w.wake();
            }
        }
    }
}

/// The receiving end of a run's events: a [`Stream`] that ends when the run has finished.
///
/// Output lines and progress may be dropped when this stream is read too slowly (see
/// [`Event::Lagged`]); every other event arrives, in order.
#[derive(Debug)]
pub struct EventStream {
    shared: Option<Arc<Shared>>,
}

impl EventStream {
    /// A stream that has already ended.
    pub(crate) fn ended() -> Self {
        EventStream { shared: None }
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        if let Some(shared) = &self.shared
            && let Ok(mut st) = shared.state.lock()
        {
            st.reader_gone = true;
            st.queue.clear();
        }
    }
}

impl Stream for EventStream {
    type Item = Event;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        let Some(shared) = &self.shared else { return Poll::Ready(None) };
        let Ok(mut st) = shared.state.lock() else { return Poll::Ready(None) };
        if let Some(e) = st.queue.pop_front() {
            if e.is_lossy() {
                st.lossy -= 1;
            }
            return Poll::Ready(Some(e));
        }
        if st.closed {
            return Poll::Ready(None);
        }
        st.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{OutputStream, RunState};
    use futures::StreamExt;
    use std::time::SystemTime;

    fn line(i: usize) -> Event {
        Event::Output { step: "s".into(), stream: OutputStream::Stdout, line: i.to_string() }
    }

    fn state() -> Event {
        Event::State { state: RunState::Running, sub_state: None, at: SystemTime::now() }
    }

    #[tokio::test]
    async fn a_slow_reader_loses_lines_counted_but_never_a_state() {
        let (tx, rx) = channel(3);
        for i in 0..10 {
            tx.send(line(i));
        }
        tx.send(state());
        tx.send(line(10));
        drop(tx);
        let got: Vec<Event> = rx.collect().await;
        assert_eq!(got.len(), 3 + 1 + 1 + 1, "{got:?}");
        assert_eq!(got[..3], [line(0), line(1), line(2)]);
        assert_eq!(got[3], Event::Lagged { dropped: 7 });
        assert!(matches!(got[4], Event::State { .. }));
        // The reader never caught up: the last line is dropped too, and said so at the end.
        assert_eq!(got[5], Event::Lagged { dropped: 1 });
    }

    #[tokio::test]
    async fn lines_dropped_at_the_end_are_still_reported() {
        let (tx, rx) = channel(1);
        tx.send(line(0));
        tx.send(line(1));
        drop(tx);
        let got: Vec<Event> = rx.collect().await;
        assert_eq!(got, vec![line(0), Event::Lagged { dropped: 1 }]);
    }

    #[tokio::test]
    async fn a_reader_that_keeps_up_loses_nothing() {
        let (tx, mut rx) = channel(2);
        for i in 0..100 {
            tx.send(line(i));
            assert_eq!(rx.next().await, Some(line(i)));
        }
        drop(tx);
        assert_eq!(rx.next().await, None);
    }

    #[test]
    fn sending_after_the_reader_is_gone_keeps_nothing() {
        let (tx, rx) = channel(2);
        drop(rx);
        for i in 0..10 {
            tx.send(state());
            tx.send(line(i));
        }
        assert!(tx.shared.state.lock().unwrap().queue.is_empty());
    }
}
