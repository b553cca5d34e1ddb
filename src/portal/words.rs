//! The names of factor kinds and the like as the pages show them, in the
//! request's language (see [`crate::i18n`]): the catalogs' `factor.*` keys,
//! by the kind's short name (`totp`, `sms`, `call`, `email`, `push`).

use crate::factors::{self, Address, Factor, FactorKind};
use crate::i18n::{t, t_opt, tf};

fn key(kind: &dyn FactorKind, what: &str) -> String {
    format!("factor.{}.{what}", kind.short_name())
}

/// "Text message", "Authenticator app", ...
/// (A kind no catalog names yet keeps its own English words.)
pub fn label(kind: &dyn FactorKind) -> &'static str {
    t_opt(&key(kind, "label")).unwrap_or_else(|| kind.label())
}

/// The enrollment chooser's entry.
pub fn enroll_label(kind: &dyn FactorKind) -> &'static str {
    t_opt(&key(kind, "enroll")).unwrap_or_else(|| kind.enroll_label())
}

/// The factors page's "add one" link (and the address form's title).
pub fn add_label(kind: &dyn FactorKind) -> &'static str {
    t_opt(&key(kind, "add")).unwrap_or_else(|| kind.add_label())
}

/// The label of an address field.
pub fn field_label(a: Address) -> &'static str {
    match a {
        Address::Phone => t("factor.phone_field"),
        Address::Email => t("factor.email_field"),
    }
}

/// How one of the user's factors is named on the challenge page: the kind and
/// where it goes (a masked address, a device name).
pub fn describe(f: &Factor) -> String {
    let Some(kind) = factors::kind_of(&f.record.factor_type) else {
        return t("factor.totp.label").to_owned();
    };
    if let Some(a) = kind.address() {
        let value = f.record.profile[a.profile_key()].as_str().unwrap_or_default();
        return tf("factor.to", &[("label", &label(kind)), ("to", &a.mask(value))]);
    }
    if kind.ceremony() {
        // Security keys go by the names their users gave them.
        let name = f.record.profile["authenticatorName"].as_str().unwrap_or_default();
        return tf("factor.webauthn.named", &[("name", &name)]);
    }
    if kind.answered_by_device() {
        return match f.record.profile["deviceName"].as_str() {
            Some(d) => tf("factor.push_to", &[("device", &d)]),
            None => t("factor.push_to_device").to_owned(),
        };
    }
    label(kind).to_owned()
}
