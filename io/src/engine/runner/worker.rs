//! The runner's thread: the loop described in the [runner's documentation](super).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

use super::{
    EVENTS_PER_STEP_MAX, EmbedJob, Event, RunnerConfig, SequenceRequest, Shared, Submission,
};
use crate::engine::generate::{DoneReason, Output, Progress, Sequence};
use crate::engine::llama::BatchSequence;
use crate::engine::pool;
use crate::engine::{GenerateError, GenerationStats, Model};

/// How long the thread waits before looking again when every active sequence waits for its client to read.
const PAUSED_POLL: Duration = Duration::from_millis(2);

/// The thread's state: the model and the sequences holding a slot.
pub(super) struct Worker {
    model: Arc<Model>,
    config: RunnerConfig,
    shared: Arc<Shared>,
    active: Vec<Active>,
}

/// A sequence holding a slot, with where its events go.
struct Active {
    sequence: Sequence,
    events: mpsc::Sender<Event>,
}

/// A sequence's last event, sent only after the shared slot count no longer includes it: a client that sees
/// `Done` and then asks [`super::Runner::load`] finds the slot free.
struct Ending {
    events: mpsc::Sender<Event>,
    event: Event,
}

/// What one turn of the loop takes from the inbox.
struct Work {
    admitted: Vec<Submission>,
    embed: Option<EmbedJob>,
}

impl Worker {
    pub(super) fn new(model: Arc<Model>, config: RunnerConfig, shared: Arc<Shared>) -> Self {
        Self {
            model,
            config,
            shared,
            active: Vec::with_capacity(config.num_parallel as usize),
        }
    }

    /// The loop: until the runner is dropped, admit, embed, step.
    pub(super) fn run(mut self) {
        let _stopped = StoppedOnExit(self.shared.clone());
        while let Some(work) = self.next_work() {
            let mut endings: Vec<Ending> = work
                .admitted
                .into_iter()
                .filter_map(|submission| self.admit(submission))
                .collect();
            if let Some(job) = work.embed {
                let result = self.model.embed(&job.tokens);
                // A receiver that went away no longer wants the answer.
                let _ = job.reply.send(result);
            }
            endings.extend(self.step());
            let active = self.active.len() as u32;
            self.shared.lock().active = active;
            for ending in endings {
                // A fresh channel (an admission) or a stepped one (room kept for a step's events) has room.
                let _ = send(&ending.events, ending.event);
            }
        }
        self.shut_down();
    }

    /// Waits until there is something to do and takes it: submissions to admit into free slots, one embedding
    /// request, or at least one active sequence whose client has room for its events. `None` on shutdown.
    fn next_work(&mut self) -> Option<Work> {
        let mut inbox = self.shared.lock();
        loop {
            // Cancellation: a dropped receiver ends its sequence, running or waiting, and frees its slot.
            inbox
                .waiting
                .retain(|submission| !submission.events.is_closed());
            inbox.embeds.retain(|job| !job.reply.is_closed());
            self.active.retain(|active| !active.events.is_closed());
            inbox.active = self.active.len() as u32;
            if inbox.shutdown {
                return None;
            }
            let free = (self.config.num_parallel as usize).saturating_sub(self.active.len());
            let admit = free.min(inbox.waiting.len());
            let runnable = self.active.iter().any(Active::has_room);
            if admit > 0 || runnable || !inbox.embeds.is_empty() {
                let admitted: Vec<Submission> = inbox.waiting.drain(..admit).collect();
                inbox.active += admit as u32;
                assert!(inbox.active <= self.config.num_parallel);
                let embed = inbox.embeds.pop_front();
                return Some(Work { admitted, embed });
            }
            inbox = if self.active.is_empty() {
                self.shared
                    .wake
                    .wait(inbox)
                    .unwrap_or_else(PoisonError::into_inner)
            } else {
                // Every active sequence waits for its client to read, which does not signal us: look again soon.
                self.shared
                    .wake
                    .wait_timeout(inbox, PAUSED_POLL)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0
            };
        }
    }

    /// Makes a submission a running sequence; one that cannot start ends here, with its event returned.
    fn admit(&mut self, Submission { request, events }: Submission) -> Option<Ending> {
        let SequenceRequest {
            prompt_tokens,
            options,
            entropy,
            constraint,
            context,
        } = request;
        // A fresh channel has room for these first events.
        match Sequence::new(
            &self.model,
            &prompt_tokens,
            &options,
            entropy,
            constraint,
            context,
        ) {
            Err(error) => Some(Ending {
                events,
                event: Event::Error(error),
            }),
            Ok(sequence) if sequence.done().is_some() => Some(Ending {
                events,
                event: Event::Done(sequence.into_output()),
            }),
            Ok(sequence) => {
                self.active.push(Active { sequence, events });
                None
            }
        }
    }

