//! The `aib` command line: `cargo install aib --features cli` (add `azure` for `--backend azure`).
//!
//! ```text
//! aib validate [--format text|json] FILE… [--parameters FILE] [-p NAME=VALUE]… [--subscription ID]
//!              [--resource-group RG] [--rg-location REGION]
//!                                        check templates (exit 0 valid, 1 invalid, 2 usage/I/O)
//! aib schema                             the template's JSON Schema
//! aib build TEMPLATE [--backend local|azure] [--state-dir DIR] [--output text|json|jsonl] [--cold] [--no-cache]
//!           [--parameters FILE] [-p NAME=VALUE]… [--rg-location REGION]
//!           [--allow-file-root DIR]… [--allow-source-net CIDR]… [--allow-output-root DIR]… [--guest-outbound]
//!           [--resource-group RG] [--subscription ID] [--arm-endpoint URL] [--storage-endpoint URL] [--ssh-port N]
//!                                        build an image (exit 0 Succeeded, 1 Failed/Canceled, 3 PartiallySucceeded)
//! aib gc [--backend local|azure] [--state-dir DIR] [--min-age-secs N]
//!                                        remove what killed or aborted builds left (and expired warm states)
//! aib images [--state-dir DIR]           list the local catalog and gallery
//! aib images import URN FILE --sha256 SUM
//! aib warm ls|prune [--all] [--state-dir DIR]
//! aib cache ls|prune [--all] [--state-dir DIR]
//!                                        the saved VM states local builds restore
//! aib completions bash|zsh|fish|elvish|powershell
//!                                        a shell completion script on stdout
//! aib testkit arm-server [--port N] [--guests sshd] [--windows-guests] [--image REGION:PUBLISHER:OFFER:SKU:VERSION]… [--azurite URL]
//!                                        the ARM test server, standalone
//! ```
//! Every command: `-v`/`-vv` (debug, trace logs on stderr), `-q` (errors only); `RUST_LOG` wins.

mod azure;
mod build;
mod display;
mod validate;

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;

/// `aib --version`: the version and the backends compiled in.
#[cfg(feature = "azure")]
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (backends: local, azure)");
#[cfg(not(feature = "azure"))]
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (backends: local; `--features cli,azure` adds azure)");

