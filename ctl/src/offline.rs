//! The tools that work without the agent: `decrypt` and `keygen`.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, IsTerminal, Read, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use mesbak_format::{Decryptor, FormatError, Key, KeyError};

use crate::cli::DEFAULT_KEY_FILE;

/// The key for offline work: `--key-file`, else `BACKUP_ENCRYPTION_KEY`,
/// else the default key file.
pub fn load_key(key_file: Option<&Path>) -> Result<Key> {
    let key = match key_file {
        Some(path) => Key::from_file(path),
        None => match Key::from_env() {
            Some(key) => key,
            None => Key::from_file(Path::new(DEFAULT_KEY_FILE)),
        },
    };
    key.map_err(|err| match err {
        // Recovering: only the key the backup was made with can read it.
        KeyError::Missing(_) => crate::output::named(
            "KeyMissing",
            format!(
                "{err}; decrypting needs the key this backup was made with: find it (the copy kept away from the server, or BACKUP_ENCRYPTION_KEY in the stack's .env) and pass it with --key-file. A new key cannot read existing backups"
            ),
        ),
        other => other.into(),
    })
}

pub fn decrypt(file: &Path, key_file: Option<&Path>, output: Option<&Path>) -> Result<()> {
    let input: Box<dyn Read> = if file == Path::new("-") {
        Box::new(io::stdin().lock())
    } else {
        Box::new(File::open(file).with_context(|| format!("cannot open {}", file.display()))?)
    };
    let input = BufReader::with_capacity(256 * 1024, input);
    // The key is checked against the header before any output is created.
    let key = load_key(key_file)?;
    let mut decryptor = Decryptor::new(input, &key)?;
    match output {
        None => {
            let stdout = io::stdout();
            if stdout.is_terminal() {
                bail!(
                    "the decrypted backup is compressed binary data; pipe it (for example into `gunzip | psql`, or `zstd -d | psql` for a .zst.enc file) or write it to a file with -o FILE"
                );
            }
            copy(&mut decryptor, &mut BufWriter::new(stdout.lock()))
        }
        Some(path) => decrypt_to_file(&mut decryptor, path),
    }
}

/// Writes to a hidden temporary file next to `path` and gives it its name
/// only when every chunk authenticated, never replacing an existing file.
fn decrypt_to_file(decryptor: &mut impl Read, path: &Path) -> Result<()> {
    if path.symlink_metadata().is_ok() {
        bail!(
            "{} already exists; choose another output file or remove it first",
            path.display()
        );
    }
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .with_context(|| format!("{} is not a file name", path.display()))?;
    let mut temp = tempfile::Builder::new()
        .prefix(&format!(".{}.", name.to_string_lossy()))
        .suffix(".partial")
        .tempfile_in(&dir)
        .with_context(|| format!("cannot create a file in {}", dir.display()))?;
    {
        let mut writer = BufWriter::new(temp.as_file_mut());
        copy(decryptor, &mut writer)?;
        writer
            .into_inner()
            .map_err(|e| e.into_error())
            .and_then(|file| file.sync_all())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    temp.persist_noclobber(path)
        .map_err(|e| e.error)
        .with_context(|| format!("cannot create {}", path.display()))?;
    Ok(())
}

fn copy(reader: &mut impl Read, writer: &mut impl Write) -> Result<()> {
    match io::copy(reader, writer) {
        Ok(_) => writer.flush().context("cannot write the output"),
        Err(err) => match FormatError::from_io_owned(err) {
            // A closed pipe (`| head`) is the reader's choice, not a failure.
            FormatError::Io(err) if err.kind() == io::ErrorKind::BrokenPipe => Ok(()),
            FormatError::Io(err) => Err(err).context("cannot read or write the backup"),
            format_error => Err(format_error.into()),
        },
    }
}

pub fn keygen(output: &Path) -> Result<()> {
    if output == Path::new("-") {
        io::stdout()
            .write_all(Key::generate_text().as_bytes())
            .context("cannot write the key")?;
        return Ok(());
    }
    if let Some(parent) = output.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
    }
    Key::generate_file(output)?;
    crate::errln!(
        "Created {} (mode 0600). Keep a copy somewhere safe away from this server: without it no backup can be restored.",
        output.display()
    );
    Ok(())
}