    /// One batched forward pass over every active sequence whose client has room, then each one's sampling
    /// and events. Sequences that end leave `self.active`; their last events are returned, to be sent once the
    /// shared slot count is updated.
    fn step(&mut self) -> Vec<Ending> {
        let mut endings = Vec::new();
        let stepping: Vec<bool> = self.active.iter().map(Active::has_room).collect();
        if !stepping.contains(&true) {
            return endings;
        }
        let results = {
            let mut batch: Vec<BatchSequence<'_>> = self
                .active
                .iter_mut()
                .zip(&stepping)
                .filter(|(_, stepped)| **stepped)
                .map(|(active, _)| active.sequence.batch_entry())
                .collect();
            self.model.llama().forward_batch(&mut batch)
        };
        let mut previous = std::mem::take(&mut self.active);
        match results {
            Ok(mut logits) => {
                let outcomes = {
                    let mut rows = logits.rows_mut().into_iter();
                    let jobs: Vec<Job<'_>> = previous
                        .iter_mut()
                        .zip(&stepping)
                        .filter(|(_, stepped)| **stepped)
                        .map(|(active, _)| Job {
                            sequence: &mut active.sequence,
                            logits: rows.next().expect("one result per stepped sequence"),
                        })
                        .collect();
                    assert!(rows.next().is_none(), "no result left over");
                    handle_forwards(&self.model, jobs)
                };
                let mut outcomes = outcomes.into_iter();
                for (active, stepped) in previous.into_iter().zip(stepping) {
                    if !stepped {
                        self.active.push(active);
                        continue;
                    }
                    match outcomes.next().expect("one outcome per stepped sequence") {
                        Ok(progress) => match active.deliver(progress) {
                            Ok(going_on) => self.active.extend(going_on),
                            Err(ending) => endings.push(ending),
                        },
                        Err(error) => endings.push(active.fail(error)),
                    }
                }
            }
            Err(error) => {
                // The pass itself failed (a bug or memory exhaustion): every sequence in it fails.
                let message = error.to_string();
                for (active, stepped) in previous.into_iter().zip(stepping) {
                    if stepped {
                        endings.push(active.fail(GenerateError::Compute(candle_core::Error::Msg(
                            message.clone(),
                        ))));
                    } else {
                        self.active.push(active);
                    }
                }
            }
        }
        endings
    }

    /// The runner was dropped: every sequence, running or waiting, ends as cancelled.
    fn shut_down(&mut self) {
        for mut active in self.active.drain(..) {
            active.sequence.cancel();
            let _ = active
                .events
                .try_send(Event::Done(active.sequence.into_output()));
        }
        let waiting = std::mem::take(&mut self.shared.lock().waiting);
        for submission in waiting {
            let _ = submission.events.try_send(Event::Done(Output {
                tokens: Vec::new(),
                done_reason: DoneReason::Cancelled,
                stats: GenerationStats::default(),
            }));
        }
    }
}

/// A stepped sequence and its logits from the pass.
struct Job<'a> {
    sequence: &'a mut Sequence,
    logits: Option<&'a mut [f32]>,
}

/// Each stepped sequence's part after a pass ([`Sequence::handle_forward`]: a grammar's mask, sampling, the new
/// text), the sequences shared between the engine's threads: for a batch, with samplers that sort the vocabulary,
/// this is no longer small next to the pass. The outcomes come back in the order of `jobs`.
fn handle_forwards(model: &Model, jobs: Vec<Job<'_>>) -> Vec<Result<Progress, GenerateError>> {
    if jobs.len() < 2 {
        return jobs
            .into_iter()
            .map(|job| job.sequence.handle_forward(model, job.logits))
            .collect();
    }
    type Slot<'a> = (Job<'a>, Option<Result<Progress, GenerateError>>);
    let slots: Vec<Mutex<Slot<'_>>> = jobs
        .into_iter()
        .map(|job| Mutex::new((job, None)))
        .collect();
    pool::execute_chunked(slots.len(), |range| {
        for slot in &slots[range] {
            let mut slot = slot.lock().unwrap_or_else(PoisonError::into_inner);
            let (job, outcome) = &mut *slot;
            *outcome = Some(job.sequence.handle_forward(model, job.logits.take()));
        }
    });
    slots
        .into_iter()
        .map(|slot| {
            slot.into_inner()
                .unwrap_or_else(PoisonError::into_inner)
                .1
                .expect("every job ran")
        })
        .collect()
}

impl Active {
    /// Whether the client has room for everything one step may send, plus one event kept free for the `Done`
    /// that shutdown sends.
    fn has_room(&self) -> bool {
        self.events.capacity() > EVENTS_PER_STEP_MAX
    }

    /// Sends a step's text; returns the sequence if it goes on (`Ok(None)`: the client went away, cancelled),
    /// or its `Done` to send once its slot is counted free.
    fn deliver(self, progress: Progress) -> Result<Option<Self>, Ending> {
        if !progress.text.is_empty() && !self.send(Event::Text(progress.text)) {
            return Ok(None);
        }
        if progress.done.is_none() {
            return Ok(Some(self));
        }
        let Self { sequence, events } = self;
        Err(Ending {
            events,
            event: Event::Done(sequence.into_output()),
        })
    }

    fn fail(self, error: GenerateError) -> Ending {
        Ending {
            events: self.events,
            event: Event::Error(error),
        }
    }

    fn send(&self, event: Event) -> bool {
        send(&self.events, event)
    }
}

/// Sends without blocking; `false` when the receiver is gone.
fn send(events: &mpsc::Sender<Event>, event: Event) -> bool {
    match events.try_send(event) {
        Ok(()) => true,
        Err(TrySendError::Closed(_)) => false,
        Err(TrySendError::Full(_)) => {
            unreachable!("a sequence is stepped only with room for a step's events")
        }
    }
}

/// Marks the runner stopped when its thread exits, however it exits: later submissions fail at once instead of
/// waiting forever, and waiting senders are dropped so their receivers see the channel close.
struct StoppedOnExit(Arc<Shared>);

impl Drop for StoppedOnExit {
    fn drop(&mut self) {
        let mut inbox = self.0.lock();
        inbox.stopped = true;
        inbox.active = 0;
        inbox.waiting.clear();
        inbox.embeds.clear();
    }
}
