//! Running Nix's own commands (`nix path-info`, `nix-store --check-validity`, …): the
//! client asks Nix about the store rather than reading its database.

use std::process::Command;

use anyhow::{bail, Context as _, Result};

/// `program args…`'s stdout; a failure is an error carrying the last line Nix printed
/// on stderr (its error message, after any warnings).
pub fn stdout<I, S>(program: &str, args: I) -> Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut command = Command::new(program);
    if program == "nix" {
        command.args(["--extra-experimental-features", "nix-command"]);
    }
    let output = command
        .args(args)
        .output()
        .with_context(|| format!("running {program} (is Nix installed?)"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let line = stderr.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
        bail!("{program} failed: {}", line.trim());
    }
    String::from_utf8(output.stdout).with_context(|| format!("{program} printed non-UTF-8"))
}
