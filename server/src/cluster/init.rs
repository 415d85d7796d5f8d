//! `ollamamax cluster init`: a new cluster's CA and this node's identity in the data directory, and a join
//! token for the next nodes (k3s style: the token names the CA's fingerprint, which a joiner checks before it
//! sends the secret).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ollamamax_io::cluster::{ClusterCa, JoinToken, TokenPolicy, TokenStore};

use super::admit::{now_unix_s, random_node_id};
use super::paths::DataPaths;

/// Largest tokens file read.
const TOKENS_FILE_BYTES_MAX: u64 = 1 << 20;

/// Creates the cluster and returns the first join token.
pub fn init(paths: &DataPaths, ttl: Option<Duration>, single_use: bool) -> Result<JoinToken> {
    if paths.has_identity() {
        bail!(
            "this node already belongs to a cluster (its identity is in {}); remove that directory to start over",
            paths.cluster().display()
        );
    }
    let dir = paths.cluster();
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let ca = ClusterCa::create().context("cannot create the cluster CA")?;
    let node = random_node_id().context("cannot draw a node id")?;
    let identity = ca
        .issue_identity(node)
        .context("cannot issue this node's certificate")?;
    ca.save(&dir).context("cannot save the cluster CA")?;
    identity
        .save(&dir)
        .context("cannot save this node's identity")?;
    let mut tokens = TokenStore::new();
    let token = issue(&mut tokens, &ca, ttl, single_use)?;
    save_tokens(&paths.tokens(), &tokens)?;
    Ok(token)
}

/// Issues one more token on a node that holds the CA.
pub fn create_token(
    paths: &DataPaths,
    ttl: Option<Duration>,
    single_use: bool,
) -> Result<JoinToken> {
    if !paths.has_ca_key() {
        bail!(
            "this node does not hold the cluster CA; create tokens on the node that ran `cluster init`"
        );
    }
    let ca = ClusterCa::load(&paths.cluster()).context("cannot read the cluster CA")?;
    let mut tokens = load_tokens(&paths.tokens())?;
    let token = issue(&mut tokens, &ca, ttl, single_use)?;
    save_tokens(&paths.tokens(), &tokens)?;
    Ok(token)
}

fn issue(
    tokens: &mut TokenStore,
    ca: &ClusterCa,
    ttl: Option<Duration>,
    single_use: bool,
) -> Result<JoinToken> {
    let now = now_unix_s();
    let policy = TokenPolicy {
        expires_at_unix_s: ttl.map(|ttl| now.saturating_add(ttl.as_secs())),
        single_use,
    };
    tokens
        .issue(ca.fingerprint(), policy, now)
        .context("cannot issue a join token")
}

/// Reads the tokens file (an empty store if there is none).
pub fn load_tokens(file: &Path) -> Result<TokenStore> {
    match std::fs::metadata(file) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(TokenStore::new()),
        Err(error) => return Err(error).context("cannot read the join tokens"),
        Ok(metadata) if metadata.len() > TOKENS_FILE_BYTES_MAX => {
            bail!("the join tokens file is too large")
        }
        Ok(_) => {}
    }
    let text = std::fs::read(file).context("cannot read the join tokens")?;
    serde_json::from_slice(&text).context("the join tokens file is corrupt")
}

/// Writes the tokens file atomically, readable by this user only (it holds hashes, but of secrets).
pub fn save_tokens(file: &Path, tokens: &TokenStore) -> Result<()> {
    let dir = file.parent().context("the tokens file has no directory")?;
    let mut temp = tempfile::NamedTempFile::new_in(dir).context("cannot write the join tokens")?;
    serde_json::to_writer(temp.as_file_mut(), tokens).context("cannot write the join tokens")?;
    temp.as_file()
        .sync_all()
        .context("cannot write the join tokens")?;
    temp.persist(file)
        .map_err(|error| error.error)
        .context("cannot write the join tokens")?;
    Ok(())
}
