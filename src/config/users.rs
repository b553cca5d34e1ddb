//! `[users]` and the users file it names.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::context::Ctx;
use super::fields::{choice, non_empty_strings};
use super::load::syntax_problem;
use super::raw::{RawUser, RawUsers};
use super::secrets::secret;
use super::shape::array_section;
use super::{Enrollment, FileUser, UsersConfig, defaults};
use crate::passwords::HashCost;
use crate::secret::Secret;

/// RFC 4226 requires at least 128 bits and recommends 160; 80-bit secrets are
/// legacy (Google Authenticator era) and accepted only with a warning.
/// The longest login (bytes, after trimming) that can sign in; longer ones
/// fail like an unknown user and are never stored or logged (see
/// `crate::limits`). A users-file login may not be longer.
pub const MAX_LOGIN_BYTES: usize = 256;

const MIN_TOTP_SECRET_BYTES: usize = 10;
const RECOMMENDED_TOTP_SECRET_BYTES: usize = 16;

pub(super) fn convert_users(cx: &mut Ctx<'_>, raw: RawUsers) -> UsersConfig {
    let (file, file_users) = match raw.file.as_deref().map(str::trim) {
        // Explicitly empty: no users file, on purpose.
        Some("") => (None, Vec::new()),
        configured => {
            let path = PathBuf::from(configured.unwrap_or(defaults::USERS_FILE));
            if path.exists() {
                let users = users_file(cx, &path);
                (Some(path), users)
            } else if configured.is_some() {
                cx.error("users.file", format!("{} does not exist", path.display()));
                (None, Vec::new())
            } else {
                // The default file is optional.
                cx.warn(
                    "users.file",
                    format!("{} does not exist: no users from a file (users can still be created through the admin API)", path.display()),
                );
                (None, Vec::new())
            }
        }
    };
    /// What `users.passwordless_factors` may list: the defaults, and
    /// `webauthn` (a discoverable passkey, no username).
    const PASSWORDLESS_ALLOWED: [&str; 3] = ["push", "token:software:totp", "webauthn"];
    let passwordless = raw.passwordless.unwrap_or(defaults::PASSWORDLESS);
    let passwordless_factors = match raw.passwordless_factors {
        None => defaults::PASSWORDLESS_FACTORS
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
        Some(list) => {
            let mut out: Vec<String> = Vec::new();
            for (i, f) in list.into_iter().enumerate() {
                if !PASSWORDLESS_ALLOWED.contains(&f.as_str()) {
                    cx.error(
                        format!("users.passwordless_factors[{i}]"),
                        format!("must be one of {PASSWORDLESS_ALLOWED:?} (got {f:?})"),
                    );
                } else if !out.contains(&f) {
                    out.push(f);
                }
            }
            if passwordless && out.is_empty() {
                cx.error(
                    "users.passwordless_factors",
                    "must list at least one factor when users.passwordless = true",
                );
            }
            out
        }
    };
    let enrollment = choice(
        cx,
        "users.enrollment",
        raw.enrollment,
        defaults::ENROLLMENT,
        &[
            ("first_login", Enrollment::FirstLogin),
            ("admin_only", Enrollment::AdminOnly),
        ],
    );
    let ldap = raw.ldap.and_then(|v| {
        let out = super::ldap::convert(v, &mut |k, v| secret(cx, k, v));
        out.warnings.into_iter().for_each(|(k, m)| cx.warn(k, m));
        out.errors.into_iter().for_each(|(k, m)| cx.error(k, m));
        out.config
    });
    UsersConfig {
        file,
        passwordless,
        passwordless_factors,
        enrollment,
        file_users,
        ldap,
    }
}

/// Parses the users file; its problems are reported under `users.file` with
/// the path inside the file in the message (`users.file: users[3].password: ...`).
fn users_file(cx: &mut Ctx<'_>, path: &Path) -> Vec<FileUser> {
    let mut sub = Ctx::new(cx.env);
    let users = parse_users_file(&mut sub, path);
    for p in sub.problems {
        cx.error("users.file", p.to_string());
    }
    for w in sub.warnings {
        cx.warn("users.file", w.to_string());
    }
    users
}

