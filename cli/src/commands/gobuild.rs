//! `cachectl go build` and `cachectl go test`: the go command behind the cache.

use std::io::Write;
use std::path::PathBuf;

use cached_client::connect::{Client, ConnectOptions};
use cached_client::error::{ClientError, Result};
use cached_gobuild::exec::{Exec, Invocation, Processes, Sink};
use cached_gobuild::gocache::{self, GoCache};
use cached_gobuild::{self as gobuild, BuildOptions, BuildRequest};

/// Connects, or says once that the server is unreachable and goes on without it.
async fn connect(server: &str, connect: &ConnectOptions) -> Result<Option<Client>> {
    match Client::connect(server, connect).await {
        Ok(client) => Ok(Some(client)),
        Err(ClientError::Unreachable { reason, .. }) => {
            eprintln!(
                "cachectl: warning: cached at {server} is unreachable ({reason}); running go without the cache"
            );
            Ok(None)
        }
        Err(err) => Err(err),
    }
}

fn log_line(line: &str) {
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "{line}");
}

/// Runs go build through the whole-build cache; returns go's exit code.
pub async fn build(
    server: &str,
    options: &ConnectOptions,
    namespace: String,
    read_only: bool,
    args: Vec<String>,
) -> Result<i32> {
    let dir = std::env::current_dir().map_err(ClientError::file("."))?;
    let (go_flags, packages) = match gobuild::flags::parse_command_line(&args) {
        Ok(line) => {
            let split = args.len() - line.packages.len();
            (args[..split].to_vec(), args[split..].to_vec())
        }
        // The library says why it does not cache, and runs go with the arguments as they are.
        Err(_) => (args, Vec::new()),
    };
    // The repository: modules in it may share headers above their go.mod files.
    let source_tree = gobuild::inputs::vcs_root(&dir).map(|(root, _)| root);
    let request = BuildRequest {
        module_dir: dir,
        packages,
        output: None,
        go_flags,
        env: Vec::new(),
        namespace,
        source_tree,
        confine_to: Vec::new(),
    };
    let client = connect(server, options).await?;
    let build_options = BuildOptions {
        inherit_stdio: true,
        bridge_connect: options.clone(),
        read_only,
        ..BuildOptions::default()
    };
    let outcome = gobuild::build_with(client.as_ref(), &request, &build_options, &mut log_line).await?;
    Ok(outcome.exit_code)
}

/// Runs go test with the GOCACHEPROG bridge pointed at the server, as the files the tests'
/// packages include allow (see `gobuild::gocache`); returns go's exit code.
pub async fn test(
    server: &str,
    options: &ConnectOptions,
    namespace: String,
    read_only: bool,
    args: Vec<String>,
) -> Result<i32> {
    let dir = std::env::current_dir().map_err(ClientError::file("."))?;
    let client = connect(server, options).await?;
    let tree = gobuild::inputs::vcs_root(&dir).map(|(root, _)| root);
    let inherited = std::env::var("GOCACHEPROG").is_ok_and(|program| !program.is_empty());
    let go_cache = gocache::for_test(&Processes::default(), &dir, &args, tree.as_deref())
        .await
        .with_program(client.is_some() || inherited);
    let mut invocation = Invocation { program: PathBuf::from("go"), dir, ..Invocation::default() };
    invocation.args.push("test".to_owned());
    invocation.args.extend(args);
    if go_cache == GoCache::Off {
        eprintln!(
            "cachectl: compiling every package without go's shared cache: which files the tests \
             read that go's cache does not key is not known"
        );
        let at = 1 + gobuild::build::leading_chdir(&invocation.args[1..]);
        invocation.args.insert(at, "-a".to_owned());
    }
    let bridge = client.as_ref().map(|client| {
        gobuild::bridge_env(&client.server, &namespace, gobuild::default_gocacheprog(), options)
    });
    invocation.env_remove = go_cache.apply(bridge, &mut invocation.env);
    if go_cache == GoCache::Off {
        let go = invocation.program.clone();
        gocache::keep_off(&Processes::default(), &go, &mut invocation).await?;
    } else if client.is_none() && !inherited {
        gocache::without_own_index(&Processes::default(), &mut invocation);
    }
    if read_only {
        // Whatever bridge runs, the wrapper's or one the environment names.
        invocation.env.push((gobuild::build::READ_ONLY_VAR.to_owned(), "true".to_owned()));
    }
    Processes::default().stream(&invocation, Sink::Inherit).await.map_err(ClientError::run("go"))
}
