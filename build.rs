//! Stamps the binary with the source revision it was built from, for the
//! `bedrock_broker_build_info{version,revision}` metric.
//!
//! `BEDROCK_BROKER_REVISION` wins (the Docker build has no `.git`: pass
//! `--build-arg REVISION=$(git rev-parse HEAD)`); otherwise git is asked;
//! otherwise the revision is `unknown`.
//!
//! Also packs the binary's relative relocations on glibc Linux (below).

use std::process::Command;

const VAR: &str = "BEDROCK_BROKER_REVISION";

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (out.status.success() && !text.is_empty()).then(|| text.to_owned())
}

fn main() {
    println!("cargo:rerun-if-env-changed={VAR}");
    let revision = match std::env::var(VAR) {
        Ok(r) if !r.trim().is_empty() => r.trim().to_owned(),
        _ => {
            // Rebuild when HEAD moves: a new commit, or another branch.
            for path in ["HEAD", "packed-refs"] {
                if let Some(p) = git(&["rev-parse", "--git-path", path]) {
                    println!("cargo:rerun-if-changed={p}");
                }
            }
            if let Some(reference) = git(&["symbolic-ref", "-q", "HEAD"]) {
                if let Some(p) = git(&["rev-parse", "--git-path", &reference]) {
                    println!("cargo:rerun-if-changed={p}");
                }
            }
            git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".to_owned())
        }
    };
    // Only what is safe in a label value and a log line.
    let revision: String = revision
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "._-+".contains(*c))
        .take(64)
        .collect();
    let revision = if revision.is_empty() {
        "unknown".to_owned()
    } else {
        revision
    };
    println!("cargo:rustc-env={VAR}={revision}");
    pack_relative_relocations();
    order_hot_code();
}

/// The functions a sidecar runs (start-up, then serving every kind of
/// request), listed in `link/hot-code.txt`, go first and together in the
/// binary's code. Left where the compiler puts them, they are spread over
/// all 15.5 MiB of it, and every page one of them touches is read in with
/// its neighbours (the kernel maps up to 64 KiB around a fault): 8.5 MiB
/// of code resident at 64 busy connections to run about 3 MiB. Listed
/// first, they fill those 3 MiB, and the rest is only read when it runs.
///
/// The list names symbols, whose hashes depend on the toolchain, the
/// dependencies' versions and the release profile: a name that no longer
/// matches is skipped (that function is just left where it was). `make
/// hot-code` writes the list again, and `make bench` says how much of it
/// the binary it measures still matches.
///
/// Opt-in (`BEDROCK_BROKER_HOT_CODE=1`, which the Dockerfile, `make bench`
/// and the packaging build set): only lld knows the option, and whether
/// rustc links with it (rustup's toolchains do on x86-64 Linux since 1.90;
/// a distribution's, or a configured linker, may not) is not something a
/// build script can ask. Passed to x86-64 glibc release builds only: the
/// names match nothing else.
fn order_hot_code() {
    const LIST: &str = "link/hot-code.txt";
    const SWITCH: &str = "BEDROCK_BROKER_HOT_CODE";
    println!("cargo:rerun-if-changed={LIST}");
    println!("cargo:rerun-if-env-changed={SWITCH}");
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    if var(SWITCH) != "1"
        || var("TARGET") != "x86_64-unknown-linux-gnu"
        || var("PROFILE") != "release"
    {
        return;
    }
    let list = std::path::Path::new(&var("CARGO_MANIFEST_DIR")).join(LIST);
    if !list.is_file() {
        println!("cargo:warning={SWITCH}=1 but {LIST} is missing: code laid out as compiled");
        return;
    }
    // -Xlinker, not -Wl,: a comma in the path would split it.
    for arg in [
        "-Xlinker".to_owned(),
        format!("--symbol-ordering-file={}", list.display()),
        "-Xlinker".to_owned(),
        "--no-warn-symbol-ordering".to_owned(),
    ] {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
}

/// A position-independent binary carries one 24-byte record for every
/// pointer in its read-only data (31,763 of them, 744 KiB), which the loader
/// reads whole at every start: 744 KiB of every sidecar's RSS, for as long
/// as it runs. Packed (`DT_RELR`) the same relocations take a few KiB.
///
/// Only where the C library linked against can load such a binary
/// (glibc 2.36 and later, as in the image's Debian 12): rust-lld marks a
/// packed binary as needing `GLIBC_ABI_DT_RELR` without asking the
/// library, so on an older system the binary would build and then refuse
/// to start. Cross builds are left unpacked: their C library is not found
/// by asking the host's compiler. A linker too old for the option (GNU ld
/// before 2.38) warns and ignores it.
fn pack_relative_relocations() {
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    println!("cargo:rerun-if-env-changed=CC");
    if var("CARGO_CFG_TARGET_OS") == "linux"
        && var("CARGO_CFG_TARGET_ENV") == "gnu"
        && var("TARGET") == var("HOST")
        && glibc_loads_packed_relocations()
    {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

/// Whether the `libc.so.6` the C compiler links against defines the
/// version that marks `DT_RELR` support.
fn glibc_loads_packed_relocations() -> bool {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let Ok(out) = Command::new(cc).arg("-print-file-name=libc.so.6").output() else {
        return false;
    };
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    // Not found, the compiler echoes the bare name back.
    if !out.status.success() || !path.starts_with('/') {
        return false;
    }
    println!("cargo:rerun-if-changed={path}");
    std::fs::read(&path)
        .map(|lib| lib.windows(17).any(|w| w == b"GLIBC_ABI_DT_RELR"))
        .unwrap_or(false)
}
