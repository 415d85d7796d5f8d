//! The command line, mirroring `ollama`: `serve` runs the server; every other command talks to one at
//! `OLLAMA_HOST`.

pub mod bench;
pub mod client;
pub mod create;
pub mod models;
pub mod progress;
pub mod run;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// OllamaMax: a distributed, Ollama-compatible LLM inference cluster.
#[derive(Debug, Parser)]
#[command(
    name = "ollamamax",
    version,
    about,
    long_about = None,
    after_help = "Environment:\n  OLLAMA_HOST         the server to talk to (default 127.0.0.1:11434)\n  \
                  OLLAMAMAX_API_KEY   sent as `Authorization: Bearer <key>` when set (see `ollamamax keys create`)"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the server.
    #[command(alias = "start")]
    Serve(ServeArgs),
    /// Manage the cluster this node belongs to.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Manage the API keys clients send as `Authorization: Bearer <key>` (a running server sees changes at once).
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Create a model from a Modelfile.
    Create {
        /// Name of the new model.
        model: String,
        /// The Modelfile (default: ./Modelfile).
        #[arg(short, long)]
        file: Option<PathBuf>,
        /// Quantize the model to this type (e.g. q8_0).
        #[arg(short, long)]
        quantize: Option<String>,
    },
    /// Show information for a model.
    Show {
        model: String,
        /// Show the Modelfile.
        #[arg(long, group = "part")]
        modelfile: bool,
        /// Show the parameters.
        #[arg(long, group = "part")]
        parameters: bool,
        /// Show the template.
        #[arg(long, group = "part")]
        template: bool,
        /// Show the system message.
        #[arg(long, group = "part")]
        system: bool,
        /// Show the license.
        #[arg(long, group = "part")]
        license: bool,
    },
    /// Run a model: answer PROMPT, or chat interactively.
    Run {
        model: String,
        /// The prompt (also read from a piped stdin).
        prompt: Vec<String>,
        /// Print timings after each answer.
        #[arg(long)]
        verbose: bool,
    },
    /// Stop a running model.
    Stop { model: String },
    /// Pull a model from a registry.
    Pull {
        model: String,
        /// Allow http and self-signed registries.
        #[arg(long)]
        insecure: bool,
    },
    /// Push a model to a registry.
    Push {
        model: String,
        /// Allow http and self-signed registries.
        #[arg(long)]
        insecure: bool,
    },
    /// List models.
    #[command(alias = "ls")]
    List,
    /// List running models.
    Ps,
    /// Copy a model.
    Cp { source: String, destination: String },
    /// Remove models.
    Rm {
        #[arg(required = true)]
        models: Vec<String>,
    },
    /// Measure a running server: latency percentiles and throughput under concurrent load.
    Bench {
        /// The model.
        #[arg(long, short)]
        model: String,
        /// Requests in flight at once.
        #[arg(long, short, default_value_t = 1)]
        concurrency: u32,
        /// Requests in all.
        #[arg(long, short = 'n', default_value_t = 16)]
        requests: u32,
        /// Tokens each request generates.
        #[arg(long, default_value_t = 128)]
        num_predict: u32,
        /// Requests run before measuring.
        #[arg(long, default_value_t = 1)]
        warmup: u32,
        /// The prompt (raw, no template).
        #[arg(
            long,
            default_value = "Write a long story about a lighthouse keeper who finds a message in a bottle."
        )]
        prompt: String,
    },
}

/// `serve`'s cluster flags (a node with no cluster identity and no `--join` is a single server).
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Join the cluster of the node whose cluster endpoint is HOST:PORT (needs --token).
    #[arg(long, requires = "token")]
    pub join: Option<String>,
    /// The join token `ollamamax cluster init` printed.
    #[arg(long, env = "OLLAMAMAX_TOKEN")]
    pub token: Option<String>,
    /// The data directory (cluster identity, Raft log, API keys); default $OLLAMAMAX_DATA or ~/.ollamamax.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Where the cluster endpoint (QUIC) listens; default the API's host with port 11435.
    #[arg(long, env = "OLLAMAMAX_CLUSTER_LISTEN")]
    pub cluster_listen: Option<String>,
    /// The address other nodes dial for this node's cluster endpoint; default the listen address.
    #[arg(long, env = "OLLAMAMAX_CLUSTER_ADVERTISE")]
    pub cluster_advertise: Option<String>,
    /// Allow listening on a non-loopback address with no API key (the API is then open to anyone who can
    /// reach it; logged as a warning). Without it such a bind refuses to start until `ollamamax keys create`.
    #[arg(long, env = "OLLAMAMAX_INSECURE_NO_AUTH", value_parser = clap::builder::BoolishValueParser::new(), default_value_t = false, num_args = 0, default_missing_value = "true")]
    pub insecure_no_auth: bool,
    /// Log format on stderr: `text` for people, `json` (one object a line) for log collectors.
    #[arg(long, env = "OLLAMAMAX_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

