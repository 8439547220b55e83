//! `sagaflow auth`: tokens for the server's `--auth-file`.

use std::io::Read;

use clap::Subcommand;
use sagaflow_server::auth::{MIN_TOKEN_BYTES, hash_token};

#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// Print the SHA-256 of a token (read from standard input) for the auth file's `sha256` field.
    HashToken {
        /// Also make a new random token, print it on standard error and hash it.
        #[arg(long)]
        generate: bool,
    },
}

pub fn run(command: AuthCommand) -> anyhow::Result<()> {
    let AuthCommand::HashToken { generate } = command;
    let token = if generate {
        // Two v4 UUIDs: 244 random bits from the OS generator.
        let token = format!("sf_{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
        eprintln!("token (give it to the caller; it is not stored anywhere): {token}");
        token
    } else {
        // Standard input rather than an argument: an argument would sit in
        // the shell history and the process list.
        let mut text = String::new();
        std::io::stdin().take(64 * 1024).read_to_string(&mut text)?;
        text.trim().to_owned()
    };
    anyhow::ensure!(
        token.len() >= MIN_TOKEN_BYTES,
        "the token is {} bytes; use at least {MIN_TOKEN_BYTES} random bytes (or --generate)",
        token.len()
    );
    outln!("{}", hash_token(&token));
    Ok(())
}
