//! `portcullis users list|show|add|remove|reset-factors|unlock`: the
//! helpdesk's tools, working on the store a running gateway uses.
//!
//! Each command builds the gateway's state from the config (without binding
//! anything) and calls the same operations as the Users API
//! ([`crate::admin::users`]): one implementation. Running gateways see the
//! changes within `session.revocation_check`, as they see another replica's.
//! Changes are audit events with `actor=cli`.
//!
//! Exit codes: 0 done; 1 runtime failure (store or directory unreachable,
//! a read-only user or factor); 2 no such user (or factor); 64 bad config or
//! arguments.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Subcommand;
use serde_json::{Value, json};

use super::{EXIT_CONFIG, load_for_tool};
use crate::admin::users::{self as ops, Actor, Source, Subject, UserOpError};
use crate::gateway::Gateway;
use crate::state::AppState;

/// Exit code for an unknown user or factor.
pub const EXIT_NO_USER: u8 = 2;

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// List every user: source (file, api, directory), status, factors, lockout.
    List {
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show where a user comes from (users file, API, directory), their groups,
    /// factors and lockout.
    Show {
        /// Login or user id.
        user: String,
    },
    /// Create a user in the store (an API user); the password is read from
    /// stdin (no echo on a terminal).
    Add {
        /// The login.
        user: String,
        /// No password (the user cannot sign in with one).
        #[arg(long)]
        no_password: bool,
        /// E-mail address (for e-mail codes; a login that is an address is its own).
        #[arg(long)]
        email: Option<String>,
        /// First name.
        #[arg(long)]
        first_name: Option<String>,
        /// Last name.
        #[arg(long)]
        last_name: Option<String>,
        /// Mobile phone (for SMS and call factors).
        #[arg(long)]
        phone: Option<String>,
        /// A group (repeat for more).
        #[arg(long = "group")]
        groups: Vec<String>,
    },
    /// Delete a user of the store (with their factors) and end their sessions.
    Remove {
        /// Login or user id.
        user: String,
    },
    /// Remove a user's factors (all, or one), the last one included, and end
    /// their sessions; they enroll again at the next sign-in.
    ResetFactors {
        /// Login or user id.
        user: String,
        /// Only this factor.
        #[arg(long)]
        factor: Option<String>,
    },
    /// Clear a user's lockout.
    Unlock {
        /// Login or user id.
        user: String,
    },
}

/// Runs a `users` command.
pub fn run(runtime: &tokio::runtime::Runtime, command: UsersCommand, config: &Path) -> ExitCode {
    let Some(loaded) = load_for_tool(config) else {
        return ExitCode::from(EXIT_CONFIG);
    };
    let config = loaded.config;
    // Read the password before anything logs.
    let password = match &command {
        UsersCommand::Add {
            no_password: false, ..
        } => match super::read_password() {
            Ok(p) => match ops::check_password_value(&p) {
                Ok(s) => Some(s),
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            },
            Err(code) => return code,
        },
        _ => None,
    };
    if let UsersCommand::Show { user, .. } = &command {
        // Every source that knows the name, with a warning when several do.
        let code = runtime.block_on(show_sources(&config, user));
        if code != ExitCode::SUCCESS {
            return code;
        }
    }
    // A command prints warnings and errors of libraries only (no sqlx notices).
    crate::telemetry::init_cli(&config.log);
    runtime.block_on(async move {
        let gateway = match Gateway::build_for_tool(config).await {
            Ok(g) => g,
            Err(e) => {
                eprintln!("error: {e}");
                if matches!(e, crate::gateway::BuildError::Keys(_)) {
                    return ExitCode::from(EXIT_CONFIG);
                }
                return ExitCode::FAILURE;
            }
        };
        let st = gateway.state().clone();
        // The directory's users, read once (the gateway's refresher would later).
        if let Some(dir) = &st.directory
            && let Err(e) = dir.refresh(&st.users).await
        {
            eprintln!("warning: the directory (users.ldap) did not answer: {e}; its users are missing here");
        }
        let code = execute(&st, command, password).await;
        // The command's audit events reach the store before the writer stops.
        gateway.finish_audit(std::time::Duration::from_secs(5)).await;
        gateway.stop();
        crate::telemetry::flush();
        code
    })
}

fn failed(user: &str, e: &UserOpError) -> ExitCode {
    eprintln!("error: {user}: {e}");
    match e {
        UserOpError::NotFound | UserOpError::FactorNotFound => ExitCode::from(EXIT_NO_USER),
        UserOpError::Invalid(_) => ExitCode::from(EXIT_CONFIG),
        _ => ExitCode::FAILURE,
    }
}

