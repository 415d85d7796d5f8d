//! Where a node keeps its cluster files, under the data directory (`--data-dir`, `OLLAMAMAX_DATA`, default
//! `~/.ollamamax`):
//!
//! ```text
//! cluster/ca.crt, ca.key     the cluster CA (only on nodes that admit joiners: the one that ran `cluster init`)
//! cluster/node.crt, node.key this node's identity; its certificate names its node id
//! cluster/tokens.json        join tokens this node accepts (hashes of the secrets, never the secrets)
//! raft/                      the Raft log, vote and snapshot (redb)
//! ```

use std::path::PathBuf;

/// The data directory's parts.
#[derive(Debug, Clone)]
pub struct DataPaths {
    root: PathBuf,
}

impl DataPaths {
    /// The layout under `root`.
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    /// The default data directory: `$OLLAMAMAX_DATA`, else `~/.ollamamax`.
    pub fn default_root() -> PathBuf {
        if let Some(dir) = std::env::var_os("OLLAMAMAX_DATA").filter(|dir| !dir.is_empty()) {
            return PathBuf::from(dir);
        }
        let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
        home.join(".ollamamax")
    }

    /// PKI and token files.
    pub fn cluster(&self) -> PathBuf {
        self.root.join("cluster")
    }

    /// The Raft store.
    pub fn raft(&self) -> PathBuf {
        self.root.join("raft")
    }

    /// The join tokens file.
    pub fn tokens(&self) -> PathBuf {
        self.cluster().join("tokens.json")
    }

    /// The nodes this node admitted that have not become members yet (on the node holding the CA).
    pub fn admitted(&self) -> PathBuf {
        self.cluster().join("admitted.json")
    }

    /// Whether this node has a cluster identity (it ran `cluster init` or joined).
    pub fn has_identity(&self) -> bool {
        self.cluster()
            .join(ollamamax_io::cluster::pki::NODE_CERT_FILE)
            .is_file()
    }

    /// Whether this node holds the CA key (it can admit joiners).
    pub fn has_ca_key(&self) -> bool {
        self.cluster()
            .join(ollamamax_io::cluster::pki::CA_KEY_FILE)
            .is_file()
    }
}
