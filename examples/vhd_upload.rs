//! Uploads a fixed VHD from this machine to a page blob, sending only its data:
//! `vhd_upload FILE URL` with `AZURE_STORAGE_KEY` or `AZURE_STORAGE_SAS_TOKEN` set.
//! Prints the seconds taken and the bytes sent (used by `benches/vhd_upload_vs_azcopy.sh`).

use aib::azure::upload::{BlobTarget, upload_page_blob};
use std::process::ExitCode;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [file, url] = args.as_slice() else {
        eprintln!("usage: vhd_upload FILE URL  (AZURE_STORAGE_KEY or AZURE_STORAGE_SAS_TOKEN in the environment)");
        return ExitCode::from(2);
    };
    let target = match BlobTarget::from_uri_env(url) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let started = std::time::Instant::now();
    match upload_page_blob(std::path::Path::new(file), &target, 8, &aib::NullSink).await {
        Ok(s) => {
            println!("seconds={:.3} sent={} size={} writes={}", started.elapsed().as_secs_f64(), s.sent, s.size, s.writes);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("upload failed: {e}");
            ExitCode::from(1)
        }
    }
}
