//! The command line: `serve`, `demo`, `check-config`, `hash-password`,
//! `gen-key`, `users ...` ([`users`]), `store rotate-key`. Exit codes: 0
//! success, 1 runtime failure, 2 no such user (`users` commands), 64
//! (EX_USAGE) for a bad config (including keys that do not fit the
//! database) or bad arguments.

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{self, LoadedConfig};
use crate::gateway::Gateway;
use crate::server::{self, ListenerOptions, Shutdown};

mod users;
use users::UsersCommand;

/// Exit code for a bad config (EX_USAGE from sysexits.h).
pub const EXIT_CONFIG: u8 = 64;

/// Exit code of the `users` commands for an unknown user or factor.
pub use users::EXIT_NO_USER;

/// Portcullis: an MFA gateway in front of web applications.
#[derive(Debug, Parser)]
#[command(name = "portcullis", version, about)]
pub struct Cli {
    /// The config file, before or after the command (`serve`, `check-config`,
    /// `users`, `store`); alone, `portcullis --config FILE` serves.
    #[arg(long, global = true, env = "PORTCULLIS_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway.
    Serve,
    /// Run the whole flow locally: the gateway in front of a built-in echo app.
    Demo {
        /// Main listener address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Admin listener address.
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin_listen: std::net::SocketAddr,
        /// Keep state in memory instead of SQLite in a temporary folder.
        #[arg(long)]
        memory: bool,
    },
    /// Load and validate a config; print every problem and warning.
    CheckConfig,
    /// Read a password from stdin and print its argon2id hash.
    HashPassword,
    /// Print a new random 32-byte key, base64.
    GenKey,
    /// Manage users.
    Users {
        #[command(subcommand)]
        command: UsersCommand,
    },
    /// Manage the store.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
}

#[derive(Debug, Subcommand)]
enum StoreCommand {
    /// Re-encrypt every stored secret under the first key of `store.encryption_keys`
    /// (safe while gateways keep running; each must already have that key).
    RotateKey,
}

/// Runs the command line; returns the process exit code.
pub fn main() -> ExitCode {
    use clap::{CommandFactory as _, FromArgMatches as _};
    let parsed = Cli::command()
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m).map(|cli| (cli, m)));
    let cli = match parsed {
        Ok((cli, matches)) => {
            // `--config` typed for a command that reads none is a mistake
            // worth saying (from PORTCULLIS_CONFIG it is just ignored).
            if let Some((name, sub)) = matches.subcommand()
                && ["demo", "hash-password", "gen-key"].contains(&name)
                && sub.value_source("config") == Some(clap::parser::ValueSource::CommandLine)
            {
                eprintln!("error: `portcullis {name}` reads no config; leave out --config");
                return ExitCode::from(EXIT_CONFIG);
            }
            cli
        }
        // Help and version go to stdout with 0; bad arguments exit 64 (not clap's 2).
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config = cli.config.as_deref();
    match cli.command {
        Some(Command::Serve) => with_config(config, "serve", |path| runtime.block_on(serve_file(path))),
        None if config.is_some() => with_config(config, "serve", |path| runtime.block_on(serve_file(path))),
        None => {
            eprintln!(
                "error: no command; try `portcullis demo` or `portcullis serve --config FILE` (see --help)"
            );
            ExitCode::from(EXIT_CONFIG)
        }
        Some(Command::Demo {
            listen,
            admin_listen,
            memory,
        }) => runtime.block_on(async {
            match crate::demo::prepare(listen, admin_listen, memory).await {
                Ok((config, dir)) => {
                    let code = run(config, None, None).await;
                    // The temporary folder goes, whether the gateway stopped
                    // on a signal or failed to start.
                    drop(dir);
                    code
                }
                Err(code) => code,
            }
        }),
        Some(Command::CheckConfig) => with_config(config, "check-config", check_config),
        Some(Command::HashPassword) => hash_password(),
        Some(Command::GenKey) => {
            use base64::Engine;
            println!(
                "{}",
                base64::engine::general_purpose::STANDARD.encode(crate::crypto::random_bytes(32))
            );
            ExitCode::SUCCESS
        }
        Some(Command::Users { command }) => {
            with_config(config, "users", |path| users::run(&runtime, command, path))
        }
        Some(Command::Store {
            command: StoreCommand::RotateKey,
        }) => with_config(config, "store rotate-key", |path| {
            runtime.block_on(rotate_key(path))
        }),
    }
}

