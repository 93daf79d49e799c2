//! The namespace-entering RFC's composition, done with plain file
//! operations on a mounted nsproxyfs:
//!
//! ```text
//! mkdir vserver1; touch vserver1/net vserver1/uts
//! mkdir new_container; ln vserver1/net new_container/net
//! ```
//!
//! `new_container` then has all of the root's namespaces but vserver1's
//! network. Run as root: `cargo run --example compose -- /container_ns`.
//! Add `--keep` to leave the two containers in place.

use std::fs;
use std::path::Path;
use std::process::ExitCode;

fn status(dir: &Path) -> std::io::Result<Vec<(String, String, String)>> {
    Ok(fs::read_to_string(dir.join("status"))?
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f.len() == 4).then(|| (f[0].to_owned(), f[1].to_owned(), f[2].to_owned()))
        })
        .collect())
}

fn run(root: &Path, keep: bool) -> std::io::Result<()> {
    let vs = root.join("vserver1");
    let new = root.join("new_container");
    fs::create_dir(&vs)?;
    fs::File::create(vs.join("net"))?; // a fresh network namespace
    fs::File::create(vs.join("uts"))?; // a fresh uts namespace
    fs::create_dir(&new)?;
    fs::hard_link(vs.join("net"), new.join("net"))?;
    println!("new_container's namespaces:");
    for (kind, ns, from) in status(&new)? {
        let from = if from == "own" {
            "its own (linked from vserver1)".to_owned()
        } else {
            from
        };
        println!("  {kind:<7}{ns:<24}from {from}");
    }
    if !keep {
        fs::remove_dir(&new)?;
        fs::remove_dir(&vs)?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(root) = args.iter().find(|a| !a.starts_with("--")) else {
        eprintln!("usage: compose MOUNTPOINT [--keep]");
        return ExitCode::from(2);
    };
    match run(Path::new(root), args.iter().any(|a| a == "--keep")) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("compose: {e}");
            ExitCode::FAILURE
        }
    }
}
