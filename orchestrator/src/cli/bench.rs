//! `sagaflow bench`: the end-to-end load generator.

use clap::Args;

#[derive(Debug, Args)]
pub struct BenchArgs {}

pub async fn run(_args: BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("sagaflow bench is being written")
}
