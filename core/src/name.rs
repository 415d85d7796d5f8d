//! Model names: `[host/][namespace/]model[:tag]`, with Ollama's defaults and character rules.
//!
//! A model name becomes four directory and file names on disk (`manifests/<host>/<namespace>/<model>/<tag>`), so
//! every part is checked against a small allowlist before a [`ModelName`] exists: ASCII letters, digits, `_`,
//! `-` and `.` (never in a namespace, never twice in a row), `:` only in the host (a port), and a letter, digit
//! or `_` first. That rules out `/`, `\`, NUL, `.`, `..` and leading `-` by construction rather than by a later
//! check someone might forget.
//!
//! Names match case-insensitively, as in Ollama (`Mistral` and `mistral` are one model), but keep the case they
//! were written with for display.

use crate::limits::{MODEL_NAME_BYTES_MAX, MODEL_NAME_HOST_BYTES_MAX, MODEL_NAME_PART_BYTES_MAX};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;

/// The host a name without one refers to: Ollama's public registry.
pub const DEFAULT_HOST: &str = "registry.ollama.ai";
/// The namespace a name without one refers to: the registry's official models.
pub const DEFAULT_NAMESPACE: &str = "library";
/// The tag a name without one refers to.
pub const DEFAULT_TAG: &str = "latest";

/// A validated model name with every part filled in.
#[derive(Clone)]
pub struct ModelName {
    host: String,
    namespace: String,
    model: String,
    tag: String,
    /// The full form, ASCII-lowercased: the key for equality, ordering and hashing. Computed once, because
    /// names are map keys in the cluster state and are compared on every lookup (folding on the fly made
    /// comparisons 57% of `ClusterState::apply`).
    key: String,
}

/// Which part of a name an error is about, so the message can say where without echoing the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamePart {
    /// The registry host, possibly with a port.
    Host,
    /// The namespace (user or organisation).
    Namespace,
    /// The model itself.
    Model,
    /// The tag (version).
    Tag,
}

impl NamePart {
    fn bytes_max(self) -> usize {
        match self {
            NamePart::Host => MODEL_NAME_HOST_BYTES_MAX as usize,
            _ => MODEL_NAME_PART_BYTES_MAX as usize,
        }
    }

    fn allowed(self) -> &'static str {
        match self {
            NamePart::Host => "letters, digits, '_', '-', '.' and ':'",
            NamePart::Namespace => "letters, digits, '_' and '-'",
            NamePart::Model | NamePart::Tag => "letters, digits, '_', '-' and '.'",
        }
    }

    fn allows(self, byte: u8) -> bool {
        match byte {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' => true,
            b'.' => self != NamePart::Namespace,
            b':' => self == NamePart::Host,
            _ => false,
        }
    }
}

impl fmt::Display for NamePart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NamePart::Host => "host",
            NamePart::Namespace => "namespace",
            NamePart::Model => "model",
            NamePart::Tag => "tag",
        })
    }
}

/// Why a string is not a model name. Messages name the rule and the part, never the input, so a hostile name
/// cannot inject text into logs or error responses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Nothing to parse.
    #[error("invalid model name: the name is empty")]
    Empty,
    /// The whole name, defaults included, is too long to store.
    #[error("invalid model name: longer than {} bytes", MODEL_NAME_BYTES_MAX)]
    TooLong,
    /// `name@sha256-…` pins a manifest by digest; we only resolve names through tags.
    #[error("invalid model name: names with an @digest are not supported, use a tag")]
    Digest,
    /// More than `host/namespace/model`.
    #[error("invalid model name: at most host/namespace/model:tag")]
    TooManyParts,
    /// A separator with nothing on one side (`ns/`, `m:`, `/m`).
    #[error("invalid model name: the {0} is empty")]
    EmptyPart(NamePart),
    /// One part over its length limit.
    #[error("invalid model name: the {0} is too long")]
    PartTooLong(NamePart),
    /// A part starting with `.`, `-` or `:`; this is what keeps `.`, `..` and option-like names out.
    #[error("invalid model name: the {0} must start with a letter, digit or '_'")]
    InvalidStart(NamePart),
    /// A character outside the part's allowlist.
    #[error("invalid model name: the {0} may only contain {allowed}", allowed = .0.allowed())]
    InvalidCharacter(NamePart),
    /// `..` inside a part, which Ollama rejects.
    #[error("invalid model name: the {0} contains '..'")]
    ConsecutiveDots(NamePart),
}

