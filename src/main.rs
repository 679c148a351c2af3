use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    tracely::cli::main().await
}
