//! Progress on stderr: bars on a terminal, one plain line per event otherwise, nothing
//! with `--quiet` (errors still print). stdout stays free for data.

use std::io::IsTerminal as _;
use std::sync::atomic::{AtomicU64, Ordering};

use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::pathinfo::PathInfo;

enum Mode {
    Quiet,
    Lines,
    Bars {
        multi: MultiProgress,
        compress: ProgressBar,
        upload: ProgressBar,
        publish: ProgressBar,
    },
}

pub struct Reporter {
    mode: Mode,
    sent: AtomicU64,
}

impl Reporter {
    pub fn new(quiet: bool) -> Self {
        let mode = if quiet {
            Mode::Quiet
        } else if std::io::stderr().is_terminal()
            && std::env::var_os("TERM").is_some_and(|t| t != "dumb")
        {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            let style = |template: &str| {
                ProgressStyle::with_template(template)
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> ")
            };
            let bytes = "{prefix:>10} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}";
            let compress = multi.add(ProgressBar::new(0).with_prefix("compress"));
            compress.set_style(style(bytes));
            let upload = multi.add(ProgressBar::new(0).with_prefix("upload"));
            upload.set_style(style(bytes));
            let publish = multi.add(ProgressBar::new(0).with_prefix("publish"));
            publish.set_style(style("{prefix:>10} [{bar:30}] {pos}/{len} paths"));
            Mode::Bars {
                multi,
                compress,
                upload,
                publish,
            }
        } else {
            Mode::Lines
        };
        Self {
            mode,
            sent: AtomicU64::new(0),
        }
    }

    pub fn start(&self, paths: usize, nar_bytes: u64) {
        match &self.mode {
            Mode::Bars {
                compress, publish, ..
            } => {
                compress.set_length(nar_bytes);
                publish.set_length(paths as u64);
            }
            Mode::Lines => eprintln!("pushing {paths} paths ({} of NARs)", HumanBytes(nar_bytes)),
            Mode::Quiet => {}
        }
    }

    pub fn compressed(&self, info: &PathInfo, file_size: u64) {
        match &self.mode {
            Mode::Bars {
                compress, upload, ..
            } => {
                compress.inc(info.nar_size);
                upload.inc_length(file_size);
            }
            Mode::Lines => eprintln!(
                "{}: compressed {} to {}",
                info.path,
                HumanBytes(info.nar_size),
                HumanBytes(file_size)
            ),
            Mode::Quiet => {}
        }
    }

    /// Upload bytes handed to the network (all requests).
    pub fn sent(&self, bytes: u64) {
        self.sent.fetch_add(bytes, Ordering::Relaxed);
        if let Mode::Bars { upload, .. } = &self.mode {
            upload.inc(bytes);
        }
    }

    pub fn sent_total(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    pub fn published(&self, info: &PathInfo) {
        match &self.mode {
            Mode::Bars { publish, .. } => publish.inc(1),
            Mode::Lines => eprintln!("{}: published", info.path),
            Mode::Quiet => {}
        }
    }

    /// A status line (printed above the bars on a terminal).
    pub fn line(&self, text: String) {
        match &self.mode {
            Mode::Bars { multi, .. } => {
                let _ = multi.println(text);
            }
            Mode::Lines => eprintln!("{text}"),
            Mode::Quiet => {}
        }
    }

    pub fn finish(&self) {
        if let Mode::Bars {
            compress,
            upload,
            publish,
            ..
        } = &self.mode
        {
            compress.finish_and_clear();
            upload.finish_and_clear();
            publish.finish_and_clear();
        }
    }

    pub fn quiet(&self) -> bool {
        matches!(self.mode, Mode::Quiet)
    }
}
