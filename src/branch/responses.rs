//! Answers to the controller's requests, released strictly in request order.

use std::collections::VecDeque;

/// Slots for answers that may be ready out of order (a record still recording answers later
/// than a finished one) but must go out in the order the requests came: the controller matches
/// each `ReturnSnapshot` to its oldest outstanding `RetrieveSnapshot`.
#[derive(Debug)]
pub struct ResponseQueue<T> {
    /// Sequence number of the front slot.
    front_seq: u64,
    /// One slot per request not yet released; `Some` once its answer is ready.
    slots: VecDeque<Option<T>>,
}

impl<T> Default for ResponseQueue<T> {
    fn default() -> Self {
        Self {
            front_seq: 0,
            slots: VecDeque::new(),
        }
    }
}

impl<T> ResponseQueue<T> {
    /// Reserves the next slot; its answer is released after every earlier slot's.
    pub fn reserve(&mut self) -> u64 {
        self.slots.push_back(None);
        self.front_seq + self.slots.len() as u64 - 1
    }

    /// Fills slot `seq` and returns every answer now releasable, in order. A sequence number that
    /// was never reserved or was already released is ignored.
    pub fn fill(&mut self, seq: u64, answer: T) -> Vec<T> {
        if let Some(slot) = seq
            .checked_sub(self.front_seq)
            .and_then(|offset| self.slots.get_mut(usize::try_from(offset).ok()?))
        {
            *slot = Some(answer);
        }
        let mut ready = Vec::new();
        while let Some(Some(_)) = self.slots.front() {
            if let Some(Some(answer)) = self.slots.pop_front() {
                ready.push(answer);
            }
            self.front_seq += 1;
        }
        ready
    }

    /// Requests waiting for an answer or for an earlier answer.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether nothing is outstanding.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_released_in_request_order() {
        let mut queue = ResponseQueue::default();
        let (a, b, c) = (queue.reserve(), queue.reserve(), queue.reserve());
        assert!(queue.fill(b, "b").is_empty());
        assert!(queue.fill(c, "c").is_empty());
        assert_eq!(queue.fill(a, "a"), vec!["a", "b", "c"]);
        assert!(queue.is_empty());
        let d = queue.reserve();
        assert_eq!(queue.fill(d, "d"), vec!["d"]);
        assert!(queue.fill(a, "stale").is_empty());
        assert!(queue.fill(99, "never reserved").is_empty());
    }
}
