//! Release builds of the `portcullis` binary place the functions that start-up
//! and the request path run next to each other (`packaging/symbol-order.txt`,
//! written by `bench/order.sh`), so that the kernel maps a few MB of the binary
//! instead of most of it: the pages around each first call become resident,
//! and scattered code made about 10 MB of the 17 MB text resident at start-up
//! (see bench/results/README.md, "Twelfth round").
//!
//! They also pack their relative relocations (DT_RELR, see below).
//!
//! Only where the linker is known to be LLD (rustc's default on
//! x86_64-unknown-linux-gnu since 1.90) and no other linker was chosen: GNU ld
//! does not know the option. `PORTCULLIS_SYMBOL_ORDER=0` turns the order off,
//! `PORTCULLIS_PACKED_RELOCS=0` the packing. A name the binary no longer has
//! is skipped without a word; `packaging/check-symbol-order.sh` (run by CI)
//! fails when fewer than 99 % still match, and `bench/order.sh` writes the
//! list anew.

use std::env;
use std::path::Path;

const ORDER: &str = "packaging/symbol-order.txt";

fn main() {
    println!("cargo:rerun-if-changed={ORDER}");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=PORTCULLIS_SYMBOL_ORDER");
    let var = |k: &str| env::var(k).unwrap_or_default();
    let release = var("PROFILE") == "release";
    let lld_by_default = var("TARGET") == "x86_64-unknown-linux-gnu";
    // Another linker, or rustc told to use one: leave the link alone.
    let flags = var("CARGO_ENCODED_RUSTFLAGS");
    let other_linker = env::var_os("RUSTC_LINKER").is_some()
        || ["linker", "link-self-contained", "fuse-ld"]
            .iter()
            .any(|f| flags.contains(f));
    if !(release && lld_by_default && !other_linker) {
        return;
    }
    // The relative relocations of a position-independent binary (one per
    // pointer in its vtables and constant tables, some 35 000 here) packed as
    // DT_RELR: about 15 KB instead of 830 KB that the dynamic loader reads,
    // and so maps, at every start. Needs glibc 2.36 or later (Debian 12); the
    // linker records that as a version the binary requires, so an older
    // glibc refuses to load it with a clear message instead of misreading it.
    // `PORTCULLIS_PACKED_RELOCS=0` links the classic table.
    println!("cargo:rerun-if-env-changed=PORTCULLIS_PACKED_RELOCS");
    if var("PORTCULLIS_PACKED_RELOCS") != "0" {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    let off = var("PORTCULLIS_SYMBOL_ORDER") == "0";
    let file = Path::new(&var("CARGO_MANIFEST_DIR")).join(ORDER);
    if !off && file.is_file() {
        println!(
            "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
            file.display()
        );
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
}
