//! `ferry cert`: the cluster's certificate authority and node certificates
//! (see docs/CERTIFICATES.md). The work is in `ferry-tls`.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::exit::{report, BAD_INPUT, SUCCESS};

/// `ferry cert …`
#[derive(Debug, Args)]
pub struct CertArgs {
    #[command(subcommand)]
    command: CertCmd,
}

#[derive(Debug, Subcommand)]
enum CertCmd {
    /// Create the cluster CA: DIR/ca.crt and DIR/ca.key (mode 0600).
    Init {
        /// Directory for the CA's files (created with mode 0700 if missing).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// Issue a node certificate signed by the CA in DIR: DIR/NODE.crt and
    /// DIR/NODE.key (mode 0600).
    Issue {
        /// Directory holding ca.crt and ca.key.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// The node's name, as given to `ferryd --node` (letters, digits,
        /// dots and dashes).
        #[arg(long, value_name = "NAME")]
        node: String,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
}

/// Run `ferry cert`.
pub fn run(args: CertArgs) -> u8 {
    match args.command {
        CertCmd::Init { dir, force } => match ferry_tls::init_ca(&dir, force) {
            Ok(p) => {
                println!("created {} and {}", p.cert.display(), p.key.display());
                SUCCESS
            }
            Err(e) => report(BAD_INPUT, e),
        },
        CertCmd::Issue { dir, node, force } => match ferry_tls::issue(&dir, &node, force) {
            Ok(p) => {
                println!("issued {} and {}", p.cert.display(), p.key.display());
                SUCCESS
            }
            Err(e) => report(BAD_INPUT, e),
        },
    }
}
