//! Puts the git revision into `--version` (`SYNCDATA_GIT_REV`): from the
//! environment when set (builds outside a checkout, e.g. an image), else
//! from `git rev-parse`, else "unknown". Never fails the build.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (!s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-env-changed=SYNCDATA_GIT_REV");
    let rev = std::env::var("SYNCDATA_GIT_REV")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| {
            let rev = git(&["rev-parse", "--short=12", "HEAD"])?;
            // Rebuild when HEAD moves (a commit, a checkout).
            if let Some(p) = git(&["rev-parse", "--git-path", "HEAD"]) {
                println!("cargo:rerun-if-changed={p}");
            }
            if let Some(head) = git(&["symbolic-ref", "-q", "HEAD"]) {
                if let Some(p) = git(&["rev-parse", "--git-path", &head]) {
                    println!("cargo:rerun-if-changed={p}");
                }
            }
            Some(rev)
        })
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=SYNCDATA_GIT_REV={rev}");
}
