//! Putting untrusted text into LDAP filters (RFC 4515) and DNs (RFC 4514),
//! and reading DNs back.
//!
//! Every value that reaches a filter or a DN goes through here: a login like
//! `alice)(uid=*` or `*` must match one literal name or nothing, never widen
//! a search.

/// Escapes a value for an RFC 4515 filter assertion: `*`, `(`, `)`, `\` and
/// NUL become `\2a`, `\28`, `\29`, `\5c`, `\00`; other control characters are
/// escaped too (harmless, and keeps logs readable). UTF-8 passes through.
pub fn filter_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 8);
    for c in value.chars() {
        match c {
            '*' | '(' | ')' | '\\' | '\0' | '\u{1}'..='\u{1f}' | '\u{7f}' => {
                out.push_str(&format!("\\{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out
}

/// Escapes raw bytes for a filter assertion, every byte as `\xx` (binary
/// attributes such as Active Directory's `objectGUID`).
pub fn filter_bytes(value: &[u8]) -> String {
    value.iter().map(|b| format!("\\{b:02x}")).collect()
}

/// Fills a filter template: each `{placeholder}` gets its value, escaped.
pub fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = template.to_owned();
    for (name, value) in values {
        out = out.replace(name, &filter_value(value));
    }
    out
}

/// Escapes a value for one RDN of an RFC 4514 DN: `"+,;<>\=` and NUL
/// everywhere, a leading space or `#`, a trailing space.
pub fn dn_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 8);
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        match c {
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' | '=' => {
                out.push('\\');
                out.push(c);
            }
            '\0' => out.push_str("\\00"),
            ' ' if i == 0 || i == last => out.push_str("\\ "),
            '#' if i == 0 => out.push_str("\\#"),
            c => out.push(c),
        }
    }
    out
}

/// One attribute type and value of an RDN, value unescaped.
pub type Ava = (String, String);

/// Parses an RFC 4514 DN into its RDNs (each one or more `type=value`
/// pairs joined by `+`), unescaping values. Hex-string values (`#04...`)
/// are kept as written.
pub fn parse_dn(dn: &str) -> Result<Vec<Vec<Ava>>, String> {
    let b = dn.as_bytes();
    let mut rdns = Vec::new();
    if dn.trim().is_empty() {
        return Err("empty".into());
    }
    let mut i = 0;
    let mut rdn = Vec::new();
    loop {
        // attribute type: descr or numeric OID
        while i < b.len() && b[i] == b' ' {
            i += 1;
        }
        let start = i;
        while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'-' || b[i] == b'.') {
            i += 1;
        }
        let ty = &dn[start..i];
        if ty.is_empty() || !(ty.as_bytes()[0].is_ascii_alphabetic() || ty.as_bytes()[0].is_ascii_digit()) {
            return Err(format!("missing attribute type at byte {start}"));
        }
        while i < b.len() && b[i] == b' ' {
            i += 1;
        }
        if i >= b.len() || b[i] != b'=' {
            return Err(format!("expected '=' after {ty:?}"));
        }
        i += 1;
        // value
        let mut value: Vec<u8> = Vec::new();
        let mut trailing_unescaped_spaces = 0usize;
        if i < b.len() && b[i] == b'#' {
            let s = i;
            i += 1;
            while i < b.len() && b[i].is_ascii_hexdigit() {
                i += 1;
            }
            if (i - s - 1) == 0 || (i - s - 1) % 2 != 0 {
                return Err(format!("bad hex value for {ty:?}"));
            }
            value.extend_from_slice(&b[s..i]);
        } else {
            while i < b.len() && b[i] != b',' && b[i] != b'+' {
                match b[i] {
                    b'\\' => {
                        let Some(&n) = b.get(i + 1) else {
                            return Err("a trailing backslash".into());
                        };
                        if b"\"+,;<>\\= #".contains(&n) {
                            value.push(n);
                            i += 2;
                        } else if n.is_ascii_hexdigit() && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit) {
                            let hex = &dn[i + 1..i + 3];
                            value.push(u8::from_str_radix(hex, 16).map_err(|e| e.to_string())?);
                            i += 3;
                        } else {
                            return Err(format!("bad escape at byte {i}"));
                        }
                        trailing_unescaped_spaces = 0;
                    }
                    b'"' | b';' | b'<' | b'>' | 0 => {
                        return Err(format!("unescaped {:?} at byte {i}", b[i] as char));
                    }
                    c => {
                        if c == b' ' {
                            trailing_unescaped_spaces += 1;
                        } else {
                            trailing_unescaped_spaces = 0;
                        }
                        value.push(c);
                        i += 1;
                    }
                }
            }
            value.truncate(value.len() - trailing_unescaped_spaces);
        }
        let value = String::from_utf8(value).map_err(|_| format!("value of {ty:?} is not UTF-8"))?;
        rdn.push((ty.to_owned(), value));
        if i >= b.len() {
            rdns.push(std::mem::take(&mut rdn));
            break;
        }
        let sep = b[i];
        i += 1;
        if sep == b',' {
            rdns.push(std::mem::take(&mut rdn));
        }
        if i >= b.len() {
            return Err("ends with a separator".into());
        }
    }
    Ok(rdns)
}

