//! Log setup: `BERTH_LOG` chooses what is logged, within caps that no setting lifts. Some dependencies log
//! whole request bodies or messages at debug or trace level: bollard each create body (a session's
//! environment, credentials included) and each inspect answer, tungstenite each WebSocket message (hellos with
//! tokens and credentials, terminal input). Their targets never log below INFO, whatever `BERTH_LOG` says.

use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::{EnvFilter, FilterExt, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

use crate::cli::LogFormat;

/// The targets (and every module under them) capped at [`CAP`]: at debug or trace they log bodies or messages
/// that may carry credentials, tokens or terminal input.
pub const CAPPED_TARGETS: [&str; 6] = ["bollard", "tungstenite", "tokio_tungstenite", "hyper", "hyper_util", "h2"];

/// The most verbose level a capped target logs at.
pub const CAP: LevelFilter = LevelFilter::INFO;

/// The filter `BERTH_LOG` gives (`info` when unset or unreadable) and the caps, which both must let an event
/// through.
pub fn filter(spec: Option<&str>) -> impl tracing_subscriber::layer::Filter<Registry> + Send + Sync + 'static {
    let env = spec.and_then(|s| EnvFilter::try_new(s).ok()).unwrap_or_else(|| EnvFilter::new("info"));
    let caps = CAPPED_TARGETS
        .iter()
        .fold(Targets::new().with_default(LevelFilter::TRACE), |t, target| t.with_target(*target, CAP));
    caps.and(env)
}

/// A log layer writing to `writer`, as text or JSON, behind [`filter`].
pub fn layer<W>(spec: Option<&str>, json: bool, writer: W) -> Box<dyn Layer<Registry> + Send + Sync>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let fmt = tracing_subscriber::fmt::layer().with_writer(writer);
    let fmt = if json { fmt.json().flatten_event(true).with_current_span(true).boxed() } else { fmt.boxed() };
    fmt.with_filter(filter(spec)).boxed()
}

/// Installs the process's log subscriber (stderr, `BERTH_LOG`), and routes the `log` crate's records (bollard
/// and tungstenite use it) through the same filter.
pub fn init(format: LogFormat) {
    use std::io::IsTerminal;
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let spec = std::env::var("BERTH_LOG").ok();
    let _ = tracing_subscriber::registry().with(layer(spec.as_deref(), json, std::io::stderr)).try_init();
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().map_err(|_| std::io::Error::other("poisoned"))?.extend_from_slice(b);
            Ok(b.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn logged(spec: &str, emit: impl FnOnce()) -> String {
        let buf = Buffer::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::registry().with(layer(Some(spec), false, move || writer.clone()));
        tracing::subscriber::with_default(subscriber, emit);
        let bytes = buf.0.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[test]
    fn capped_targets_log_nothing_below_info_whatever_the_filter_says() {
        for spec in ["trace", "debug", "bollard=trace", "bollard::docker=trace,tungstenite=trace", "info,hyper=debug"] {
            let text = logged(spec, || {
                tracing::debug!(target: "bollard::docker", "{{\"Env\":[\"API_KEY=secret-1\"]}}");
                tracing::trace!(target: "tungstenite::protocol", "Received message {{\"credentials\":\"secret-2\"}}");
                tracing::debug!(target: "hyper_util::client", "secret-3");
                tracing::info!(target: "bollard::docker", "an info line");
            });
            assert!(!text.contains("secret"), "{spec}: {text}");
            assert!(text.contains("an info line"), "{spec}: capped at INFO, not silenced: {text}");
        }
    }

    #[test]
    fn records_of_the_log_crate_are_capped_too() {
        // bollard and tungstenite log through the `log` crate; `init` routes it into tracing.
        let _ = tracing_log::LogTracer::init();
        let text = logged("trace,bollard=trace,tungstenite=trace", || {
            log::debug!(target: "bollard::docker", "{{\"Env\":[\"API_KEY=secret-4\"]}}");
            log::trace!(target: "tungstenite::protocol", "Received message secret-5");
            log::info!(target: "bollard::docker", "a log info line");
            log::debug!(target: "berth_test", "a berth debug line");
        });
        assert!(!text.contains("secret"), "{text}");
        assert!(text.contains("a log info line") && text.contains("a berth debug line"), "{text}");
    }

    #[test]
    fn berth_itself_logs_at_the_level_asked_for() {
        let text = logged("debug", || tracing::debug!(target: "berth::controller", "berth debug line"));
        assert!(text.contains("berth debug line"), "{text}");
        let text = logged("info", || tracing::debug!(target: "berth::controller", "berth debug line"));
        assert!(!text.contains("berth debug line"), "{text}");
    }
}