/// `then` with the config file, or exit 64 saying `portcullis {command}` needs one.
fn with_config(config: Option<&Path>, command: &str, then: impl FnOnce(&Path) -> ExitCode) -> ExitCode {
    match config {
        Some(path) => then(path),
        None => {
            eprintln!("error: `portcullis {command}` needs --config FILE (or PORTCULLIS_CONFIG)");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// Loads a config, printing every problem to stderr; `None` when invalid.
fn load(path: &Path) -> Option<LoadedConfig> {
    report(path, config::load_file(path), true)
}

/// Loads a config for a command that manages the store (`users`, `store`).
/// It signs no cookie and serves no API, so the session secret and the admin
/// tokens may be missing from its environment (a root shell without the
/// service's `secrets.env`): stand-ins are used for their default variables.
/// The store key is not stood in for: it must be the real one. Warnings
/// belong to `check-config` and `serve`, and are not repeated here.
fn load_for_tool(path: &Path) -> Option<LoadedConfig> {
    use base64::Engine;
    use config::defaults::{ADMIN_TOKEN_ENV, SESSION_SECRET_ENV};
    let stand_in = base64::engine::general_purpose::STANDARD.encode(crate::crypto::random_bytes(32));
    let env = |name: &str| {
        std::env::var(name).ok().or_else(|| {
            [SESSION_SECRET_ENV, ADMIN_TOKEN_ENV]
                .contains(&name)
                .then(|| stand_in.clone())
        })
    };
    report(path, config::load_file_with_env(path, &env), false)
}

/// A loaded config, or its problems printed to stderr.
fn report(
    path: &Path,
    loaded: Result<LoadedConfig, config::ConfigError>,
    warnings: bool,
) -> Option<LoadedConfig> {
    match loaded {
        Ok(loaded) => {
            if warnings {
                for w in &loaded.warnings {
                    eprintln!("warning: {w}");
                }
            }
            Some(loaded)
        }
        Err(e) => {
            for p in &e.problems {
                eprintln!("error: {p}");
            }
            // Found in the same pass: fixing the errors should not reveal them.
            for w in &e.warnings {
                eprintln!("warning: {w}");
            }
            eprintln!(
                "{}: {} problem(s), {} warning(s); nothing started",
                path.display(),
                e.problems.len(),
                e.warnings.len()
            );
            None
        }
    }
}

fn check_config(path: &Path) -> ExitCode {
    match load(path) {
        Some(loaded) => {
            println!("{}: OK ({} warning(s))", path.display(), loaded.warnings.len());
            println!("{}", paths_summary(loaded.config.case_insensitive_paths));
            ExitCode::SUCCESS
        }
        None => ExitCode::from(EXIT_CONFIG),
    }
}

/// What the gateway does with request paths, for `check-config`.
pub fn paths_summary(case_insensitive: bool) -> String {
    format!(
        "paths: ';' parameters are stripped per segment for rule matching (strictest of \
         Tomcat/nginx/IIS readings, also without a trailing '/'); one spelling per character \
         (escapes of unreserved characters, sub-delims, ':' and '@' decoded; raw non-ASCII and \
         unsafe ASCII encoded, upper-case hex); %25XX, %3B, control characters, leading spaces, overlong UTF-8 and dot-lookalike \
         segments answer 400; {} (case_insensitive_paths = {case_insensitive})",
        if case_insensitive {
            "case-insensitive rules; Windows aliases (NTFS streams ':', 8.3 names '~1', \
             cookieless '(S(..))' segments) denied"
        } else {
            "case-sensitive rules"
        }
    )
}

async fn serve_file(path: &Path) -> ExitCode {
    // A `SIGHUP` (`systemctl reload`, a renewal hook) that comes while the
    // gateway is still starting would end the process by default, and
    // systemd does not restart one ended by it. Handled from here on (tokio
    // keeps a handler for the process's life): one that comes before the
    // reload handler listens is let go, the configuration just read is current.
    #[cfg(unix)]
    if let Err(e) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        eprintln!("warning: cannot handle SIGHUP ({e}): a reload while starting would end the process");
    }
    let Some(loaded) = load(path) else {
        return ExitCode::from(EXIT_CONFIG);
    };
    crate::telemetry::init(&loaded.config.log);
    run(loaded.config, None, Some(path.to_path_buf())).await
}

/// Binds both listeners and serves until SIGTERM/SIGINT (or `shutdown`);
/// with `config_path`, `SIGHUP` reloads from that file ([`crate::gateway::Live`]).
pub async fn run(
    config: config::Config,
    shutdown: Option<Shutdown>,
    config_path: Option<PathBuf>,
) -> ExitCode {
    // Idle sockets cost a descriptor each: take all the kernel allows.
    server::raise_open_files_limit(config.server.max_connections);
    let main_opts = ListenerOptions::main(&config.server);
    let admin_opts = ListenerOptions::admin(
        &config.server,
        config.admin.tls.as_ref().map(|t| t.server_config.clone()),
    );
    let (main_addr, admin_addr) = (config.server.listen, config.admin.listen);
    let main_scheme = if main_opts.tls.is_some() { "https" } else { "http" };
    let admin_scheme = if admin_opts.tls.is_some() { "https" } else { "http" };
    let gateway = match Gateway::build(config).await {
        Ok(g) => g,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            eprintln!("error: {e}");
            // Keys that do not fit the database are a configuration problem.
            if matches!(e, crate::gateway::BuildError::Keys(_)) {
                return ExitCode::from(EXIT_CONFIG);
            }
            return ExitCode::FAILURE;
        }
    };
    // Served from one thread per core, each with its own socket on the port.
    let main_listener = match server::bind_threads(main_addr, server::worker_threads()).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {main_addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let admin_listener = match server::bind(admin_addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {admin_addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = shutdown.unwrap_or_default();
    shutdown.on_signals();
    tracing::info!(main = %format!("{main_scheme}://{main_addr}"), admin = %format!("{admin_scheme}://{admin_addr}"), "portcullis listening");
    let reloadable = config_path.is_some();
    let live = crate::gateway::Live::new(gateway, config_path);
    live.follow_trusted_proxies(
        [
            &main_opts.per_address,
            &main_opts.handshakes_per_address,
            &admin_opts.per_address,
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect(),
    );
    #[cfg(unix)]
    if reloadable {
        live.reload_on_sighup();
    }
    let admin = tokio::spawn(server::serve(
        admin_listener,
        live.admin_service(),
        admin_opts,
        shutdown.clone(),
    ));
    let threads = live.clone();
    let served = server::serve_threads(
        main_listener,
        move || threads.main_service(),
        main_opts,
        shutdown.clone(),
    )
    .await;
    if let Err(e) = served {
        eprintln!("error: cannot serve {main_addr}: {e}");
        shutdown.trigger();
        let _ = admin.await;
        live.gateway().stop();
        return ExitCode::FAILURE;
    }
    let _ = admin.await;
    // The last requests' audit events reach the store before the writer
    // stops (at most a second more: a store out of reach does not hold the
    // exit up for long).
    live.gateway()
        .finish_audit(std::time::Duration::from_secs(1))
        .await;
    live.gateway().stop();
    tracing::info!("stopped");
    // Access lines are written in batches; none may be lost on the way out.
    crate::telemetry::flush();
    ExitCode::SUCCESS
}

/// Reads a password: prompted without echo on a terminal, else stdin (one
/// trailing newline is the terminator). Empty is a usage error.
fn read_password() -> Result<String, ExitCode> {
    let password = if std::io::stdin().is_terminal() {
        match rpassword::prompt_password("Password: ") {
            Ok(p) => p,
            Err(e) => {
                eprintln!("error: cannot read the password: {e}");
                return Err(ExitCode::FAILURE);
            }
        }
    } else {
        let mut s = String::new();
        if let Err(e) = std::io::stdin().read_to_string(&mut s) {
            eprintln!("error: cannot read stdin: {e}");
            return Err(ExitCode::FAILURE);
        }
        // One trailing newline is the terminator, not part of the password.
        s.strip_suffix('\n')
            .map(|t| t.strip_suffix('\r').unwrap_or(t))
            .unwrap_or(&s)
            .to_owned()
    };
    if password.is_empty() {
        eprintln!("error: empty password");
        return Err(ExitCode::from(EXIT_CONFIG));
    }
    Ok(password)
}

fn hash_password() -> ExitCode {
    let password = match read_password() {
        Ok(p) => p,
        Err(code) => return code,
    };
    // A users-file password is the operator's call (tests and demos use short
    // ones), so a short one is hashed; it is named, as the Users API refuses it.
    let min = crate::admin::users::MIN_PASSWORD;
    if password.chars().count() < min {
        eprintln!(
            "warning: the password has fewer than {min} characters (the Users API and `users add` refuse such)"
        );
    }
    match crate::passwords::hash_password(password.as_bytes()) {
        Ok(h) => {
            println!("{h}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `store rotate-key`: re-seals every factor secret not under the first key.
async fn rotate_key(path: &Path) -> ExitCode {
    use crate::sealing::{self, KeyCheckError, Sealer};
    let Some(loaded) = load_for_tool(path) else {
        return ExitCode::from(EXIT_CONFIG);
    };
    let cfg = loaded.config;
    // Its audit event goes to the log and, below, to the store.
    crate::telemetry::init_cli(&cfg.log);
    let sealer = match Sealer::new(&cfg.store.encryption_keys) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: store.encryption_keys: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let store = match crate::store::open(&cfg.store).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Every key the database needs must be configured, or nothing can move.
    match sealing::check_keys(store.as_ref(), Some(&sealer)).await {
        Ok(()) => {}
        Err(KeyCheckError::Mismatch(m)) => {
            eprintln!("error: {m}");
            return ExitCode::from(EXIT_CONFIG);
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    }
    let key_id = sealer.current_key_id();
    let writer = crate::audit::start(store.clone(), cfg.audit.retention);
    match sealing::rotate(store.as_ref(), &sealer).await {
        Ok(n) => {
            crate::audit!("store.key_rotated", key_id = %key_id, resealed = n, actor = %"cli");
            writer.finish(std::time::Duration::from_secs(5)).await;
            println!("re-sealed {n} factor secret(s) under key id {key_id}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
