//! Shared helpers for OllamaMax's end-to-end tests; the server-driving helpers arrive with the single-node issue.