#[derive(Parser)]
#[command(
    name = "aib",
    version = VERSION,
    about = "Azure VM Image Builder templates, built anywhere",
    after_help = "Exit codes: 0 success; 1 invalid template, or a build that Failed or was Canceled; \
                  2 usage or I/O error; 3 a build that PartiallySucceeded.\n\
                  Logs: RUST_LOG (for example RUST_LOG=debug, or aib=debug,aib_azure=trace) overrides -v/-q."
)]
struct Cli {
    /// More log lines on stderr: -v debug, -vv trace (ARM retries, SSH connect attempts, every event).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Only errors on stderr, and no progress display.
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    Text,
    Json,
    /// One JSON object a line: every event as it happens (`{"event": "stepStarted", …}`), then
    /// `{"report": …}`.
    Jsonl,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BackendKind {
    Local,
    Azure,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Guests {
    None,
    Sshd,
}

#[derive(Subcommand)]
enum Command {
    /// Check templates: one line per diagnostic, `FILE: PATH: CODE: message (hint)`.
    Validate {
        /// Template files (`-` reads standard input).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        #[command(flatten)]
        params: validate::TemplateParams,
        /// The subscription `subscription()` and `resourceId()` see (default `AZURE_SUBSCRIPTION_ID`).
        #[arg(long)]
        subscription: Option<String>,
        /// The resource group `resourceGroup()` and `resourceId()` see.
        #[arg(long)]
        resource_group: Option<String>,
    },
    /// Print the JSON Schema of an image template.
    Schema,
    /// Build the image a template describes.
    Build {
        /// The template.
        template: PathBuf,
        /// Where to build.
        #[arg(long, value_enum, default_value_t = BackendKind::Local)]
        backend: BackendKind,
        /// State directory (catalog, gallery, runs, outputs, ledger, logs).
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// `json` prints the run report.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        output: Format,
        #[command(flatten)]
        boundary: build::Boundary,
        #[command(flatten)]
        params: validate::TemplateParams,
        #[command(flatten)]
        azure: azure::AzureArgs,
    },
    /// Delete what killed builds, or builds kept under `errorHandling: abort`, left behind.
    Gc {
        /// Which backend's resources.
        #[arg(long, value_enum, default_value_t = BackendKind::Local)]
        backend: BackendKind,
        /// State directory.
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Leave runs younger than this many seconds alone (default 0; for Azure resources found
        /// only by their tags, which may be another machine's live build, 86400).
        #[arg(long)]
        min_age_secs: Option<u64>,
        #[command(flatten)]
        azure: azure::AzureArgs,
    },
    /// Test servers, run standalone (like Azurite).
    Testkit {
        #[command(subcommand)]
        server: TestServer,
    },
    /// List or prune the saved VM states local builds restore instead of booting.
    Warm {
        /// State directory.
        #[arg(long, global = true)]
        state_dir: Option<PathBuf>,
        #[command(subcommand)]
        action: WarmAction,
    },
    /// List or prune the step cache's resume points (a build starts at the longest one its
    /// steps match, and runs only the rest).
    Cache {
        /// State directory.
        #[arg(long, global = true)]
        state_dir: Option<PathBuf>,
        #[command(subcommand)]
        action: CacheAction,
    },
    /// Print a shell completion script: `aib completions bash > ~/.local/share/bash-completion/completions/aib`,
    /// `aib completions zsh > ~/.zfunc/_aib`, `aib completions fish > ~/.config/fish/completions/aib.fish`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// List (or import) images.
    Images {
        /// State directory.
        #[arg(long)]
        state_dir: Option<PathBuf>,
        #[command(subcommand)]
        action: Option<ImagesAction>,
    },
}

#[derive(Subcommand)]
enum TestServer {
    /// The ARM test server on 127.0.0.1 (async operations, ARM errors, fault injection).
    ArmServer {
        /// Port (0 = a free one).
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// What backs the VMs it creates: nothing, or an sshd per VM (needs root).
        #[arg(long, value_enum, default_value_t = Guests::None)]
        guests: Guests,
        /// Back Windows VMs with fake Windows machines behind WinRM over HTTPS (needs `openssl`).
        #[arg(long)]
        windows_guests: bool,
        /// A marketplace image version, `REGION:PUBLISHER:OFFER:SKU:VERSION` (repeatable).
        #[arg(long)]
        image: Vec<String>,
        /// Keep storage accounts and exported disks in this Azurite
        /// (`http://127.0.0.1:10000/devstoreaccount1`; needs the `azure` feature).
        #[arg(long)]
        azurite: Option<String>,
    },
}

#[derive(Subcommand)]
enum CacheAction {
    /// List them, least recently used first, with their step, size and last use.
    Ls,
    /// Delete those over a warm state that is gone, then the least recently used past the
    /// size limit (every one with --all; do not use --all while a build runs).
    Prune {
        /// Delete every resume point.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Subcommand)]
enum WarmAction {
    /// List them, with their source, size and age.
    Ls,
    /// Delete the expired ones (every one with --all).
    Prune {
        /// Delete every saved state, expired or not.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Subcommand)]
enum ImagesAction {
    /// Import a disk (qcow2, raw or vhd; a path or an http(s) URL) into the catalog.
    Import {
        /// `publisher:offer:sku:version`.
        urn: String,
        /// The file or URL.
        source: String,
        /// Its SHA-256 (required: nothing unverified enters the catalog).
        #[arg(long)]
        sha256: String,
        /// The image is Windows.
        #[arg(long)]
        windows: bool,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(2) } else { ExitCode::SUCCESS };
        }
    };
    init_logs(cli.verbose, cli.quiet);
    let quiet = cli.quiet;
    match cli.command {
        Command::Validate { files, format, params, subscription, resource_group } => {
            validate::validate(&files, format != Format::Text, &params, subscription.as_deref(), resource_group.as_deref())
        }
        Command::Schema => {
            println!("{}", serde_json::to_string_pretty(&aib::template::template_schema()).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Command::Build { template, backend: BackendKind::Local, state_dir, output, boundary, params, azure } => {
            let ctx = build::ArmContext {
                params,
                subscription: azure.subscription.clone(),
                resource_group: azure.resource_group.clone(),
                context: None,
            };
            build::runtime(build::build(template, state_dir, boundary, ctx, build::Output { format: output, quiet }))
        }
        Command::Build { template, backend: BackendKind::Azure, state_dir, output, boundary, params, azure } => {
            let ctx = build::ArmContext {
                params,
                subscription: azure.subscription.clone(),
                resource_group: azure.resource_group.clone(),
                context: None,
            };
            build::runtime(azure::build(template, azure, boundary, ctx, state_dir, build::Output { format: output, quiet }))
        }
        Command::Gc { backend: BackendKind::Local, state_dir, min_age_secs, .. } => {
            build::runtime(build::gc(state_dir, min_age_secs.unwrap_or(0)))
        }
        Command::Gc { backend: BackendKind::Azure, state_dir, min_age_secs, azure } => {
            build::runtime(azure::gc(azure, state_dir, min_age_secs))
        }
        Command::Testkit { server: TestServer::ArmServer { port, guests, windows_guests, image, azurite } } => build::runtime(async move {
            let host: Option<std::sync::Arc<dyn aib_testkit::guest::GuestHost>> = match guests {
                Guests::None => None,
                Guests::Sshd => Some(std::sync::Arc::new(aib_testkit::guest::SshdGuests::new()?)),
            };
            let windows: Option<std::sync::Arc<dyn aib_testkit::guest::GuestHost>> = match windows_guests {
                true => Some(std::sync::Arc::new(aib_testkit::windows::WindowsGuests::new()?)),
                false => None,
            };
            #[cfg_attr(not(feature = "azure"), allow(unused_mut))]
            let mut s = aib_testkit::arm::ArmServer::start_with_guests(port, host, windows).await?;
            if let Some(endpoint) = azurite {
                #[cfg(feature = "azure")]
                {
                    s = s.with_disk_store(std::sync::Arc::new(aib_testkit::arm::storage::AzuriteDisks::new(endpoint)));
                }
                #[cfg(not(feature = "azure"))]
                return Err(format!("--azurite {endpoint}: this aib was built without the `azure` feature").into());
            }
            for i in &image {
                let p: Vec<&str> = i.split(':').collect();
                if p.len() != 5 {
                    return Err(format!("--image `{i}`: expected REGION:PUBLISHER:OFFER:SKU:VERSION").into());
                }
                s.add_marketplace_image(p[0], p[1], p[2], p[3], p[4]);
            }
            // Ctrl-C is caught from before the first line is printed: a caller that reads the
            // line and signals at once stops the server cleanly.
            let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
            println!("ARM test server listening on {}", s.url());
            if let Some(port) = s.guest_port() {
                println!("VM guests: sshd on port {port} of each VM's address (aib build --ssh-port {port})");
            }
            if let Some(port) = s.windows_guest_port() {
                println!("Windows VM guests: WinRM over HTTPS on port {port} of each VM's address (aib build --winrm-port {port})");
            }
            interrupt.recv().await;
            // What Microsoft's API specs did not allow is said once more on the way out.
            let v = s.take_spec_violations();
            if !v.is_empty() {
                eprintln!("the ARM test server saw {} request(s) or answer(s) the API specs do not allow:", v.len());
                for v in v {
                    eprintln!("  {v}");
                }
                return Ok(ExitCode::FAILURE);
            }
            Ok(ExitCode::SUCCESS)
        }),
        Command::Warm { state_dir, action } => build::runtime(build::warm(
            state_dir,
            match action {
                WarmAction::Ls => None,
                WarmAction::Prune { all } => Some(all),
            },
        )),
        Command::Cache { state_dir, action } => build::runtime(build::cache(
            state_dir,
            match action {
                CacheAction::Ls => None,
                CacheAction::Prune { all } => Some(all),
            },
        )),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "aib", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Images { state_dir, action } => build::runtime(build::images(
            state_dir,
            action.map(|ImagesAction::Import { urn, source, sha256, windows }| (urn, source, sha256, windows)),
            quiet,
        )),
    }
}

/// Logs to stderr through `tracing`: warnings by default, `-v` debug, `-vv` trace (winrm-rs at
/// debug), `-q` errors;
/// `RUST_LOG` wins. The library itself never prints.
fn init_logs(verbose: u8, quiet: bool) {
    let level = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "debug",
        // winrm-rs writes whole SOAP bodies (environment values, file contents) at trace,
        // past aib's masking: `-vv` keeps it at debug; only an explicit RUST_LOG goes further.
        _ => "trace,winrm_rs=debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    use std::io::IsTerminal;
    let ansi = std::io::stderr().is_terminal();
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).try_init();
}
