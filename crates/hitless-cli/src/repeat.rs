//! Aggregation of repeated warnings for `hitless call`: the first warning of each kind is
//! logged as usual, the same warning again within a second is only counted, and once a second
//! one line per kind says how many were held back (so a warning that keeps coming makes one
//! line a second with its count, whatever the request rate).
//!
//! A load generator against a misconfigured server makes the same mistake on every request: the
//! library's client identity resolver warns on every handshake that no client certificate was
//! sent, and the command's own failure log would do the same. Rather than silencing the
//! library's target (which would hide its first, useful, warning too), a tracing layer vetoes
//! repeats of any WARN/ERROR event whose target and message were already logged in the current
//! second. The kind of a warning is its target plus its message (other fields, such as counts,
//! are left out so that repeats group).

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt as _};
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::EnvFilter;

use crate::logging::Format;

/// The target of the lines that report held-back repeats (never held back themselves).
const TARGET: &str = "hitless::repeated";

/// How long a kind of warning stays "already said".
const WINDOW: Duration = Duration::from_secs(1);

/// Counts of one kind of warning.
struct Kind {
    /// The target and message, for the report line.
    target: String,
    message: String,
    /// When it was last logged in full.
    logged_at: Instant,
    /// Repeats held back since then.
    held: u64,
}

/// What the layer and the once-a-second reporter share.
#[derive(Default)]
struct State {
    kinds: Mutex<HashMap<String, Kind>>,
}

static STATE: OnceLock<Arc<State>> = OnceLock::new();

/// Installs the global subscriber (as [`crate::logging::init`] does) with the aggregating
/// layer, and starts the thread that reports held-back repeats once a second.
pub fn init(format: Format) {
    let state = STATE.get_or_init(Arc::default).clone();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let layered = tracing_subscriber::registry()
        .with(filter)
        .with(Aggregate(state.clone()));
    let installed = match format {
        Format::Human => layered
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(ansi),
            )
            .try_init(),
        Format::Json => layered
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    if installed.is_ok() {
        // A detached thread: it only sleeps and logs, and ends with the process.
        let _ = std::thread::Builder::new()
            .name("warning-counts".into())
            .spawn(move || loop {
                std::thread::sleep(WINDOW);
                report(&state);
            });
    }
}

/// Reports every repeat held back so far (the end of a run: nothing is lost).
pub fn flush() {
    if let Some(state) = STATE.get() {
        report(state);
    }
}

/// Logs one line per kind with held-back repeats (called once a second, and at the end).
fn report(state: &State) {
    let now = Instant::now();
    let mut lines = Vec::new();
    {
        let mut kinds = crate::lock(&state.kinds);
        kinds.retain(|_, k| {
            if k.held > 0 {
                lines.push((k.held, k.target.clone(), k.message.clone()));
                k.held = 0;
                // Repeats in the next second are counted again: a warning that keeps coming
                // makes one line a second, this one.
                k.logged_at = now;
            }
            // Forget kinds quiet for a while: the map stays as small as the set of live reasons.
            now.duration_since(k.logged_at) < WINDOW * 10
        });
    }
    for (held, target, message) in lines {
        tracing::warn!(
            target: TARGET,
            repeated = held,
            from = %target,
            "{held} more in the last second: {message}"
        );
    }
}

/// The layer: vetoes a WARN/ERROR event already logged within the window, counting it.
struct Aggregate(Arc<State>);

impl<S: Subscriber> Layer<S> for Aggregate {
    fn event_enabled(&self, event: &Event<'_>, _: Context<'_, S>) -> bool {
        let meta = event.metadata();
        if *meta.level() > Level::WARN || meta.target() == TARGET {
            return true;
        }
        let mut message = Message(String::new());
        event.record(&mut message);
        let key = format!("{}\u{0}{}", meta.target(), message.0);
        let now = Instant::now();
        let mut kinds = crate::lock(&self.0.kinds);
        match kinds.get_mut(&key) {
            Some(k) if now.duration_since(k.logged_at) < WINDOW => {
                k.held += 1;
                false
            }
            // Quiet for a whole window (nothing held back): said in full again.
            Some(k) if k.held == 0 => {
                k.logged_at = now;
                true
            }
            // Repeats not reported yet: counted with them.
            Some(k) => {
                k.held += 1;
                false
            }
            None => {
                kinds.insert(
                    key,
                    Kind {
                        target: meta.target().to_string(),
                        message: message.0,
                        logged_at: now,
                        held: 0,
                    },
                );
                true
            }
        }
    }
}

/// Collects the `message` field of an event.
struct Message(String);

impl Visit for Message {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0 = value.to_string();
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}