/// The name a DN gives its entry: the value of the first RDN (its
/// `preferred` attribute when that RDN is multi-valued).
pub fn first_rdn_value(dn: &str, preferred: &str) -> Option<String> {
    let rdns = parse_dn(dn).ok()?;
    let first = rdns.into_iter().next()?;
    first
        .iter()
        .find(|(t, _)| t.eq_ignore_ascii_case(preferred))
        .or_else(|| first.first())
        .map(|(_, v)| v.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_values_are_escaped_per_rfc_4515() {
        assert_eq!(filter_value("alice"), "alice");
        assert_eq!(filter_value("*"), "\\2a");
        assert_eq!(filter_value("alice)(uid=*"), "alice\\29\\28uid=\\2a");
        assert_eq!(filter_value("a\\b"), "a\\5cb");
        assert_eq!(filter_value("a\0b"), "a\\00b");
        assert_eq!(filter_value("jürgen"), "jürgen");
        assert_eq!(filter_value("x\ny"), "x\\0ay");
        // The filled filter parses and has exactly one equality assertion.
        let f = fill(
            "(&(objectClass=person)(uid={username}))",
            &[("{username}", "*)(|(uid=*")],
        );
        assert_eq!(f, "(&(objectClass=person)(uid=\\2a\\29\\28|\\28uid=\\2a))");
        assert!(ldap3::parse_filter(&f).is_ok());
        assert_eq!(filter_bytes(&[0x01, 0xab, 0x2a]), "\\01\\ab\\2a");
    }

    #[test]
    fn dn_values_are_escaped_per_rfc_4514() {
        assert_eq!(dn_value("Smith, John"), "Smith\\, John");
        assert_eq!(dn_value(" lead"), "\\ lead");
        assert_eq!(dn_value("trail "), "trail\\ ");
        assert_eq!(dn_value("#hash"), "\\#hash");
        assert_eq!(dn_value("a#b"), "a#b");
        assert_eq!(dn_value("a+b=c;d<e>f\"g\\h"), "a\\+b\\=c\\;d\\<e\\>f\\\"g\\\\h");
        assert_eq!(dn_value("n\0l"), "n\\00l");
        // Round trip through the parser.
        for v in ["Smith, John", " x ", "#1", "a+b", "back\\slash", "ünï"] {
            let dn = format!("cn={},dc=example,dc=com", dn_value(v));
            let parsed = parse_dn(&dn).unwrap();
            assert_eq!(parsed[0][0].1, v, "{dn}");
            assert_eq!(parsed.len(), 3);
        }
    }

    #[test]
    fn dns_parse_or_are_refused() {
        let p = parse_dn("cn=Admins+ou=x, dc=example,dc=com").unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(
            p[0],
            vec![("cn".into(), "Admins".into()), ("ou".into(), "x".into())]
        );
        assert_eq!(parse_dn("cn=a\\2cb,dc=x").unwrap()[0][0].1, "a,b");
        assert!(parse_dn("1.3.6.1.4.1.1466.0=#04024869,dc=x").is_ok());
        for bad in [
            "",
            "dc=x,",
            "=x",
            "dc",
            "cn=a;b",
            "cn=a\\",
            "cn=a\\zz",
            "dc=x,,dc=y",
            "cn=#0",
        ] {
            assert!(parse_dn(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            first_rdn_value("cn=Ops Team,ou=groups,dc=x", "cn").as_deref(),
            Some("Ops Team")
        );
        assert_eq!(first_rdn_value("ou=x+cn=y,dc=x", "cn").as_deref(), Some("y"));
    }
}
