//! Grammar-constrained decoding for Ollama's `format` (`"json"` or a JSON schema): implementations of
//! [`super::constraint::Constraint`]. Work in progress.
