//! The `hearth` command line: [`Cli`] parsed by clap, [`run`] dispatching
//! each command to its module.
//!
//! - `args`: the clap types ([`Cli`], [`Command`], subcommands, flags);
//! - `plugin`: `hearth plugin …`;
//! - `registry`: `hearth registry …` (publishing);
//! - `model`: `hearth model …` and `hearth bench`;
//! - `generate`: `hearth run` and `hearth chat`, and what the model
//!   commands do with a model file;
//! - `remote`: `run`/`chat --url`, talking to a running server;
//! - `serve`: `hearth serve`;
//! - `mcp`: `hearth mcp`, the plugins' tools over MCP on stdio;
//! - `render`: terminal-safe rendering of what plugins control.

use crate::home::Home;

mod args;
mod generate;
mod mcp;
mod model;
mod plugin;
mod registry;
mod remote;
mod render;
mod serve;

pub use args::{
    BenchCommand, Cli, Command, Format, LogFormat, LogTarget, McpArgs, ModelCommand, PluginCommand,
    RegistryCommand, ServeArgs,
};
pub use generate::{AssistantArgs, ModelArgs, SamplingArgs};
pub use render::{json_for_terminal, render_check, render_invoke_error, render_list};

/// Runs a parsed command line; returns the process exit code.
pub async fn run(cli: Cli) -> anyhow::Result<i32> {
    let home = Home::from_env()?;
    match cli.command {
        Command::Plugin(command) => plugin::plugin(home, command).await,
        Command::Registry(command) => registry::registry(&home, command),
        Command::Model(command) => model::model(home, command).await,
        Command::Bench(command) => model::bench(home, command).await,
        Command::Run {
            prompt,
            model,
            sampling,
            assistant,
        } => generate::run_once(&home, &model, &sampling, &assistant, &prompt).await,
        Command::Serve(args) => serve::serve(home, args).await,
        Command::Health { addr, timeout } => {
            serve::health(addr, std::time::Duration::from_secs(timeout.max(1)))
        }
        Command::Mcp(args) => mcp::mcp(home, args).await,
        Command::Chat {
            model,
            sampling,
            assistant,
        } => generate::chat(&home, &model, &sampling, &assistant).await,
    }
}