/// Where the cluster files are and what the new join token allows.
#[derive(Debug, Clone, clap::Args)]
pub struct TokenArgs {
    /// The data directory; default $OLLAMAMAX_DATA or ~/.ollamamax.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// How long the token admits joiners (Go duration, e.g. 24h; 0 = never expires).
    #[arg(long, default_value = "24h")]
    pub ttl: String,
    /// The token admits one node only.
    #[arg(long)]
    pub single_use: bool,
}

/// `cluster` subcommands.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Create a new cluster on this node: its CA, this node's identity, and a join token.
    Init(TokenArgs),
    /// Print a new join token (on the node that ran `cluster init`; a running server sees it at once).
    Token(TokenArgs),
    /// Members, roles, leader, term and models of the cluster, from the server at OLLAMA_HOST.
    Status {
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Change a cluster-wide setting through the server at OLLAMA_HOST.
    #[command(subcommand)]
    Set(ClusterSetting),
    /// Remove a member for good (through the server at OLLAMA_HOST, any member): its copies are re-made on the
    /// others; it can come back only by joining again with a fresh token.
    Remove {
        /// The member: its id (as `cluster status` lists it) or its API or cluster address.
        node: String,
        /// Remove it even if a model loses its only copy.
        #[arg(long)]
        force: bool,
    },
    /// Make the server at OLLAMA_HOST leave its cluster: it drains, is removed, and shuts down; its next start
    /// is a single server.
    Leave {
        /// Longest wait, in seconds, for its running requests and for its copies to be re-made elsewhere.
        #[arg(long, default_value_t = 60)]
        drain: u64,
        /// Leave even if a model loses its only copy.
        #[arg(long)]
        force: bool,
    },
}