impl ModelName {
    /// Parse `[host/][namespace/]model[:tag]`, filling in the defaults. One part is a model, two are
    /// namespace/model, three are host/namespace/model, as in Ollama; a leading `http://` or `https://` is
    /// dropped, as Ollama does.
    pub fn parse(text: &str) -> Result<Self, NameError> {
        if text.contains('@') {
            return Err(NameError::Digest);
        }
        let text = text
            .strip_prefix("http://")
            .or_else(|| text.strip_prefix("https://"))
            .unwrap_or(text);
        if text.is_empty() {
            return Err(NameError::Empty);
        }
        if text.len() > MODEL_NAME_BYTES_MAX as usize {
            return Err(NameError::TooLong);
        }
        let mut segments = text.rsplit('/');
        let last = segments.next().unwrap_or_default();
        let namespace = segments.next();
        let host = segments.next();
        if segments.next().is_some() {
            return Err(NameError::TooManyParts);
        }
        let (model, tag) = match last.split_once(':') {
            Some((model, tag)) => (model, Some(tag)),
            None => (last, None),
        };
        if let Some(host) = host {
            validate(NamePart::Host, host)?;
        }
        if let Some(namespace) = namespace {
            validate(NamePart::Namespace, namespace)?;
        }
        validate(NamePart::Model, model)?;
        if let Some(tag) = tag {
            validate(NamePart::Tag, tag)?;
        }
        let mut name = ModelName {
            host: host.unwrap_or(DEFAULT_HOST).to_string(),
            namespace: namespace.unwrap_or(DEFAULT_NAMESPACE).to_string(),
            model: model.to_string(),
            tag: tag.unwrap_or(DEFAULT_TAG).to_string(),
            key: String::new(),
        };
        name.key = name.to_string().to_ascii_lowercase();
        if name.full_len() > MODEL_NAME_BYTES_MAX as usize {
            return Err(NameError::TooLong);
        }
        debug_assert!(name.path_segments().iter().all(|s| is_safe_segment(s)));
        Ok(name)
    }

    /// The registry host, possibly with `:port`.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The namespace (user or organisation).
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The model without host, namespace or tag.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// The tag (version).
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// How Ollama displays it: default host and namespace omitted: "smollm2:latest", "user/m:v1",
    /// "example.com:5000/ns/m:v1". The namespace is only dropped together with the host, because `host/model`
    /// would read back as `namespace/model`. The tag is always shown.
    pub fn short(&self) -> String {
        let default_host = self.host.eq_ignore_ascii_case(DEFAULT_HOST);
        if !default_host {
            return self.to_string();
        }
        if self.namespace.eq_ignore_ascii_case(DEFAULT_NAMESPACE) {
            format!("{}:{}", self.model, self.tag)
        } else {
            format!("{}/{}:{}", self.namespace, self.model, self.tag)
        }
    }

    /// host, namespace, model, tag: each a single safe path segment (manifests/<host>/<namespace>/<model>/<tag>).
    /// Safe because `parse` admits no `/`, `\`, NUL or leading `.`; the case is as written, so a caller that
    /// stores on a case-sensitive filesystem should look names up case-insensitively, as Ollama does.
    pub fn path_segments(&self) -> [&str; 4] {
        [&self.host, &self.namespace, &self.model, &self.tag]
    }

    fn full_len(&self) -> usize {
        self.host.len() + self.namespace.len() + self.model.len() + self.tag.len() + 3
    }
}

fn validate(part: NamePart, text: &str) -> Result<(), NameError> {
    let bytes = text.as_bytes();
    let Some(&first) = bytes.first() else {
        return Err(NameError::EmptyPart(part));
    };
    if bytes.len() > part.bytes_max() {
        return Err(NameError::PartTooLong(part));
    }
    if !(first.is_ascii_alphanumeric() || first == b'_') {
        return Err(NameError::InvalidStart(part));
    }
    if !bytes.iter().all(|&byte| part.allows(byte)) {
        return Err(NameError::InvalidCharacter(part));
    }
    if text.contains("..") {
        return Err(NameError::ConsecutiveDots(part));
    }
    Ok(())
}

fn is_safe_segment(segment: &str) -> bool {
    !segment.is_empty() && segment != "." && segment != ".." && !segment.contains(['/', '\\', '\0'])
}

impl fmt::Display for ModelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}:{}",
            self.host, self.namespace, self.model, self.tag
        )
    }
}

impl fmt::Debug for ModelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ModelName({self})")
    }
}

impl PartialEq for ModelName {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl Eq for ModelName {}

impl PartialOrd for ModelName {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ModelName {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key.cmp(&other.key)
    }
}

impl Hash for ModelName {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(self.key.as_bytes());
        // A terminator keeps the stream prefix-free, as `str`'s own `Hash` does.
        state.write_u8(0xff);
    }
}

impl FromStr for ModelName {
    type Err = NameError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

impl Serialize for ModelName {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ModelName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        ModelName::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests;
