//! Batching by what is ready: the one loop behind group commit ([`crate::engine`]) and
//! participant batches ([`crate::participants`]).
//!
//! A batch starts with the first item that arrives, waits for its turn (an in-flight slot),
//! and takes what arrived meanwhile, up to a cap. Nothing ever waits for a batch to fill: at
//! low load every item goes alone and at once; under load, the wait for a slot is where a
//! batch grows, so the batch size follows the load by itself.

use tokio::sync::mpsc::{self, UnboundedReceiver};
use tokio::sync::{oneshot, Semaphore};

/// How much one batch may carry: `items` at most, and no item is taken once the sizes of
/// those taken reach `size` (an item may take a batch past `size`; a caller's own per-item
/// bound keeps that overshoot small).
pub(crate) struct Cap<T> {
    pub items: usize,
    pub size: usize,
    pub size_of: fn(&T) -> usize,
}

impl<T> Cap<T> {
    /// A cap on the number of items only.
    pub fn items(items: usize) -> Cap<T> {
        Cap {
            items,
            size: usize::MAX,
            size_of: |_| 0,
        }
    }
}

/// The next batch and the turn it goes under. `None` once every sender is gone or no turn can
/// be had any more (the slots were closed).
pub(crate) async fn next<T, S, E, F>(
    rx: &mut UnboundedReceiver<T>,
    turn: impl FnOnce() -> F,
    cap: &Cap<T>,
) -> Option<(Vec<T>, S)>
where
    F: std::future::Future<Output = Result<S, E>>,
{
    let first = rx.recv().await?;
    let turn = turn().await.ok()?;
    let mut size = (cap.size_of)(&first);
    let mut batch = vec![first];
    while batch.len() < cap.items && size < cap.size {
        match rx.try_recv() {
            Ok(item) => {
                size = size.saturating_add((cap.size_of)(&item));
                batch.push(item);
            }
            Err(_) => break,
        }
    }
    Some((batch, turn))
}

/// One item of a [`Grouped`] and where its result goes.
pub(crate) type Member<T, R> = (T, oneshot::Sender<R>);

/// Items written in groups: up to `in_flight` groups are being written at once, and the items
/// submitted meanwhile go together in the next one (group commit). The writer answers each
/// member through its sender.
pub(crate) struct Grouped<T, R> {
    queue: mpsc::UnboundedSender<Member<T, R>>,
}

impl<T, R> Clone for Grouped<T, R> {
    fn clone(&self) -> Self {
        Grouped {
            queue: self.queue.clone(),
        }
    }
}

impl<T: Send + 'static, R: Send + 'static> Grouped<T, R> {
    pub fn start<W, F>(in_flight: usize, cap: Cap<Member<T, R>>, write: W) -> Grouped<T, R>
    where
        W: Fn(Vec<Member<T, R>>) -> F + Send + 'static,
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let (queue, mut rx) = mpsc::unbounded_channel();
        let slots = std::sync::Arc::new(Semaphore::new(in_flight));
        tokio::spawn(async move {
            while let Some((group, slot)) =
                next(&mut rx, || slots.clone().acquire_owned(), &cap).await
            {
                let written = write(group);
                tokio::spawn(async move {
                    written.await;
                    drop(slot);
                });
            }
        });
        Grouped { queue }
    }

    /// Submits one item; `None` when it was dropped unwritten (the process is stopping).
    pub async fn submit(&self, item: T) -> Option<R> {
        let (reply, result) = oneshot::channel();
        self.queue.send((item, reply)).ok()?;
        result.await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    #[tokio::test]
    async fn a_lone_item_goes_at_once_and_what_waited_for_the_turn_goes_together() {
        let (tx, mut rx) = mpsc::unbounded_channel::<u32>();
        tx.send(1).unwrap();
        let (batch, ()) = next(&mut rx, || async { Ok::<_, ()>(()) }, &Cap::items(8))
            .await
            .unwrap();
        assert_eq!(batch, vec![1]);
        // Items that arrive while the batch waits for its turn all go with it.
        let turn = tokio::sync::Semaphore::new(0);
        let sender = tx.clone();
        let cap = Cap::items(8);
        let (got, ()) = tokio::join!(next(&mut rx, || turn.acquire(), &cap), async {
            for i in 2..=5 {
                sender.send(i).unwrap();
                tokio::task::yield_now().await;
            }
            turn.add_permits(1);
        });
        let (batch, _permit) = got.unwrap();
        assert_eq!(batch, vec![2, 3, 4, 5]);
    }

    #[tokio::test]
    async fn a_batch_stops_at_its_item_cap_and_at_its_size_cap() {
        let (tx, mut rx) = mpsc::unbounded_channel::<u32>();
        for i in 1..=5 {
            tx.send(i).unwrap();
        }
        let ok = || async { Ok::<_, ()>(()) };
        let (batch, ()) = next(&mut rx, ok, &Cap::items(2)).await.unwrap();
        assert_eq!(batch, vec![1, 2]);
        // Sizes 3, 4, 5: the cap of 6 is reached after the second item, which is still taken.
        let by_value = Cap {
            items: 10,
            size: 6,
            size_of: |v: &u32| *v as usize,
        };
        let (batch, ()) = next(&mut rx, ok, &by_value).await.unwrap();
        assert_eq!(batch, vec![3, 4]);
        let (batch, ()) = next(&mut rx, ok, &by_value).await.unwrap();
        assert_eq!(batch, vec![5]);
    }

    #[tokio::test]
    async fn grouped_items_are_each_answered_and_go_together_while_a_group_is_written() {
        let (sizes_tx, mut sizes) = mpsc::unbounded_channel::<usize>();
        let gate = std::sync::Arc::new(Semaphore::new(0));
        let g = {
            let gate = gate.clone();
            Grouped::<u32, u32>::start(1, Cap::items(64), move |group| {
                let (sizes_tx, gate) = (sizes_tx.clone(), gate.clone());
                async move {
                    sizes_tx.send(group.len()).unwrap();
                    let _open = gate.acquire().await.unwrap();
                    for (item, reply) in group {
                        let _ = reply.send(item * 10);
                    }
                }
            })
        };
        // The first goes alone; the next five wait for its slot and go as one group.
        let first = tokio::spawn({
            let g = g.clone();
            async move { g.submit(1).await }
        });
        assert_eq!(sizes.recv().await, Some(1));
        let rest: Vec<_> = (2..=6)
            .map(|i| {
                let g = g.clone();
                tokio::spawn(async move { g.submit(i).await })
            })
            .collect();
        tokio::task::yield_now().await;
        gate.add_permits(2);
        assert_eq!(first.await.unwrap(), Some(10));
        assert_eq!(sizes.recv().await, Some(5));
        for (i, r) in (2..=6).zip(rest) {
            assert_eq!(r.await.unwrap(), Some(i * 10));
        }
    }

    #[tokio::test]
    async fn no_batch_once_the_senders_are_gone_or_the_turns_closed() {
        let (tx, mut rx) = mpsc::unbounded_channel::<u32>();
        tx.send(1).unwrap();
        let closed = || async { Err::<(), _>("closed") };
        assert!(next(&mut rx, closed, &Cap::items(8)).await.is_none());
        drop(tx);
        let ok = || async { Ok::<_, ()>(()) };
        assert!(next(&mut rx, ok, &Cap::items(8)).await.is_none());
    }
}
