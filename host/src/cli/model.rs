//! `hearth model …` (pull, list, info, quantize) and `hearth bench model`;
//! what they do with a model file is in `generate.rs`.

use super::args::{BenchCommand, Format, ModelCommand};
use super::generate;
use crate::home::Home;

/// Runs a `hearth model` command; returns the process exit code.
pub(super) async fn model(home: Home, command: ModelCommand) -> anyhow::Result<i32> {
    match command {
        ModelCommand::Pull { spec, to } => {
            let spec = crate::engine::provision::Spec::parse(&spec).map_err(anyhow::Error::msg)?;
            let path =
                tokio::task::spawn_blocking(move || generate::pull_with_bar(&home, &spec, &to))
                    .await??;
            println!("{}", path.display());
            Ok(0)
        }
        ModelCommand::Info { path, format } => generate::info(&path, format == Format::Json),
        ModelCommand::Quantize { input, output, to } => {
            tokio::task::spawn_blocking(move || generate::quantize(&input, &output, &to)).await?
        }
        ModelCommand::List => {
            for (path, size) in crate::engine::provision::list(&home)? {
                let summary = match crate::engine::ModelFile::open(&path) {
                    Ok(file) => {
                        let i = file.info();
                        format!(
                            "{} {:.0}M {} ctx {} template {} tokenizer {}",
                            i.architecture,
                            i.parameters as f64 / 1e6,
                            i.quantization,
                            i.context_length,
                            if i.chat_template { "yes" } else { "no" },
                            i.tokenizer
                        )
                    }
                    Err(e) => format!("unreadable: {e}"),
                };
                println!("{}  {:.1} MB  {summary}", path.display(), size as f64 / 1e6);
            }
            Ok(0)
        }
    }
}

/// Runs a `hearth bench` command; returns the process exit code.
pub(super) async fn bench(home: Home, command: BenchCommand) -> anyhow::Result<i32> {
    match command {
        BenchCommand::Model {
            model,
            prompt_tokens,
            gen_tokens,
            depth,
            reps,
            format,
        } => {
            tokio::task::spawn_blocking(move || {
                generate::bench(
                    &home,
                    &model,
                    generate::BenchSizes {
                        prompt: prompt_tokens,
                        generate: gen_tokens,
                        depth,
                    },
                    reps,
                    format == Format::Json,
                )
            })
            .await?
        }
    }
}
