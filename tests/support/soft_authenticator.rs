//! A software WebAuthn authenticator for tests: one P-256 credential,
//! "none" attestation, a signature counter the test can move. It answers
//! the options the gateway sends with Okta's base64url fields
//! (`clientData`, `attestation`; `authenticatorData`, `signatureData`).
//! Shared by the library's unit tests and the integration tests.

#![allow(dead_code)]

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

pub fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

fn unb64(s: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .expect("base64url")
}

fn cbor_head(major: u8, n: usize, out: &mut Vec<u8>) {
    let m = major << 5;
    match n {
        0..=23 => out.push(m | n as u8),
        24..=255 => out.extend([m | 24, n as u8]),
        _ => {
            out.push(m | 25);
            out.extend((n as u16).to_be_bytes());
        }
    }
}

fn cbor_text(s: &str, out: &mut Vec<u8>) {
    cbor_head(3, s.len(), out);
    out.extend(s.as_bytes());
}

fn cbor_bytes(b: &[u8], out: &mut Vec<u8>) {
    cbor_head(2, b.len(), out);
    out.extend(b);
}

/// One software credential.
pub struct SoftKey {
    key: EcdsaKeyPair,
    pub cred_id: Vec<u8>,
    pub counter: u32,
    /// Whether the "user" is verified (PIN, biometrics).
    pub uv: bool,
    pub user_handle: Option<Vec<u8>>,
    pub origin: String,
}

impl SoftKey {
    pub fn new(origin: &str) -> Self {
        let key = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING).expect("p256 key");
        let mut cred_id = vec![0u8; 32];
        aws_lc_rs::rand::fill(&mut cred_id).expect("random");
        SoftKey {
            key,
            cred_id,
            counter: 0,
            uv: true,
            user_handle: None,
            origin: origin.to_owned(),
        }
    }

    fn cose_key(&self) -> Vec<u8> {
        let pk = self.key.public_key().as_ref();
        assert_eq!(pk.len(), 65, "uncompressed P-256 point");
        let mut out = vec![0xA5, 0x01, 0x02, 0x03, 0x26, 0x20, 0x01, 0x21];
        cbor_bytes(&pk[1..33], &mut out);
        out.push(0x22);
        cbor_bytes(&pk[33..65], &mut out);
        out
    }

    fn flags(&self, attested: bool) -> u8 {
        0x01 | if self.uv { 0x04 } else { 0 } | if attested { 0x40 } else { 0 }
    }

    fn client_data(&self, kind: &str, challenge: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "type": kind,
            "challenge": challenge,
            "origin": self.origin,
            "crossOrigin": false,
        }))
        .expect("json")
    }

    /// Answers creation options (`publicKey` of `navigator.credentials.create`).
    pub fn register(&mut self, options: &Value) -> Value {
        let rp_id = options["rp"]["id"].as_str().expect("rp.id");
        let challenge = options["challenge"].as_str().expect("challenge");
        self.user_handle = options["user"]["id"].as_str().map(unb64);
        let client_data = self.client_data("webauthn.create", challenge);
        let mut auth = Sha256::digest(rp_id.as_bytes()).to_vec();
        auth.push(self.flags(true));
        auth.extend(self.counter.to_be_bytes());
        auth.extend([0u8; 16]);
        auth.extend((self.cred_id.len() as u16).to_be_bytes());
        auth.extend(&self.cred_id);
        auth.extend(self.cose_key());
        let mut att = vec![0xA3];
        cbor_text("fmt", &mut att);
        cbor_text("none", &mut att);
        cbor_text("attStmt", &mut att);
        att.push(0xA0);
        cbor_text("authData", &mut att);
        cbor_bytes(&auth, &mut att);
        json!({
            "clientData": b64(&client_data),
            "attestation": b64(&att),
            "credentialId": b64(&self.cred_id),
        })
    }

    /// Answers request options (`publicKey` of `navigator.credentials.get`),
    /// for `rp_id`; the counter moves forward first.
    pub fn assert(&mut self, options: &Value, rp_id: &str) -> Value {
        self.counter += 1;
        self.assert_with_counter(options, rp_id, self.counter)
    }

    /// As [`Self::assert`], with a given counter (a cloned key's).
    pub fn assert_with_counter(&self, options: &Value, rp_id: &str, counter: u32) -> Value {
        let challenge = options["challenge"].as_str().expect("challenge");
        let client_data = self.client_data("webauthn.get", challenge);
        let mut auth = Sha256::digest(rp_id.as_bytes()).to_vec();
        auth.push(self.flags(false));
        auth.extend(counter.to_be_bytes());
        let mut signed = auth.clone();
        signed.extend(Sha256::digest(&client_data));
        let sig = self.key.sign(&SystemRandom::new(), &signed).expect("sign");
        let mut v = json!({
            "clientData": b64(&client_data),
            "authenticatorData": b64(&auth),
            "signatureData": b64(sig.as_ref()),
            "credentialId": b64(&self.cred_id),
        });
        if let Some(h) = &self.user_handle {
            v["userHandle"] = json!(b64(h));
        }
        v
    }
}