/// `keys` subcommands; they edit `<data-dir>/keys.json` directly, no server needed.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key and print its secret (the only time it is shown; only its SHA-256 is stored).
    Create {
        /// `inference` (run models, list and show them) or `admin` (everything, including create, pull, push,
        /// copy, delete and cluster settings).
        #[arg(long, value_enum)]
        role: crate::auth::Role,
        /// A label shown by `keys list`.
        #[arg(long)]
        name: Option<String>,
        /// The data directory; default $OLLAMAMAX_DATA or ~/.ollamamax.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// List the keys: ids, roles, names, creation times (never secrets).
    #[command(alias = "ls")]
    List {
        /// The data directory; default $OLLAMAMAX_DATA or ~/.ollamamax.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Delete a key by its id (clients using it are refused within a second).
    #[command(alias = "rm")]
    Delete {
        /// The key's id, as `keys list` shows it.
        id: String,
        /// The data directory; default $OLLAMAMAX_DATA or ~/.ollamamax.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

/// `cluster set` settings.
#[derive(Debug, Subcommand)]
pub enum ClusterSetting {
    /// How many nodes hold a copy of each model's blobs (1 to 9; default 2).
    Replication {
        /// The new replication factor.
        factor: u32,
    },
}

/// Runs a client command.
pub async fn run_client(command: Command) -> anyhow::Result<()> {
    if let Command::Keys(command) = command {
        return keys(command);
    }
    let client = client::Client::from_env()?;
    match command {
        Command::Serve(_) => unreachable!("serve is handled by main"),
        Command::Keys(_) => unreachable!("handled above"),
        Command::Cluster(command) => cluster(&client, command).await,
        Command::Create {
            model,
            file,
            quantize,
        } => create::create(&client, &model, file.as_deref(), quantize.as_deref()).await,
        Command::Show {
            model,
            modelfile,
            parameters,
            template,
            system,
            license,
        } => {
            use models::ShowPart;
            let part = match (modelfile, parameters, template, system, license) {
                (true, ..) => ShowPart::Modelfile,
                (_, true, ..) => ShowPart::Parameters,
                (_, _, true, ..) => ShowPart::Template,
                (_, _, _, true, _) => ShowPart::System,
                (.., true) => ShowPart::License,
                _ => ShowPart::Info,
            };
            models::show(&client, &model, part).await
        }
        Command::Run {
            model,
            prompt,
            verbose,
        } => run::run(&client, &model, &prompt, verbose).await,
        Command::Stop { model } => models::stop(&client, &model).await,
        Command::Pull { model, insecure } => models::pull(&client, &model, insecure).await,
        Command::Push { model, insecure } => models::push(&client, &model, insecure).await,
        Command::List => models::list(&client).await,
        Command::Ps => models::ps(&client).await,
        Command::Cp {
            source,
            destination,
        } => models::copy(&client, &source, &destination).await,
        Command::Rm { models: names } => models::remove(&client, &names).await,
        Command::Bench {
            model,
            concurrency,
            requests,
            num_predict,
            warmup,
            prompt,
        } => {
            bench::bench(
                &client,
                bench::BenchOptions {
                    model,
                    concurrency,
                    requests,
                    prompt,
                    num_predict,
                    warmup,
                },
            )
            .await
        }
    }
}

fn keys(command: KeysCommand) -> anyhow::Result<()> {
    use crate::auth::keys;
    use crate::cluster::paths::DataPaths;
    let root = |dir: Option<PathBuf>| dir.unwrap_or_else(DataPaths::default_root);
    match command {
        KeysCommand::Create {
            role,
            name,
            data_dir,
        } => {
            let created = keys::create(&root(data_dir), role, name.as_deref())?;
            eprintln!(
                "Created {} key {}. Its secret follows; it is not stored and is shown only now:",
                role.as_str(),
                created.record.id
            );
            println!("{}", created.secret);
            Ok(())
        }
        KeysCommand::List { data_dir } => {
            let keys = keys::load(&keys::keys_file(&root(data_dir)))?;
            println!("{:<10} {:<10} {:<24} NAME", "ID", "ROLE", "CREATED");
            for key in keys {
                println!(
                    "{:<10} {:<10} {:<24} {}",
                    key.id,
                    key.role.as_str(),
                    key.created,
                    key.name.unwrap_or_default()
                );
            }
            Ok(())
        }
        KeysCommand::Delete { id, data_dir } => {
            let removed = keys::delete(&root(data_dir), &id)?;
            println!("deleted {} key {}", removed.role.as_str(), removed.id);
            Ok(())
        }
    }
}

async fn cluster(client: &client::Client, command: ClusterCommand) -> anyhow::Result<()> {
    use crate::cluster::{init, paths::DataPaths, status};
    let paths = |dir: Option<PathBuf>| DataPaths::new(dir.unwrap_or_else(DataPaths::default_root));
    let ttl = |text: &str| -> anyhow::Result<Option<std::time::Duration>> {
        let ms = crate::duration::parse_go_duration_ms(text)
            .map_err(|problem| anyhow::anyhow!("invalid --ttl {text:?}: {problem}"))?;
        if ms < 0.0 {
            anyhow::bail!("invalid --ttl {text:?}: negative");
        }
        let duration = std::time::Duration::from_millis(ms as u64);
        Ok((!duration.is_zero()).then_some(duration))
    };
    match command {
        ClusterCommand::Init(args) => {
            let token = init::init(&paths(args.data_dir), ttl(&args.ttl)?, args.single_use)?;
            println!("Cluster created. Start this node with `ollamamax serve`; join others with:");
            println!("  ollamamax serve --join <this node's cluster address> --token {token}");
            Ok(())
        }
        ClusterCommand::Token(args) => {
            let token =
                init::create_token(&paths(args.data_dir), ttl(&args.ttl)?, args.single_use)?;
            println!("{token}");
            Ok(())
        }
        ClusterCommand::Status { json } => {
            let value = client.get("/api/cluster").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                let parsed: status::ClusterStatus = serde_json::from_value(value)?;
                print!("{}", status::render(&parsed));
            }
            Ok(())
        }
        ClusterCommand::Set(ClusterSetting::Replication { factor }) => {
            client
                .post(
                    "/api/cluster/replication",
                    &serde_json::json!({ "factor": factor }),
                )
                .await?;
            println!("replication factor set to {factor}");
            Ok(())
        }
        ClusterCommand::Remove { node, force } => {
            let path = format!("/api/cluster/members/{}", path_segment(&node));
            let path = if force {
                format!("{path}?force=true")
            } else {
                path
            };
            client.delete(&path, &serde_json::json!({})).await?;
            println!("removed {node} from the cluster");
            Ok(())
        }
        ClusterCommand::Leave { drain, force } => {
            let body = serde_json::json!({ "drain_s": drain, "force": force });
            client.post("/api/cluster/leave", &body).await?;
            println!("left the cluster; the server is shutting down");
            Ok(())
        }
    }
}

/// `text` as one URL path segment (a cluster address may hold `[`, `]` and `%`).
fn path_segment(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b':' => {
                char::from(byte).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}
