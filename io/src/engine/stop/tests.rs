use proptest::prelude::*;

use super::*;

fn matcher(stops: &[&str]) -> StopMatcher {
    let stops: Vec<String> = stops.iter().map(|stop| stop.to_string()).collect();
    StopMatcher::new(&stops)
}

fn released(text: &str, stopped: bool) -> Released {
    Released {
        text: text.to_string(),
        stopped,
    }
}

/// Feeds every piece and returns each release, then what `finish` flushes.
fn run(stops: &[&str], pieces: &[&str]) -> (Vec<Released>, String) {
    let mut matcher = matcher(stops);
    let steps = pieces.iter().map(|piece| matcher.push(piece)).collect();
    (steps, matcher.finish())
}

#[test]
fn without_stops_every_piece_passes_through() {
    let (steps, rest) = run(&[], &["Hello", ", ", "world"]);
    assert_eq!(
        steps,
        [
            released("Hello", false),
            released(", ", false),
            released("world", false)
        ]
    );
    assert_eq!(rest, "");
}

#[test]
fn text_that_cannot_start_a_stop_is_released_at_once() {
    let (steps, rest) = run(&["<|end|>"], &["Hello", " world"]);
    assert_eq!(steps, [released("Hello", false), released(" world", false)]);
    assert_eq!(rest, "");
}

#[test]
fn a_stop_inside_one_piece_cuts_it() {
    let (steps, rest) = run(&["END"], &["one two", " threeEND four", "five"]);
    assert_eq!(
        steps,
        [
            released("one two", false),
            released(" three", true),
            released("", true)
        ]
    );
    assert_eq!(rest, "");
}

#[test]
fn a_stop_spanning_two_pieces_is_held_then_dropped() {
    let (steps, rest) = run(&["<|end|>"], &["Hello <|e", "nd|> more"]);
    assert_eq!(steps, [released("Hello ", false), released("", true)]);
    assert_eq!(rest, "");
}

#[test]
fn a_stop_spanning_three_pieces() {
    let (steps, _) = run(&["<|end|>"], &["a<", "|en", "d|>b"]);
    assert_eq!(
        steps,
        [
            released("a", false),
            released("", false),
            released("", true)
        ]
    );
}

#[test]
fn a_false_start_is_released_when_it_diverges() {
    let (steps, rest) = run(&["<|end|>"], &["x <|e", "xtra|>", " y"]);
    assert_eq!(
        steps,
        [
            released("x ", false),
            released("<|extra|>", false),
            released(" y", false)
        ]
    );
    assert_eq!(rest, "");
}

#[test]
fn a_diverging_start_may_begin_another_match() {
    // "aa" could start "aab"; the third "a" shows the first one cannot, but the last two still can.
    let (steps, _) = run(&["aab"], &["aa", "a", "b"]);
    assert_eq!(
        steps,
        [
            released("", false),
            released("a", false),
            released("", true)
        ]
    );
}

#[test]
fn overlapping_stops_the_shorter_prefix_wins_when_complete() {
    // "ab" is complete as soon as it arrives, even though "abc" might still follow.
    let (steps, _) = run(&["abc", "ab"], &["xa", "bc"]);
    assert_eq!(steps, [released("x", false), released("", true)]);
    // "abc" starts before "bcd" completes: the earlier stop wins.
    let (steps, _) = run(&["bcd", "abc"], &["ab", "cd"]);
    assert_eq!(steps, [released("", false), released("", true)]);
    // "bd" completes inside a failed "abc": the text before it is released.
    let (steps, _) = run(&["abc", "bd"], &["ab", "d"]);
    assert_eq!(steps, [released("", false), released("a", true)]);
}

#[test]
fn the_earliest_of_several_stops_wins() {
    let (steps, _) = run(&["END", "STOP", "\n\n"], &["xSTOPyEND"]);
    assert_eq!(steps, [released("x", true)]);
    let (steps, _) = run(&["END", "STOP", "\n\n"], &["first\n", "\nsecond"]);
    assert_eq!(steps, [released("first", false), released("", true)]);
}

#[test]
fn a_stop_completed_first_wins_over_a_longer_one_still_arriving() {
    // "é" completes with the first piece; "😀éc" started earlier but needs the next one (found by proptest).
    let (steps, _) = run(&["😀éc", "é"], &["a😀é", "caaaaa"]);
    assert_eq!(steps, [released("a😀", true), released("", true)]);
    // Arriving in one piece, both are complete and the earlier start wins.
    let (steps, _) = run(&["😀éc", "é"], &["a😀écaaaaa"]);
    assert_eq!(steps, [released("a", true)]);
}

