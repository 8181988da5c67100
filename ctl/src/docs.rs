//! Man pages and shell completions, generated from the clap definition so
//! they never drift from the real command line.

use std::path::Path;

use anyhow::{Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::Cli;

pub fn generate(dir: &Path) -> Result<()> {
    let man_dir = dir.join("man");
    let completion_dir = dir.join("completions");
    for folder in [&man_dir, &completion_dir] {
        std::fs::create_dir_all(folder)
            .with_context(|| format!("cannot create {}", folder.display()))?;
    }
    let command = Cli::command();
    clap_mangen::generate_to(command.clone(), &man_dir)
        .with_context(|| format!("cannot write man pages to {}", man_dir.display()))?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut command.clone(), "mesbakctl", &completion_dir)
            .with_context(|| format!("cannot write {shell} completions"))?;
    }
    Ok(())
}
