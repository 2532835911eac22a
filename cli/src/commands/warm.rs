//! `cachectl warm -- go build ./...`: lands what the last run of that go command used into the
//! local tier, started by CI before checkout and toolchain set-up finish; the go command's
//! bridge joins it (see `cached_gocacheprog::warm`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cached_client::connect::ConnectOptions;
use cached_client::error::{ClientError, Result};
use cached_gocacheprog::command::TierArgs;
use cached_gocacheprog::session::{self, KeyInputs};
use cached_gocacheprog::warm::{self, WarmOptions};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    tier: TierArgs,
    /// Module path of the code the go command will build, for when its go.mod is not checked
    /// out yet; this directory is then taken as the module's root.
    #[arg(long)]
    module: Option<String>,
    /// A `go env` value that salts ActionIDs (GOVERSION, GOOS, GOARCH, GOFLAGS, CGO_ENABLED,
    /// GOAMD64, GOEXPERIMENT, ...), as NAME=VALUE, for when the toolchain is not set up yet;
    /// give every non-empty one. Without any, they are read from `go env`.
    #[arg(long = "go-env", value_name = "NAME=VALUE")]
    go_env: Vec<String>,
    /// The go command to read `go env` from.
    #[arg(long, default_value = "go")]
    go: PathBuf,
    /// The go command line the warm prepares for, as CI will run it in this directory
    /// (`go build ./...`; the leading `go` may be left out).
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true, value_name = "GO COMMAND")]
    command: Vec<String>,
}

pub async fn run(server: &str, connect: &ConnectOptions, args: Args) -> Result<()> {
    let keys = key_inputs(&args)?.keys();
    let options = WarmOptions {
        dir: args.tier.dir()?,
        max_size: args.tier.max_size,
        server: server.to_owned(),
        connect: connect.clone(),
        namespace: args.tier.namespace,
        timeout: args.tier.timeout,
        preload_max: args.tier.preload_max,
        keys,
    };
    let summary = warm::run(options)
        .await
        .map_err(|err| ClientError::Local { what: "cachectl warm".into(), source: err.into() })?;
    eprintln!("{summary}");
    Ok(())
}

/// What the bridge of that go command, run here, will key its session lists by.
fn key_inputs(args: &Args) -> Result<KeyInputs> {
    let here = std::env::current_dir()
        .map_err(|err| ClientError::Local { what: "the working directory".into(), source: err.into() })?;
    let mut command = args.command.clone();
    if !command[0].starts_with("go") {
        command.insert(0, "go".into());
    }
    // The go command runs in its -C directory, and so does the bridge it starts.
    let here = match chdir_of(&command) {
        Some(dir) => here.join(dir),
        None => here,
    };
    let root = match &args.module {
        Some(module) => Some((here.clone(), module.clone())),
        None => session::module_root(&here),
    };
    if root.is_none() {
        return Err(ClientError::Usage(format!(
            "no go.mod at or above {}; pass --module with the module's path (--module '' for a go \
             command outside any module, such as `go build cmd/go`)",
            here.display()
        )));
    }
    let env = if args.go_env.is_empty() { go_env(&args.go)? } else { parse_go_env(&args.go_env)? };
    Ok(KeyInputs::for_command(&args.tier.namespace, Some(&command), Some(&here), root, env))
}

/// The directory of `go -C dir ...`, given before the subcommand.
fn chdir_of(command: &[String]) -> Option<&str> {
    let mut args = command.iter().skip(1);
    while let Some(arg) = args.next() {
        // The first argument that is no flag is the subcommand.
        let flag = arg.strip_prefix('-')?.trim_start_matches('-');
        if flag == "C" {
            return args.next().map(String::as_str);
        }
        if let Some(dir) = flag.strip_prefix("C=") {
            return Some(dir);
        }
    }
    None
}

fn parse_go_env(pairs: &[String]) -> Result<BTreeMap<String, String>> {
    pairs
        .iter()
        .map(|pair| {
            let (name, value) = pair
                .split_once('=')
                .ok_or_else(|| ClientError::Usage(format!("--go-env {pair:?}: expected NAME=VALUE")))?;
            if !session::KEY_ENV.contains(&name) {
                let known = session::KEY_ENV.join(", ");
                return Err(ClientError::Usage(format!("--go-env {name}: not one of {known}")));
            }
            Ok((name.to_owned(), value.to_owned()))
        })
        .collect()
}

/// The values the go command will give its cache program, from `go env -json`.
fn go_env(go: &Path) -> Result<BTreeMap<String, String>> {
    let failed = |what: String| {
        ClientError::Usage(format!(
            "{what}; set the toolchain up first, or pass its values with --go-env (see `cachectl warm --help`)"
        ))
    };
    let output = std::process::Command::new(go)
        .arg("env")
        .arg("-json")
        .args(session::KEY_ENV)
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|err| failed(format!("cannot run {} env: {err}", go.display())))?;
    if !output.status.success() {
        return Err(failed(format!("{} env failed ({})", go.display(), output.status)));
    }
    serde_json::from_slice(&output.stdout).map_err(|err| failed(format!("{} env -json: {err}", go.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_go_command_runs_in_its_dash_c_directory() {
        let line = |args: &[&str]| args.iter().map(|arg| (*arg).to_owned()).collect::<Vec<_>>();
        assert_eq!(chdir_of(&line(&["go", "-C", "sub", "build", "./..."])), Some("sub"));
        assert_eq!(chdir_of(&line(&["go", "--C=sub/dir", "test"])), Some("sub/dir"));
        assert_eq!(chdir_of(&line(&["go", "build", "-C", "x"])), None, "after the subcommand it is not go's");
        assert_eq!(chdir_of(&line(&["go", "build", "./..."])), None);
    }
}