fn parse_users_file(cx: &mut Ctx<'_>, path: &Path) -> Vec<FileUser> {
    let shown = path.display().to_string();
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => {
            cx.error(shown, format!("cannot read: {e}"));
            return Vec::new();
        }
    };
    let mut table = match toml::from_str::<toml::Table>(&text) {
        Ok(table) => table,
        Err(e) => {
            let p = syntax_problem(&text, Some(path), &e);
            cx.error(p.key, p.message);
            return Vec::new();
        }
    };
    let list = table.remove("users");
    for key in table.keys() {
        cx.error(
            key.clone(),
            "unknown key (the users file holds only [[users]] tables)",
        );
    }
    if list.is_none() {
        cx.warn(shown, "defines no [[users]]");
    }
    // Sign-in names are matched case-insensitively, so "Alice" and "alice"
    // would collide. Read from the raw tables, so that a duplicate is reported
    // with the other problems of either entry, not only once they are fixed.
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut duplicate = Vec::new();
    if let Some(toml::Value::Array(entries)) = &list {
        for (i, entry) in entries.iter().enumerate() {
            let Some(name) = entry.get("username").and_then(toml::Value::as_str) else {
                continue;
            };
            match seen.get(&name.to_lowercase()) {
                Some(first) => {
                    cx.error(
                        format!("users[{i}].username"),
                        format!("{name:?} is already used by users[{first}]"),
                    );
                    duplicate.push(i);
                }
                None => {
                    seen.insert(name.to_lowercase(), i);
                }
            }
        }
    }
    let Some(items) = array_section::<RawUser>(cx, "users", list) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, raw) in items.into_iter().enumerate() {
        let Some(user) = raw.and_then(|raw| file_user(cx, i, raw)) else {
            continue;
        };
        if !duplicate.contains(&i) {
            out.push(user);
        }
    }
    let costs: std::collections::BTreeSet<HashCost> = out
        .iter()
        .filter_map(|u| HashCost::of(&u.password_hash))
        .collect();
    if costs.len() > 1 {
        cx.warn(
            "users",
            format!(
                "the password hashes have {} different argon2 costs: sign-ins take a different \
                 time per cost, and unknown logins imitate the mix, but each change to the users \
                 moves a few unknown logins to another cost; rehash them all with \
                 `portcullis hash-password` for one sign-in time",
                costs.len()
            ),
        );
    }
    out
}

