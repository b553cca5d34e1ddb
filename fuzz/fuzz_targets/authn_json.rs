//! Arbitrary bytes as the JSON bodies of the authentication API
//! (`POST {prefix}/api/v1/authn`, the verify, enroll and activate steps, the
//! push device and status calls) and the passwordless factor form: parsing
//! never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::portal::fuzzing::{
    AuthnRequest, DeviceAnswer, DeviceRegistration, FactorForm, StatusRequest, StepRequest,
};

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<AuthnRequest>(data);
    let _ = serde_json::from_slice::<StepRequest>(data);
    let _ = serde_json::from_slice::<DeviceRegistration>(data);
    let _ = serde_json::from_slice::<DeviceAnswer>(data);
    let _ = serde_json::from_slice::<StatusRequest>(data);
    let _ = serde_urlencoded::from_bytes::<FactorForm>(data);
});
