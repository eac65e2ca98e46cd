//! Records the git commit Herald is built from, so that `herald --version`, the start-up line,
//! `/metrics` and `herald bench --json` say exactly which build ran: the package version stays
//! the same over many commits. Built outside a git checkout (a source archive), it records none.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    // Without it, a build outside git would run this again after every change to the sources.
    println!("cargo:rerun-if-changed=build.rs");
    let commit = commit_from_git();
    let version = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    let build = match &commit {
        Some(commit) => format!("{version} ({commit})"),
        None => version,
    };
    // Not named HERALD_…: cargo also sets these for `cargo run` and `cargo test`, and Herald
    // warns of every HERALD_ variable it does not know.
    println!(
        "cargo:rustc-env=BUILT_FROM_COMMIT={}",
        commit.unwrap_or_default()
    );
    println!("cargo:rustc-env=BUILT_VERSION={build}");
}

/// The checked-out commit (ten hex digits), and the files whose change means another one is.
fn commit_from_git() -> Option<String> {
    let git_dir = PathBuf::from(git(&["rev-parse", "--absolute-git-dir"])?);
    // Branches live in the common directory (a worktree's own has only its HEAD).
    let common = git(&["rev-parse", "--path-format=absolute", "--git-common-dir"])
        .map_or_else(|| git_dir.clone(), PathBuf::from);
    // HEAD names the branch; the branch's file (or packed-refs) names the commit. A branch
    // packed away by `git gc` has no file until its next commit creates one, so the branches'
    // directory is watched too (cargo looks through it), and HEAD's log, which every commit,
    // checkout and reset appends to.
    watch(&git_dir.join("HEAD"));
    watch(&git_dir.join("logs").join("HEAD"));
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watch(&common.join(branch));
    }
    watch(&common.join("refs").join("heads"));
    watch(&common.join("packed-refs"));
    git(&["rev-parse", "--short=10", "HEAD"])
}

fn watch(path: &Path) {
    // A path that does not exist would make cargo run this script on every build.
    if path.exists() {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_owned())
}
