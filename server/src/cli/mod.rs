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
#[command(name = "ollamamax", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the server.
    #[command(alias = "start")]
    Serve,
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

/// Runs a client command.
pub async fn run_client(command: Command) -> anyhow::Result<()> {
    let client = client::Client::from_env()?;
    match command {
        Command::Serve => unreachable!("serve is handled by main"),
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
