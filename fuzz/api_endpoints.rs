// The API endpoints the `api_bodies` fuzz target picks with its first byte, in selector order. One table for the
// target and for tests/tests/t25_fuzz_corpus_replay.rs, which posts the corpus to the live server (`include!`d by
// both, as the fuzz crate is its own workspace).
const ENDPOINTS: [(&str, &str); 14] = [
    ("POST", "/api/generate"),
    ("POST", "/api/chat"),
    ("POST", "/api/embed"),
    ("POST", "/api/embeddings"),
    ("POST", "/api/show"),
    ("POST", "/api/create"),
    ("POST", "/api/copy"),
    ("DELETE", "/api/delete"),
    ("POST", "/api/pull"),
    ("POST", "/api/push"),
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"),
    ("POST", "/v1/embeddings"),
    ("POST", "/api/cluster/replication"),
];
