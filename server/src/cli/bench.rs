//! `ollamamax bench`: a load generator against a running server. Each request streams `/api/generate`; the
//! client records time to first token, the gaps between tokens and the end-to-end time in hdrhistograms, and
//! compares end-to-end time with the engine's own time (prompt eval + eval, as the server reports it) to show
//! what HTTP and scheduling add.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use futures::StreamExt;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use super::client::Client;

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub model: String,
    pub concurrency: u32,
    pub requests: u32,
    pub prompt: String,
    pub num_predict: u32,
    pub warmup: u32,
}

#[derive(Default)]
struct Totals {
    ttft_us: Option<Histogram<u64>>,
    itl_us: Option<Histogram<u64>>,
    e2e_us: Option<Histogram<u64>>,
    tokens: u64,
    engine_ns: u64,
    e2e_ns: u64,
    failures: u32,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")
}

struct Sample {
    ttft: Duration,
    gaps: Vec<Duration>,
    e2e: Duration,
    tokens: u64,
    engine_ns: u64,
}

async fn one(client: &Client, options: &BenchOptions) -> Result<Sample> {
    let request = json!({
        "model": options.model, "prompt": options.prompt, "raw": true,
        "options": { "temperature": 0, "num_predict": options.num_predict },
    });
    let started = Instant::now();
    let mut lines = client.stream("/api/generate", &request).await?;
    let mut ttft = None;
    let mut last = started;
    let mut gaps = Vec::new();
    while let Some(line) = lines.next().await {
        let line = line?;
        let now = Instant::now();
        if line.get("done").and_then(Value::as_bool) == Some(true) {
            let e2e = started.elapsed();
            let count = |key: &str| line.get(key).and_then(Value::as_u64).unwrap_or(0);
            return Ok(Sample {
                ttft: ttft.unwrap_or(e2e),
                gaps,
                e2e,
                tokens: count("eval_count") + 1,
                engine_ns: count("prompt_eval_duration") + count("eval_duration"),
            });
        }
        match ttft {
            None => ttft = Some(now - started),
            Some(_) => gaps.push(now - last),
        }
        last = now;
    }
    bail!("the stream ended without a final line")
}

fn print(name: &str, histogram: &Histogram<u64>) {
    let ms = |us: u64| us as f64 / 1000.0;
    println!(
        "{name:<22} p50 {:>9.2} ms   p90 {:>9.2} ms   p99 {:>9.2} ms   max {:>9.2} ms   (n={})",
        ms(histogram.value_at_quantile(0.50)),
        ms(histogram.value_at_quantile(0.90)),
        ms(histogram.value_at_quantile(0.99)),
        ms(histogram.max()),
        histogram.len()
    );
}

/// Runs the benchmark and prints its numbers.
pub async fn bench(client: &Client, options: BenchOptions) -> Result<()> {
    if options.concurrency == 0 || options.requests == 0 {
        bail!("--concurrency and --requests must be at least 1");
    }
    // Load the model and warm up, outside the measurement.
    client
        .post("/api/generate", &json!({ "model": options.model }))
        .await?;
    for _ in 0..options.warmup {
        one(client, &options).await?;
    }
    let totals = Arc::new(Mutex::new(Totals {
        ttft_us: Some(histogram()),
        itl_us: Some(histogram()),
        e2e_us: Some(histogram()),
        ..Totals::default()
    }));
    let next = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..options.concurrency {
        let (client, options, totals, next) = (
            client.clone(),
            options.clone(),
            totals.clone(),
            next.clone(),
        );
        workers.push(tokio::spawn(async move {
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < options.requests {
                let sample = one(&client, &options).await;
                let mut totals = totals.lock().await;
                match sample {
                    Ok(sample) => {
                        let us = |d: Duration| (d.as_micros() as u64).max(1);
                        let _ = totals.ttft_us.as_mut().map(|h| h.record(us(sample.ttft)));
                        for gap in &sample.gaps {
                            let _ = totals.itl_us.as_mut().map(|h| h.record(us(*gap)));
                        }
                        let _ = totals.e2e_us.as_mut().map(|h| h.record(us(sample.e2e)));
                        totals.tokens += sample.tokens;
                        totals.engine_ns += sample.engine_ns;
                        totals.e2e_ns += sample.e2e.as_nanos() as u64;
                    }
                    Err(error) => {
                        eprintln!("request failed: {error}");
                        totals.failures += 1;
                    }
                }
            }
        }));
    }
    for worker in workers {
        worker.await?;
    }
    let wall = started.elapsed();
    let totals = totals.lock().await;
    println!(
        "model {}  concurrency {}  requests {}  num_predict {}  failures {}",
        options.model, options.concurrency, options.requests, options.num_predict, totals.failures
    );
    print("time to first token", totals.ttft_us.as_ref().expect("set"));
    print("inter-token latency", totals.itl_us.as_ref().expect("set"));
    print("end to end", totals.e2e_us.as_ref().expect("set"));
    println!(
        "throughput             {:.1} generated tokens/s over {:.2} s",
        totals.tokens as f64 / wall.as_secs_f64(),
        wall.as_secs_f64()
    );
    if totals.e2e_ns > 0 {
        let overhead = totals.e2e_ns.saturating_sub(totals.engine_ns) as f64 / totals.e2e_ns as f64;
        println!(
            "overhead               {:.2}% of end-to-end time is outside the engine (HTTP, scheduling, tokenizing)",
            overhead * 100.0
        );
    }
    Ok(())
}