async fn execute(
    st: &Arc<AppState>,
    command: UsersCommand,
    password: Option<crate::secret::Secret>,
) -> ExitCode {
    match command {
        UsersCommand::List { json, .. } => list(st, json).await,
        UsersCommand::Show { user, .. } => match ops::find_subject(st, &user).await {
            Ok(s) => match describe(st, &s).await {
                Ok(d) => {
                    println!(
                        "{}: signs in as the {} user {}, status {}, {} active factor(s){}{}",
                        d["login"].as_str().unwrap_or_default(),
                        d["source"].as_str().unwrap_or_default(),
                        d["id"].as_str().unwrap_or_default(),
                        d["status"].as_str().unwrap_or_default(),
                        d["factors"],
                        factor_list(&d),
                        d["lockedUntil"]
                            .as_str()
                            .map(|t| format!(", locked out until {t}"))
                            .unwrap_or_default()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => failed(&user, &e),
            },
            Err(e) => failed(&user, &e),
        },
        UsersCommand::Add {
            user,
            no_password,
            email,
            first_name,
            last_name,
            phone,
            groups,
            ..
        } => {
            let mut profile = json!({ "login": user });
            for (k, v) in [
                ("email", email),
                ("firstName", first_name),
                ("lastName", last_name),
                ("mobilePhone", phone),
            ] {
                if let Some(v) = v {
                    profile[k] = json!(v);
                }
            }
            if !groups.is_empty() {
                profile["groups"] = json!(groups);
            }
            let (login, profile) = match ops::check_profile(&profile, None) {
                Ok(x) => x,
                Err(e) => {
                    let causes: Vec<&str> = e.causes.iter().map(|c| c.error_summary.as_str()).collect();
                    eprintln!("error: {user}: {}", causes.join("; "));
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            match ops::create_user(st, login, profile, password, true, Actor::Cli).await {
                Ok(r) => {
                    println!(
                        "{}: created (api user, id {}, {})",
                        r.login,
                        r.id,
                        if no_password {
                            "no password"
                        } else {
                            "password set"
                        }
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => failed(&user, &e),
            }
        }
        UsersCommand::Remove { user, .. } => match ops::delete_user(st, &user, Actor::Cli).await {
            Ok(r) => {
                println!("{}: removed (id {}); their sessions ended", r.login, r.id);
                ExitCode::SUCCESS
            }
            Err(e) => failed(&user, &e),
        },
        UsersCommand::ResetFactors { user, factor, .. } => {
            match ops::reset_factors(st, &user, factor.as_deref(), Actor::Cli).await {
                Ok((s, reset)) => {
                    println!(
                        "{}: {} factor(s) removed; their sessions ended{}",
                        s.login(),
                        reset.removed.len(),
                        if reset.read_only > 0 {
                            ""
                        } else if st.config.users.enrollment == crate::config::Enrollment::FirstLogin {
                            "; they enroll again at the next sign-in"
                        } else {
                            "; users.enrollment = \"admin_only\": enroll a factor for them through the API"
                        }
                    );
                    if reset.read_only > 0 {
                        println!(
                            "{}: {} factor(s) from the users file (its `totp` entry) kept: remove them there",
                            s.login(),
                            reset.read_only
                        );
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => failed(&user, &e),
            }
        }
        UsersCommand::Unlock { user, .. } => match ops::unlock_user(st, &user, Actor::Cli).await {
            Ok((_, true)) => {
                println!("{user}: unlocked");
                ExitCode::SUCCESS
            }
            Ok((_, false)) => {
                println!("{user}: was not locked");
                ExitCode::SUCCESS
            }
            Err(e) => failed(&user, &e),
        },
    }
}

fn factor_list(d: &Value) -> String {
    let list: Vec<String> = d["factorList"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|f| {
                    format!(
                        "{} {} {}",
                        f["id"].as_str().unwrap_or_default(),
                        f["factorType"].as_str().unwrap_or_default(),
                        f["status"].as_str().unwrap_or_default()
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    if list.is_empty() {
        String::new()
    } else {
        format!(" ({})", list.join("; "))
    }
}

/// One user as `list --json` and `show` describe them.
async fn describe(st: &AppState, s: &Subject) -> Result<Value, UserOpError> {
    let unavailable = |e: crate::store::StoreError| UserOpError::Unavailable(e.to_string());
    let factors = crate::factors::list(st, &s.user()).await.map_err(unavailable)?;
    let locked = st.regulator.user_locked(s.id()).await.map_err(unavailable)?;
    let status = match s {
        Subject::Stored(r) => r.status.as_str(),
        Subject::File(_) => "ACTIVE",
    };
    // As the admin API shows it: an active user who is locked out.
    let status = if status == "ACTIVE" && locked.is_some() {
        "LOCKED_OUT"
    } else {
        status
    };
    Ok(json!({
        "login": s.login(),
        "id": s.id(),
        "source": ops::source_of(s).as_str(),
        "status": status,
        "factors": factors.iter().filter(|f| f.is_active()).count(),
        "factorList": factors.iter().map(|f| json!({
            "id": f.record.id,
            "factorType": f.record.factor_type,
            "status": if f.is_active() { "ACTIVE" } else { "PENDING_ACTIVATION" },
        })).collect::<Vec<_>>(),
        "lockedUntil": locked.map(crate::clock::rfc3339),
    }))
}

async fn list(st: &AppState, as_json: bool) -> ExitCode {
    let mut subjects = match ops::every_user(st).await {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: the store: {e}");
            return ExitCode::FAILURE;
        }
    };
    let order = |s: &Subject| match ops::source_of(s) {
        Source::File => 0,
        Source::Api => 1,
        Source::Directory => 2,
    };
    subjects.sort_by_key(|s| (order(s), s.login().to_lowercase()));
    let mut rows = Vec::with_capacity(subjects.len());
    for s in &subjects {
        match describe(st, s).await {
            Ok(mut d) => {
                if let Some(o) = d.as_object_mut() {
                    o.remove("factorList");
                }
                rows.push(d);
            }
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    if as_json {
        println!("{}", Value::Array(rows));
        return ExitCode::SUCCESS;
    }
    let width = rows
        .iter()
        .filter_map(|r| r["login"].as_str().map(|l| l.chars().count()))
        .max()
        .unwrap_or(0)
        .max(5);
    println!(
        "{:width$}  {:20}  {:9}  {:10}  {:7}  LOCKED UNTIL",
        "LOGIN", "ID", "SOURCE", "STATUS", "FACTORS"
    );
    for r in &rows {
        println!(
            "{:width$}  {:20}  {:9}  {:10}  {:7}  {}",
            r["login"].as_str().unwrap_or_default(),
            r["id"].as_str().unwrap_or_default(),
            r["source"].as_str().unwrap_or_default(),
            r["status"].as_str().unwrap_or_default(),
            r["factors"].as_u64().unwrap_or_default(),
            r["lockedUntil"].as_str().unwrap_or("-"),
        );
    }
    ExitCode::SUCCESS
}

/// `portcullis users show NAME`: every source that has this login (or id),
/// in the order sign-in asks them (users file, API, directory), and which
/// one wins. Exit 0 when found, 2 when not, 1 when a source could not be asked.
async fn show_sources(cfg: &crate::config::Config, key: &str) -> std::process::ExitCode {
    let mut found: Vec<String> = Vec::new();
    let mut failed = false;
    let groups = |g: &[String]| {
        if g.is_empty() {
            "-".to_owned()
        } else {
            g.join(", ")
        }
    };
    let files = crate::users::UserDirectory::from_file_users(&cfg.users.file_users);
    if let Some(u) = files.by_login(key).or_else(|| files.get(key)) {
        println!(
            "{}: users file, id {}, groups {}",
            u.username,
            u.id,
            groups(&u.groups)
        );
        found.push("users file".into());
    }
    match crate::store::open(&cfg.store).await {
        Ok(store) => {
            let stored = match store.get_user_by_login(key).await {
                Ok(None) => store.get_user(key).await,
                other => other,
            };
            match stored {
                Ok(Some(r)) => {
                    let u = crate::users::User::from_record(&r);
                    println!(
                        "{}: API user, id {}, status {}, groups {}",
                        r.login,
                        r.id,
                        r.status.as_str(),
                        groups(&u.groups)
                    );
                    found.push("API".into());
                }
                Ok(None) => {}
                Err(e) => {
                    eprintln!("error: the store: {e}");
                    failed = true;
                }
            }
        }
        Err(e) => {
            eprintln!("error: the store: {e}");
            failed = true;
        }
    }
    if let Some(lc) = &cfg.users.ldap {
        match crate::users::ldap::LdapDirectory::new(lc.clone()) {
            Ok(dir) => match dir.find(key).await {
                Ok(Some(e)) => {
                    let (u, _) = e.to_user();
                    println!(
                        "{}: directory ({}), id {}, dn {}, {} {}, groups {}{}",
                        e.username,
                        lc.url,
                        u.id,
                        e.dn,
                        lc.attributes.id,
                        e.stable_id,
                        groups(&e.groups),
                        if e.disabled {
                            ", DISABLED (cannot sign in)"
                        } else {
                            ""
                        }
                    );
                    found.push("directory".into());
                }
                Ok(None) => {}
                Err(e) => {
                    eprintln!("error: {e}");
                    failed = true;
                }
            },
            Err(e) => {
                eprintln!("error: users.ldap: {e}");
                failed = true;
            }
        }
    }
    match found.len() {
        0 => {
            eprintln!("error: {key}: no such user (not in the users file, the store or the directory)");
            ExitCode::from(EXIT_NO_USER)
        }
        1 if !failed => ExitCode::SUCCESS,
        1 => ExitCode::FAILURE,
        _ => {
            println!(
                "warning: {key} is in {} sources ({}); the {} one signs in (order: users file, API, directory), the others cannot",
                found.len(),
                found.join(", "),
                found[0]
            );
            if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
    }
}
