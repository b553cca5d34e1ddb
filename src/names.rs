//! What a name shown to people (a login, a display name, a group, a
//! security key's or a device's label) may hold: no control characters and
//! none of the invisible ones that make two different names look alike in
//! the console and the logs. Every source of names checks with these: the
//! admin API, the users file, key and device enrollment.

/// True for the characters a name shown to people (a login, a display name,
/// a group; key and device names take [`is_hidden_in_label`]) may not hold: control
/// characters and the invisible ones (zero-width, bidirectional overrides,
/// soft hyphen, byte order mark) that make two different names look alike
/// in the console and the logs (`alice\u{200B}`, `\u{202E}ecila`).
pub fn is_hidden_char(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{034F}'
                | '\u{061C}'
                | '\u{115F}'
                | '\u{1160}'
                | '\u{180E}'
                | '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{2069}'
                | '\u{3164}'
                | '\u{FEFF}'
                | '\u{FFA0}'
                | '\u{FFF9}'..='\u{FFFB}'
                | '\u{E0000}'..='\u{E007F}'
        )
}

/// [`is_hidden_char`] for a label a user chooses for a security key or a
/// device: the zero-width joiner and non-joiner are let through there (emoji
/// sequences such as 🧑‍💻, Persian and Indic text).
pub fn is_hidden_in_label(c: char) -> bool {
    is_hidden_char(c) && !matches!(c, '\u{200C}' | '\u{200D}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_may_not_hide_characters() {
        for c in [
            '\n',
            '\u{200B}',
            '\u{202E}',
            '\u{2066}',
            '\u{FEFF}',
            '\u{00AD}',
            '\u{2028}',
            '\u{3164}',
            '\u{E0041}',
        ] {
            assert!(is_hidden_char(c), "{c:?}");
        }
        assert!(!"Zoë's key 🔑 (Ünïcode)".chars().any(is_hidden_char));
        assert!(!"🧑\u{200D}💻 می\u{200C}خواهم".chars().any(is_hidden_in_label));
        assert!("\u{202E}yek".chars().any(is_hidden_in_label));
    }
}