#[test]
fn unicode_stops_and_text() {
    let (steps, _) = run(&["世界"], &["你好世", "界!"]);
    assert_eq!(steps, [released("你好", false), released("", true)]);
    // A held multi-byte character is released whole when the stop diverges.
    let (steps, rest) = run(&["😀!"], &["a😀", "b", "😀"]);
    assert_eq!(
        steps,
        [
            released("a", false),
            released("😀b", false),
            released("", false)
        ]
    );
    assert_eq!(rest, "😀");
    // A stop that shares a leading byte with the text, but not a character, holds nothing back.
    let (steps, _) = run(&["é"], &["è"]);
    assert_eq!(steps, [released("è", false)]);
}

#[test]
fn finish_flushes_a_held_prefix() {
    let mut matcher = matcher(&["</answer>"]);
    assert_eq!(matcher.push("42</ans"), released("42", false));
    assert!(!matcher.is_stopped());
    assert_eq!(matcher.finish(), "</ans");
    assert_eq!(matcher.finish(), "");
}

#[test]
fn after_a_stop_nothing_more_is_released() {
    let mut matcher = matcher(&["."]);
    assert_eq!(matcher.push("Done. And"), released("Done", true));
    assert!(matcher.is_stopped());
    assert_eq!(matcher.push("more"), released("", true));
    assert_eq!(matcher.finish(), "");
}

#[test]
fn empty_stop_sequences_are_ignored() {
    let (steps, rest) = run(&["", "Z"], &["abc", "dZe"]);
    assert_eq!(steps, [released("abc", false), released("d", true)]);
    assert_eq!(rest, "");
}

/// The whole output for `text`: everything before the earliest stop, or all of it.
fn expected_output(stops: &[String], text: &str) -> (String, bool) {
    let earliest = stops
        .iter()
        .filter(|stop| !stop.is_empty())
        .filter_map(|stop| text.find(stop.as_str()))
        .min();
    match earliest {
        Some(start) => (text[..start].to_string(), true),
        None => (text.to_string(), false),
    }
}

fn text_strategy(max_chars: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop::sample::select(vec!['a', 'b', 'c', 'é', '😀']),
        0..max_chars,
    )
    .prop_map(|chars| chars.into_iter().collect())
}

proptest! {
    #[test]
    fn streaming_equals_cutting_the_whole_text(
        stops in prop::collection::vec(text_strategy(4), 0..4),
        text in text_strategy(40),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        // Split the text into pieces at character boundaries.
        let boundaries: Vec<usize> = text.char_indices().map(|(index, _)| index).collect();
        let mut points: Vec<usize> = cuts
            .iter()
            .filter(|_| !boundaries.is_empty())
            .map(|cut| boundaries[cut.index(boundaries.len())])
            .collect();
        points.push(0);
        points.push(text.len());
        points.sort_unstable();
        points.dedup();
        let mut matcher = StopMatcher::new(&stops);
        let mut output = String::new();
        let mut consumed = 0;
        let mut stopped = false;
        for window in points.windows(2) {
            let step = matcher.push(&text[window[0]..window[1]]);
            output.push_str(&step.text);
            consumed = window[1];
            if step.stopped {
                stopped = true;
                break;
            }
            // Nothing is lost: released text plus held text is exactly what came in.
            prop_assert_eq!(format!("{}{}", output, matcher.held), &text[..consumed]);
            // And only what could still be a stop is held.
            let (_, stopped_early) = expected_output(&stops, &text[..consumed]);
            prop_assert!(!stopped_early);
            prop_assert!(matcher.held.is_empty() || stops.iter().any(|stop| stop.starts_with(&matcher.held)));
        }
        output.push_str(&matcher.finish());
        // A stream can only stop on what has arrived: the first piece that completes a stop ends it, at the
        // earliest stop complete by then (a longer stop that started earlier but would only complete later loses,
        // as in Ollama, which checks each new piece).
        let arrived = points[1..]
            .iter()
            .find(|&&point| expected_output(&stops, &text[..point]).1)
            .copied()
            .unwrap_or(text.len());
        let (expected, expected_stop) = expected_output(&stops, &text[..arrived]);
        prop_assert_eq!(output, expected);
        prop_assert_eq!(stopped, expected_stop);
        if !stopped {
            prop_assert_eq!(consumed, text.len());
        }
    }
}
