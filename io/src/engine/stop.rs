//! Stop sequences over streamed text.
//!
//! Generated text arrives a piece at a time (one [`Detokenizer`](super::detokenize::Detokenizer) piece per token)
//! and a stop sequence may span several pieces. [`StopMatcher`] releases text as soon as it can no longer be part
//! of a stop sequence and holds back only a tail that is a proper prefix of one; when a stop sequence completes,
//! everything before it is released and the sequence itself, and anything after it, never is. As in Ollama, the
//! earliest stop sequence in the text wins, whichever it is.
//!
//! What is held back is always shorter than the longest stop sequence, so the matcher's memory is bounded by the
//! stop sequences, not by the generation.

/// What one piece of text released.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Released {
    /// Text that is safe to send to the client now (possibly empty).
    pub text: String,
    /// Whether a stop sequence was found: generation should end, and the matcher releases nothing more.
    pub stopped: bool,
}

/// Finds stop sequences in a stream of text pieces. See the module documentation.
#[derive(Clone, Debug)]
pub struct StopMatcher {
    /// The stop sequences, empty ones left out (an empty sequence would stop before the first token).
    stops: Vec<String>,
    /// Length in bytes of the longest stop sequence.
    stop_bytes_max: usize,
    /// Text received but not released: a proper prefix of some stop sequence.
    held: String,
    stopped: bool,
}

impl StopMatcher {
    /// A matcher for these stop sequences. Empty strings are ignored; with no sequences at all every piece is
    /// released as it comes.
    pub fn new(stops: &[String]) -> Self {
        let stops: Vec<String> = stops
            .iter()
            .filter(|stop| !stop.is_empty())
            .cloned()
            .collect();
        let stop_bytes_max = stops.iter().map(String::len).max().unwrap_or(0);
        Self {
            stops,
            stop_bytes_max,
            held: String::new(),
            stopped: false,
        }
    }

    /// Adds the next piece of generated text and returns what can be released. Once a stop sequence has been
    /// found, further pieces are discarded and every call reports `stopped`.
    pub fn push(&mut self, piece: &str) -> Released {
        if self.stopped {
            return Released {
                text: String::new(),
                stopped: true,
            };
        }
        self.held.push_str(piece);
        if let Some(start) = self.earliest_stop() {
            self.held.truncate(start);
            self.stopped = true;
            return Released {
                text: std::mem::take(&mut self.held),
                stopped: true,
            };
        }
        let held_from = self.partial_stop_start();
        let held = self.held.split_off(held_from);
        let text = std::mem::replace(&mut self.held, held);
        assert!(
            self.held.len() < self.stop_bytes_max || self.held.is_empty(),
            "only a proper prefix of a stop sequence is held back"
        );
        Released {
            text,
            stopped: false,
        }
    }

    /// Ends the stream without a stop: returns the text still held back (it turned out not to start a stop
    /// sequence after all). Empty after a stop.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Whether a stop sequence has been found.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Where the earliest complete stop sequence in the held text starts, if any.
    fn earliest_stop(&self) -> Option<usize> {
        self.stops
            .iter()
            .filter_map(|stop| self.held.find(stop.as_str()))
            .min()
    }

    /// Where the held text's longest suffix that is a proper prefix of some stop sequence starts (the text's
    /// length when there is none). Everything before it can never become part of a stop sequence.
    fn partial_stop_start(&self) -> usize {
        // A partial match is shorter than the longest stop sequence, so only the last bytes need checking.
        let lowest = self
            .held
            .len()
            .saturating_sub(self.stop_bytes_max.saturating_sub(1));
        self.held
            .char_indices()
            .map(|(index, _)| index)
            .filter(|&index| index >= lowest)
            .find(|&index| {
                let tail = &self.held[index..];
                self.stops.iter().any(|stop| stop.starts_with(tail))
            })
            .unwrap_or(self.held.len())
    }
}

#[cfg(test)]
mod tests;
