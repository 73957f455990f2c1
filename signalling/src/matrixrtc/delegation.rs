//! Delegated delayed leave (MSC4140, as lk-jwt-service does it, `matrixrtc.md` §8.8): the
//! client schedules its own "leave" as a delayed event on its homeserver and hands the delay
//! id to us. While its LiveKit participant is connected we restart the delay at 80 % of its
//! timeout; when the participant goes away we send the event at once, so crashed clients leave
//! calls. One job per (room, identity); a new delegation replaces the old one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use tokio::task::AbortHandle;
use tokio::time::Instant;
use url::Url;

use crate::ids::{ParticipantIdentity, RoomName};
use crate::AppState;

/// How often the job looks at the room.
const TICK: Duration = Duration::from_millis(250);
/// How long a job waits for its participant to connect the first time.
const CONNECT_WAIT: Duration = Duration::from_secs(60);
/// Longest pause between retries of a failed `send`.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How long a job keeps retrying `send` before giving up (the homeserver fires the event at
/// its own timeout anyway).
const SEND_GIVE_UP: Duration = Duration::from_secs(300);

/// One delegated delayed event.
#[derive(Debug, Clone)]
pub struct Job {
    /// LiveKit room name.
    pub room: RoomName,
    /// LiveKit participant identity.
    pub identity: ParticipantIdentity,
    /// The homeserver's delay id (`syd_…`).
    pub delay_id: String,
    /// The delay, ms.
    pub delay: Duration,
    /// The user's homeserver client-server API base URL.
    pub cs_api: Url,
}

/// Running jobs, by (room, identity).
#[derive(Debug, Default)]
pub struct Delegations {
    jobs: Mutex<HashMap<(RoomName, ParticipantIdentity), AbortHandle>>,
}

impl Delegations {
    /// Starts `job`, replacing a job for the same participant.
    pub fn start(&self, state: Arc<AppState>, job: Job) {
        let key = (job.room.clone(), job.identity.clone());
        let handle = tokio::spawn(run(state, job)).abort_handle();
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        jobs.retain(|_, h| !h.is_finished());
        if let Some(old) = jobs.insert(key, handle) {
            old.abort();
        }
    }

    /// Jobs not yet finished.
    pub fn active(&self) -> usize {
        let jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        jobs.values().filter(|h| !h.is_finished()).count()
    }
}

#[derive(Deserialize)]
struct ClientWellKnown {
    #[serde(rename = "m.homeserver")]
    homeserver: BaseUrl,
}

#[derive(Deserialize)]
struct BaseUrl {
    base_url: String,
}

/// The client-server API of `server_name`: the configured override, else
/// `/.well-known/matrix/client`'s `m.homeserver.base_url`.
pub async fn cs_api_url(state: &AppState, server_name: &str) -> Option<Url> {
    if let Some(u) = state.settings.matrixrtc.homeserver_urls.get(server_name) {
        return Url::parse(u).ok();
    }
    let (host, port) = super::openid::split_server_name(server_name).ok()?;
    let authority = port.map_or(host.clone(), |p| format!("{host}:{p}"));
    let url = format!("https://{authority}/.well-known/matrix/client");
    let resp = state.matrixrtc.http.get(&url).send().await.ok()?;
    let wk: ClientWellKnown = resp.error_for_status().ok()?.json().await.ok()?;
    Url::parse(&wk.homeserver.base_url).ok()
}

/// What the homeserver said to a restart or send.
enum Outcome {
    Done,
    /// The delayed event no longer exists (sent, cancelled or expired): nothing left to do.
    Gone,
    /// Try again after this long.
    Retry(Duration),
}

async fn act(state: &AppState, job: &Job, action: &str) -> Outcome {
    let path = format!(
        "/_matrix/client/unstable/org.matrix.msc4140/delayed_events/{}/{action}",
        job.delay_id
    );
    let Ok(url) = job.cs_api.join(&path) else {
        return Outcome::Gone;
    };
    match state
        .matrixrtc
        .http
        .post(url)
        .json(&serde_json::json!({}))
        .send()
        .await
    {
        Ok(r) if r.status().is_success() => Outcome::Done,
        Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND => Outcome::Gone,
        Ok(r) => {
            let wait = r
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .map(Duration::from_secs)
                .unwrap_or(Duration::from_secs(1));
            tracing::info!(status = %r.status(), action, "delayed event request refused; retrying");
            Outcome::Retry(wait.min(MAX_BACKOFF))
        }
        Err(e) => {
            tracing::info!(error = %e, action, "delayed event request failed; retrying");
            Outcome::Retry(Duration::from_secs(1))
        }
    }
}

async fn run(state: Arc<AppState>, job: Job) {
    let started = Instant::now();
    let restart_every = job.delay.mul_f32(0.8).max(Duration::from_millis(500));
    let mut next_restart = started + restart_every;
    let mut connected = false;
    tracing::info!(room = %job.room, identity = %job.identity, delay_ms = job.delay.as_millis() as u64, "delayed leave delegated");
    loop {
        tokio::time::sleep(TICK).await;
        let present = state.rooms.has_identity(&job.room, &job.identity);
        if present {
            connected = true;
        } else if connected {
            break;
        } else if started.elapsed() > CONNECT_WAIT {
            tracing::info!(room = %job.room, identity = %job.identity, "delegated participant never connected");
            return;
        }
        if Instant::now() >= next_restart {
            match act(&state, &job, "restart").await {
                Outcome::Done => next_restart = Instant::now() + restart_every,
                Outcome::Gone => {
                    tracing::info!(room = %job.room, identity = %job.identity, "delayed event gone; delegation ends");
                    return;
                }
                Outcome::Retry(wait) => next_restart = Instant::now() + wait,
            }
        }
    }
    // The participant left: send the leave now.
    let mut backoff = Duration::from_secs(1);
    let deadline = Instant::now() + SEND_GIVE_UP;
    loop {
        match act(&state, &job, "send").await {
            Outcome::Done | Outcome::Gone => {
                tracing::info!(room = %job.room, identity = %job.identity, "delayed leave sent");
                return;
            }
            Outcome::Retry(wait) => {
                if Instant::now() > deadline {
                    tracing::warn!(room = %job.room, identity = %job.identity, "gave up sending the delayed leave");
                    return;
                }
                tokio::time::sleep(wait.max(backoff)).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}