fn file_user(cx: &mut Ctx<'_>, i: usize, raw: RawUser) -> Option<FileUser> {
    let k = |field: &str| format!("users[{i}].{field}");
    let before = cx.error_count();
    let username = raw.username.unwrap_or_default();
    if username.is_empty() {
        cx.error(k("username"), "is required and must not be empty");
    } else if username.len() > MAX_LOGIN_BYTES {
        cx.error(
            k("username"),
            format!(
                "is {} bytes long; a login has at most {} bytes",
                username.len(),
                MAX_LOGIN_BYTES
            ),
        );
    } else if username
        .chars()
        .any(|c| c.is_whitespace() || crate::names::is_hidden_char(c))
    {
        cx.error(
            k("username"),
            format!("must not contain whitespace, control or invisible characters (got {username:?})"),
        );
    }
    let password_hash = raw.password.unwrap_or_default();
    if password_hash.is_empty() {
        cx.error(
            k("password"),
            "is required: an argon2id PHC string from `portcullis hash-password`",
        );
    } else if let Err(e) = check_password_hash(&password_hash) {
        cx.error(k("password"), e);
    } else if let Some(cost) = HashCost::of(&password_hash).filter(HashCost::is_weaker_than_default) {
        cx.warn(
            k("password"),
            format!(
                "argon2 parameters {} are weaker than those of `portcullis hash-password` ({}): \
                 the file is cheap to crack if it leaks; rehash this password",
                cost.params(),
                HashCost::DEFAULT.params()
            ),
        );
    }
    let display_name = raw.display_name.filter(|s| !s.trim().is_empty());
    let email = raw.email.filter(|s| !s.trim().is_empty());
    if let Some(e) = &email
        && !is_email(e)
    {
        cx.error(k("email"), format!("is not an e-mail address (got {e:?})"));
    }
    let phone = raw.phone.filter(|s| !s.trim().is_empty());
    if let Some(p) = &phone
        && !is_e164(p)
    {
        cx.error(
            k("phone"),
            format!("must be E.164: \"+\" then 8 to 15 digits, e.g. \"+15555550100\" (got {p:?})"),
        );
    }
    let groups = non_empty_strings(cx, &k("groups"), raw.groups);
    let totp_secret = raw.totp.and_then(|totp| {
        let key = k("totp.secret");
        let Some(text) = totp.secret else {
            cx.error(key, "is required in a totp table (base32)");
            return None;
        };
        let encoded = secret(cx, &key, &text)?;
        let Some(bytes) = encoded.expose_str().and_then(base32_decode) else {
            cx.error(key, "is not valid base32 (RFC 4648: A-Z and 2-7)");
            return None;
        };
        if bytes.len() < MIN_TOTP_SECRET_BYTES {
            cx.error(
                key,
                format!(
                    "must be at least {} bits (got {} bits)",
                    MIN_TOTP_SECRET_BYTES * 8,
                    bytes.len() * 8
                ),
            );
            return None;
        }
        if bytes.len() < RECOMMENDED_TOTP_SECRET_BYTES {
            cx.warn(
                key,
                format!(
                    "legacy {}-bit secret accepted; {} bits or more is recommended (RFC 4226)",
                    bytes.len() * 8,
                    RECOMMENDED_TOTP_SECRET_BYTES * 8
                ),
            );
        }
        Some(Secret::new(bytes))
    });
    (cx.error_count() == before).then_some(FileUser {
        username,
        password_hash,
        display_name,
        email,
        phone,
        groups,
        totp_secret,
    })
}

fn check_password_hash(phc: &str) -> Result<(), String> {
    const HINT: &str = "generate one with `portcullis hash-password`";
    let hash = argon2::PasswordHash::new(phc).map_err(|e| format!("is not a PHC string ({e}); {HINT}"))?;
    if hash.algorithm.as_str() != "argon2id" {
        return Err(format!(
            "must be argon2id (got {}); {HINT}",
            hash.algorithm.as_str()
        ));
    }
    if hash.salt.is_none() || hash.hash.is_none() {
        return Err(format!("is missing its salt or hash; {HINT}"));
    }
    argon2::Params::try_from(&hash).map_err(|e| format!("has invalid argon2 parameters ({e}); {HINT}"))?;
    Ok(())
}

