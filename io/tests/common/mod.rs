//! Shared by the tests that run the real default model.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;

use ollamamax_io::engine::{Arithmetic, Model};

/// The SmolLM2 GGUF: `$OLLAMAMAX_MODEL`, else where `scripts/fetch-model.sh` caches it. Missing: the test fails.
pub fn model_path() -> PathBuf {
    let path = match std::env::var_os("OLLAMAMAX_MODEL") {
        Some(path) => PathBuf::from(path),
        None => {
            let home = std::env::var_os("HOME").expect("HOME is set");
            PathBuf::from(home).join(".cache/ollamamax/SmolLM2-135M-Instruct.Q4_1.gguf")
        }
    };
    assert!(
        path.is_file(),
        "the SmolLM2 model is missing: run scripts/fetch-model.sh (or set OLLAMAMAX_MODEL to a copy)"
    );
    path
}

/// One model for all tests of this file: loading takes a fraction of a second but memory is shared.
pub fn model() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| Model::load(&model_path()).expect("the default model loads"))
}

/// The model loaded with llama.cpp's arithmetic ([`Arithmetic::LlamaCpp`]): what the goldens compare bit for bit.
pub fn model_llama_cpp() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| {
        Model::load_with(&model_path(), Arithmetic::LlamaCpp).expect("the default model loads")
    })
}

/// The model loaded with the default arithmetic ([`Arithmetic::Fast`]), whatever the environment says.
pub fn model_fast() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| {
        Model::load_with(&model_path(), Arithmetic::Fast).expect("the default model loads")
    })
}

pub fn chat(user: &str) -> String {
    format!("<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n")
}