fn is_email(s: &str) -> bool {
    let mut parts = s.split('@');
    matches!((parts.next(), parts.next(), parts.next()), (Some(local), Some(domain), None)
        if !local.is_empty() && !domain.is_empty())
        && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

fn is_e164(s: &str) -> bool {
    s.strip_prefix('+')
        .is_some_and(|digits| (8..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()))
}

/// RFC 4648 base32, case-insensitive; whitespace and `=` padding are ignored
/// because authenticator apps display secrets in groups.
fn base32_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 5 / 8);
    let mut buffer: u32 = 0;
    let mut bits = 0u32;
    for c in text.chars() {
        if c.is_whitespace() || c == '=' {
            continue;
        }
        let value = match c.to_ascii_uppercase() {
            u @ 'A'..='Z' => u32::from(u) - u32::from('A'),
            d @ '2'..='7' => u32::from(d) - u32::from('2') + 26,
            _ => return None,
        };
        buffer = (buffer << 5) | value;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push(((buffer >> bits) & 0xff) as u8);
            buffer &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use argon2::Algorithm;

    use super::*;
    use crate::config::test_support::*;
    use crate::config::*;

    fn users_config(dir: &Path, users: &str) -> String {
        let path = dir.join("users.toml");
        std::fs::write(&path, users).unwrap();
        with(&format!("[users]\nfile = {}\n", toml_path(&path)))
    }

    #[test]
    fn users_file_is_parsed() {
        let dir = tempfile::tempdir().unwrap();
        let hash = cheap_hash("pw", Algorithm::Argon2id);
        let text = users_config(
            dir.path(),
            &format!(
                "[[users]]\nusername = \"alice\"\npassword = \"{hash}\"\ngroups = [\"admins\", \"ops\"]\n\
                 totp = {{ secret = \"JBSW Y3DP EHPK 3PXP jbsw y3dp ehpk 3pxp\" }}\n\
                 [[users]]\nusername = \"bob\"\npassword = \"{hash}\"\ntotp = {{ secret = \"env:BOB_TOTP\" }}\n"
            ),
        );
        let env = |name: &str| match name {
            "BOB_TOTP" => Some("JBSWY3DPEHPK3PXP".to_owned()), // 80 bits: legacy
            other => std_env(other),
        };
        let loaded = load_str(&text, &env).unwrap();
        let users = &loaded.config.users.file_users;
        assert_eq!(users.len(), 2);
        assert_eq!(users[0].username, "alice");
        assert_eq!(users[0].groups, vec!["admins".to_owned(), "ops".to_owned()]);
        assert_eq!(
            users[0].totp_secret.as_ref().unwrap().expose(),
            b"Hello!\xde\xad\xbe\xefHello!\xde\xad\xbe\xef"
        );
        assert_eq!(users[1].totp_secret.as_ref().unwrap().len(), 10);
        assert!(users[0].display_name.is_none());
        let w = warnings(&loaded);
        assert_has(&w, "users.file", "users[1].totp.secret: legacy 80-bit secret");
        assert_has(
            &w,
            "users.file",
            "users[0].password: argon2 parameters m=8, t=1, p=1 are weaker than those of `portcullis hash-password` (m=19456, t=2, p=1)",
        );
        assert!(!w.iter().any(|l| l.contains("users[0].totp")), "{w:?}");
        assert!(!w.iter().any(|l| l.contains("different argon2 costs")), "{w:?}");

        // Two costs in one file.
        let other = {
            use argon2::PasswordHasher as _;
            let params = argon2::Params::new(16, 1, 1, None).unwrap();
            argon2::Argon2::new(Algorithm::Argon2id, argon2::Version::V0x13, params)
                .hash_password(b"pw")
                .unwrap()
                .to_string()
        };
        let text = users_config(
            dir.path(),
            &format!(
                "[[users]]\nusername = \"alice\"\npassword = \"{hash}\"\n\
                 [[users]]\nusername = \"bob\"\npassword = \"{other}\"\n"
            ),
        );
        let loaded = load_str(&text, &env).unwrap();
        assert_has(
            &warnings(&loaded),
            "users.file",
            "users: the password hashes have 2 different argon2 costs",
        );
    }

    #[test]
    fn over_long_logins_and_a_zero_transaction_limit_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let good = cheap_hash("pw", Algorithm::Argon2id);
        let text = users_config(
            dir.path(),
            &format!(
                "[[users]]\nusername = \"{}\"\npassword = \"{good}\"\n",
                "a".repeat(MAX_LOGIN_BYTES + 1)
            ),
        );
        let text = format!("{text}\n[regulation]\nmax_transactions_per_ip_per_minute = 0\n");
        let errs = errors(&text);
        assert_has(&errs, "users.file", "users[0].username: is 257 bytes long");
        assert_has(
            &errs,
            "regulation.max_transactions_per_ip_per_minute",
            "must be at least 1",
        );
    }

    #[test]
    fn a_duplicate_name_is_reported_beside_the_entries_other_problems() {
        let dir = tempfile::tempdir().unwrap();
        let text = users_config(
            dir.path(),
            "[[users]]\nusername = \"alice\"\npassword = \"plaintext\"\n\
             [[users]]\nusername = \"Alice\"\npassword = \"plaintext\"\nnickname = \"x\"\n",
        );
        let errs = errors(&text);
        assert_has(&errs, "users.file", "users[0].password");
        assert_has(&errs, "users.file", "users[1].nickname");
        assert_has(
            &errs,
            "users.file",
            "users[1].username: \"Alice\" is already used by users[0]",
        );
    }

    #[test]
    fn users_file_problems_are_all_reported() {
        let dir = tempfile::tempdir().unwrap();
        let good = cheap_hash("pw", Algorithm::Argon2id);
        let argon2i = cheap_hash("pw", Algorithm::Argon2i);
        let text = users_config(
            dir.path(),
            &format!(
                "[[users]]\nusername = \"alice\"\npassword = \"{good}\"\n\
                 [[users]]\nusername = \"Alice\"\npassword = \"{good}\"\n\
                 [[users]]\nusername = \"bad name\"\npassword = \"{argon2i}\"\n\
                 [[users]]\nusername = \"carol\"\npassword = \"plaintext\"\nphone = \"555-0100\"\nemail = \"carol\"\n\
                 [[users]]\nusername = \"dave\"\npassword = \"{good}\"\ntotp = {{ secret = \"JBSWY3DPEHPK3\" }}\n\
                 [[users]]\nusername = \"erin\"\npassword = \"{good}\"\ntotp = {{ secret = \"not base32!\" }}\n\
                 [[users]]\nusername = \"frank\"\npasword = \"{good}\"\n\
                 [[users]]\npassword = \"{good}\"\n\
                 [[users]]\nusername = \"\u{202E}ecila\"\npassword = \"{good}\"\n"
            ),
        );
        let errs = errors(&text);
        assert_has(
            &errs,
            "users.file",
            "users[1].username: \"Alice\" is already used by users[0]",
        );
        assert_has(
            &errs,
            "users.file",
            "users[2].username: must not contain whitespace",
        );
        assert_has(
            &errs,
            "users.file",
            "users[2].password: must be argon2id (got argon2i)",
        );
        assert_has(&errs, "users.file", "users[3].password: is not a PHC string");
        assert_has(&errs, "users.file", "users[3].phone: must be E.164");
        // Looks like `alice` reversed in a console, is something else.
        assert_has(
            &errs,
            "users.file",
            "users[8].username: must not contain whitespace, control or invisible",
        );
        assert_has(&errs, "users.file", "users[3].email: is not an e-mail address");
        assert_has(
            &errs,
            "users.file",
            "users[4].totp.secret: must be at least 80 bits",
        );
        assert_has(&errs, "users.file", "users[5].totp.secret: is not valid base32");
        assert_has(&errs, "users.file", "users[6].pasword: unknown key");
        assert_has(&errs, "users.file", "users[7].username: is required");
    }

    #[test]
    fn users_file_presence_rules() {
        let errs = errors(&with("[users]\nfile = \"/nonexistent/users.toml\"\n"));
        assert_has(&errs, "users.file", "does not exist");
        let loaded = ok(&with("[users]\nfile = \"\"\n"));
        assert!(loaded.config.users.file.is_none());
        assert!(!warnings(&loaded).iter().any(|w| w.starts_with("users.file")));
        let dir = tempfile::tempdir().unwrap();
        let errs = errors(&users_config(dir.path(), "[[users]\nusername = \"x\"\n"));
        assert_has(&errs, "users.file", "TOML syntax error");
        let errs = errors(&users_config(dir.path(), "admins = [\"x\"]\n"));
        assert_has(&errs, "users.file", "admins: unknown key");
    }

    #[test]
    fn passwordless_factors_are_checked() {
        let errs = errors(&with(
            "[users]\npasswordless_factors = [\"sms\"]\nenrollment = \"never\"\n",
        ));
        assert_has(&errs, "users.passwordless_factors[0]", "must be one of");
        assert_has(&errs, "users.enrollment", "must be one of");
        let loaded = ok(&with("[users]\npasswordless = true\n"));
        assert_has(
            &warnings(&loaded),
            "users.passwordless_factors",
            "\"push\" is listed but that factor is not enabled",
        );
    }

    #[test]
    fn base32_decodes_rfc_4648_vectors() {
        assert_eq!(base32_decode("MZXW6YTBOI======").unwrap(), b"foobar");
        assert_eq!(base32_decode("mzxw6ytb").unwrap(), b"fooba");
        assert_eq!(base32_decode("MZ XW 6").unwrap(), b"foo");
        assert_eq!(base32_decode("").unwrap(), b"");
        assert!(base32_decode("MZXW1").is_none());
    }
}
